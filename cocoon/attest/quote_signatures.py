"""The signature checks inside a DCAP quote (pure), as the Intel QVL does them:
PCK key → QE report signature; QE REPORTDATA = SHA-256(attestation key ‖ QE auth data) ‖ 0³²;
attestation key → signature over header and body.

The real TDX path leaves these (and much more: collateral, CRLs, TCB levels) to dcap-qvl;
the simulated TEE uses this module, so the same quote layout is checked the same way.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cocoon.attest.errors import AttestationError
from cocoon.attest.tdx import Quote


def _der(raw: bytes) -> bytes:
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big"))


def raw_signature(der: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def p256_from_raw(xy: bytes) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + xy)
    except ValueError as exc:
        raise AttestationError("bad_key", "attestation key is not a P-256 point") from exc


def check_quote_signatures(quote: Quote, pck_key: ec.EllipticCurvePublicKey) -> None:
    try:
        pck_key.verify(_der(quote.qe_report_signature), quote.qe_report.raw, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise AttestationError("bad_signature", "QE report signature does not verify with the PCK key") from exc
    binding = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest() + bytes(32)
    if quote.qe_report.report_data != binding:
        raise AttestationError("bad_signature", "QE report does not bind the attestation key")
    try:
        p256_from_raw(quote.attestation_key).verify(_der(quote.signature), quote.signed, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise AttestationError("bad_signature", "quote signature does not verify") from exc
