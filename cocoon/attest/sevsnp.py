"""AMD SEV-SNP attestation reports: parsing and verification against AMD's pinned roots.

A report (0x4A0 bytes, layout from AMD's SEV-SNP ABI specification, "ATTESTATION_REPORT")
is signed by the VCEK, a P-384 key derived from the chip's secrets and its TCB. The VCEK is
certified by the ASK, which is certified by the self-signed ARK of the processor family.
Trust comes only from the ARK public keys pinned below, never from configuration: a root
read from a file could be swapped together with the evidence it is meant to judge.

Everything here is pure: bytes and an explicit ``now`` in, a value or an
``AttestationError`` out. Random bytes from a peer can only ever raise ``AttestationError``.
"""

from __future__ import annotations

import hashlib
import re
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import SignatureAlgorithmOID

from cocoon.attest.errors import AttestationError, MalformedEvidence

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0  # the signature covers bytes [0, 0x2A0)
SUPPORTED_VERSIONS = frozenset({2, 3})  # v3 adds CPUID_FAM_ID/MOD_ID/STEP in formerly reserved bytes
SIG_ALGO_ECDSA_P384_SHA384 = 1
SIGNING_KEY_VCEK = 0  # KEY_INFO.SIGNING_KEY: 0 VCEK, 1 VLEK, 7 none

# Bounds on peer-supplied certificates: a VCEK is ~1.4 KB, an ASK+ARK PEM ~4.6 KB.
MAX_VCEK_BYTES = 16 * 1024
MAX_CHAIN_PEM_BYTES = 64 * 1024

# SHA-256 of the DER SubjectPublicKeyInfo of AMD's production ARKs (ARK-Milan, ARK-Genoa,
# ARK-Turin). Computed from AMD's real production ARK certificates as shipped by
# github.com/google/go-sev-guest verify/trust/ask_ark_{milan,genoa,turin_vcek}.pem (copied to
# tests/vectors/attestation/sev-snp/go-sev-guest/); tests/unit/test_sevsnp.py recomputes them.
ARK_SPKI_SHA256: Mapping[str, str] = MappingProxyType(
    {
        "9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9": "Milan",
        "429a69c9422aa258ee4d8db5fcda9c6470ef15f8cd5a9cebd6cbc7d90b863831": "Genoa",
        "4f125410563a2ab9a50356f9243f6fe0b6f73de98603f53f90339c70e9d7ad08": "Turin",
    }
)

# VCEK certificate extensions (AMD "VCEK certificate and KDS interface specification").
_OID_BL_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.1")
_OID_TEE_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.2")
_OID_SNP_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.3")
_OID_UCODE_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.8")
_OID_FMC_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.9")  # Turin and later
_OID_HWID = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4")

_PSS_SHA384 = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_CERT_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion)

# AMD issues VCEKs with serial number 0; cryptography deprecates loading such certificates.
_NONPOSITIVE_SERIAL = re.escape("Parsed a serial number which wasn't positive")

_U32, _U64 = "<I", "<Q"


@dataclass(frozen=True)
class TcbVersion:
    """Security patch levels packed in a 64-bit TCB_VERSION; the packing differs per family."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None  # Turin and later only


def decode_tcb(raw: int, product: str) -> TcbVersion:
    """Milan/Genoa: BL byte 0, TEE byte 1, SNP byte 6, UCODE byte 7.
    Turin: FMC byte 0, BL byte 1, TEE byte 2, SNP byte 3, UCODE byte 7."""
    b = raw.to_bytes(8, "little")
    if product == "Turin":
        return TcbVersion(bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
    return TcbVersion(bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])


@dataclass(frozen=True)
class SnpReport:
    """One parsed ATTESTATION_REPORT. ``signed`` is bytes [0, 0x2A0), what the VCEK signed."""

    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    key_info: int  # bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: int
    cpuid_fam_id: int | None  # v3+
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: bytes
    committed_tcb: int
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: int
    signature_r: int
    signature_s: int
    signed: bytes

    # Guest policy bits (ABI spec, "GUEST_POLICY").
    @property
    def abi_minor(self) -> int:
        return self.policy & 0xFF

    @property
    def abi_major(self) -> int:
        return (self.policy >> 8) & 0xFF

    @property
    def smt_allowed(self) -> bool:
        return bool(self.policy >> 16 & 1)

    @property
    def migrate_ma_allowed(self) -> bool:
        return bool(self.policy >> 18 & 1)

    @property
    def debug_allowed(self) -> bool:
        """A debug guest's memory can be read by the host: production policy must reject it."""
        return bool(self.policy >> 19 & 1)

    @property
    def single_socket_required(self) -> bool:
        return bool(self.policy >> 20 & 1)

    # Platform info bits.
    @property
    def smt_enabled(self) -> bool:
        return bool(self.platform_info & 1)

    @property
    def tsme_enabled(self) -> bool:
        return bool(self.platform_info >> 1 & 1)

    # Key info bits.
    @property
    def author_key_en(self) -> bool:
        return bool(self.key_info & 1)

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.key_info >> 1 & 1)

    @property
    def signing_key(self) -> int:
        return (self.key_info >> 2) & 0x7


def parse_report(data: bytes) -> SnpReport:
    """Parse a raw report; only the size and the version are judged here, the rest by
    ``verify_report`` and by policy."""
    data = bytes(data)
    if len(data) != REPORT_SIZE:
        raise MalformedEvidence(f"SEV-SNP report must be {REPORT_SIZE} bytes, got {len(data)}")

    def u32(off: int) -> int:
        return int(struct.unpack_from(_U32, data, off)[0])

    def u64(off: int) -> int:
        return int(struct.unpack_from(_U64, data, off)[0])

    version = u32(0x00)
    if version not in SUPPORTED_VERSIONS:
        raise MalformedEvidence(f"unsupported SEV-SNP report version {version}")
    v3 = version >= 3
    return SnpReport(
        version=version,
        guest_svn=u32(0x04),
        policy=u64(0x08),
        family_id=data[0x10:0x20],
        image_id=data[0x20:0x30],
        vmpl=u32(0x30),
        signature_algo=u32(0x34),
        current_tcb=u64(0x38),
        platform_info=u64(0x40),
        key_info=u32(0x48),
        report_data=data[0x50:0x90],
        measurement=data[0x90:0xC0],
        host_data=data[0xC0:0xE0],
        id_key_digest=data[0xE0:0x110],
        author_key_digest=data[0x110:0x140],
        report_id=data[0x140:0x160],
        report_id_ma=data[0x160:0x180],
        reported_tcb=u64(0x180),
        cpuid_fam_id=data[0x188] if v3 else None,
        cpuid_mod_id=data[0x189] if v3 else None,
        cpuid_step=data[0x18A] if v3 else None,
        chip_id=data[0x1A0:0x1E0],
        committed_tcb=u64(0x1E0),
        current_build=data[0x1E8],
        current_minor=data[0x1E9],
        current_major=data[0x1EA],
        committed_build=data[0x1EC],
        committed_minor=data[0x1ED],
        committed_major=data[0x1EE],
        launch_tcb=u64(0x1F0),
        signature_r=int.from_bytes(data[0x2A0:0x2E8], "little"),
        signature_s=int.from_bytes(data[0x2E8:0x330], "little"),
        signed=data[:SIGNED_SIZE],
    )


def verify_report(report: SnpReport, vcek_der: bytes, chain_pem: bytes, now: datetime) -> TcbVersion:
    """Check that ``report`` was signed by ``vcek_der``, that the VCEK belongs to this chip and
    TCB, and that VCEK <- ASK <- ARK (``chain_pem``: ASK then ARK) ends in a pinned AMD root,
    every certificate valid at ``now``. Raises ``AttestationError``; returns the report's TCB,
    which the VCEK vouches for. Policy (debug, measurement, TCB minimums) is the caller's business."""
    return _verify_report(report, vcek_der, chain_pem, now, ARK_SPKI_SHA256)


def _verify_report(
    report: SnpReport, vcek_der: bytes, chain_pem: bytes, now: datetime, pinned: Mapping[str, str]
) -> TcbVersion:
    """``verify_report`` with the pinned roots as a parameter, so tests can show that a
    self-made chain fails only for its root."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if report.signature_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise AttestationError(
            "unsupported_algorithm", f"signature algorithm {report.signature_algo} is not ECDSA P-384"
        )
    if report.signing_key != SIGNING_KEY_VCEK:
        raise AttestationError(
            "unsupported_signing_key", f"report is signed by key type {report.signing_key}, not a VCEK"
        )
    if report.mask_chip_key:
        raise AttestationError("bad_signature", "report signature is masked (MASK_CHIP_KEY)")
    if len(vcek_der) > MAX_VCEK_BYTES:
        raise AttestationError("too_large", f"VCEK certificate is {len(vcek_der)} bytes (max {MAX_VCEK_BYTES})")
    if len(chain_pem) > MAX_CHAIN_PEM_BYTES:
        raise AttestationError("too_large", f"ASK/ARK chain is {len(chain_pem)} bytes (max {MAX_CHAIN_PEM_BYTES})")

    vcek, ask, ark = _load_certs(vcek_der, chain_pem)
    try:
        product = pinned.get(_spki_sha256(ark))
        if product is None:
            raise AttestationError("untrusted_root", "ARK is not one of the pinned AMD roots")
        _check_issued(ark, ark, "ARK (self-signed)")
        _check_issued(ask, ark, "ASK")
        _check_issued(vcek, ask, "VCEK")
        for name, cert in (("VCEK", vcek), ("ASK", ask), ("ARK", ark)):
            _check_validity(name, cert, now)
        vcek_key = vcek.public_key()
        if not isinstance(vcek_key, ec.EllipticCurvePublicKey) or not isinstance(vcek_key.curve, ec.SECP384R1):
            raise AttestationError("bad_chain", "VCEK key is not ECDSA P-384")
        signature = encode_dss_signature(report.signature_r, report.signature_s)
        try:
            vcek_key.verify(signature, report.signed, ec.ECDSA(hashes.SHA384()))
        except InvalidSignature:
            raise AttestationError("bad_signature", "report signature does not verify with the VCEK") from None
        _check_vcek_binding(vcek, report, product)
    except _CERT_ERRORS as e:
        raise MalformedEvidence(f"unusable certificate: {e}") from None
    return decode_tcb(report.reported_tcb, product)


def _load_certs(vcek_der: bytes, chain_pem: bytes) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
    with warnings.catch_warnings():
        # Only this one deprecation, only here: AMD's KDS issues VCEKs with serial number 0.
        warnings.filterwarnings("ignore", message=_NONPOSITIVE_SERIAL, category=CryptographyDeprecationWarning)
        try:
            vcek = x509.load_der_x509_certificate(bytes(vcek_der))
        except _CERT_ERRORS as e:
            raise MalformedEvidence(f"VCEK is not a DER certificate: {e}") from None
        try:
            chain = x509.load_pem_x509_certificates(bytes(chain_pem))
        except _CERT_ERRORS as e:
            raise MalformedEvidence(f"ASK/ARK chain is not PEM certificates: {e}") from None
    if len(chain) != 2:
        raise MalformedEvidence(f"ASK/ARK chain must hold 2 certificates (ASK, ARK), got {len(chain)}")
    return vcek, chain[0], chain[1]


def _spki_sha256(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def _check_issued(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    """AMD signs every certificate in the chain with RSASSA-PSS, SHA-384, salt length 48.
    The signature is checked before the names are read: decoding the names of a forged or
    corrupted certificate can warn or fail inside ``cryptography`` (an attribute of a length
    its type does not allow), and a certificate whose signature verifies has genuine names."""
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS:
        raise AttestationError("bad_chain", f"{what}: not signed with RSASSA-PSS")
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise AttestationError("bad_chain", f"{what}: issuer key is not RSA")
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, _PSS_SHA384, hashes.SHA384())
    except InvalidSignature:
        raise AttestationError("bad_chain", f"{what}: signature does not verify") from None
    if cert.issuer != issuer.subject:
        raise AttestationError("bad_chain", f"{what}: issuer name does not match the issuing certificate")


def _check_validity(name: str, cert: x509.Certificate, now: datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise AttestationError("cert_not_yet_valid", f"{name} is valid from {cert.not_valid_before_utc.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise AttestationError("cert_expired", f"{name} expired {cert.not_valid_after_utc.isoformat()}")


def _check_vcek_binding(vcek: x509.Certificate, report: SnpReport, product: str) -> None:
    """The VCEK is derived from one chip at one TCB; a VCEK for another chip, or for an older
    (possibly compromised) TCB, must not vouch for this report's claims."""
    hwid = _extension(vcek, _OID_HWID)
    if len(hwid) == 66 and hwid[:2] == b"\x04\x40":  # tolerate an OCTET STRING wrapper
        hwid = hwid[2:]
    if hwid != report.chip_id:
        raise AttestationError("vcek_mismatch", "VCEK hwID is not this report's CHIP_ID")
    want = decode_tcb(report.reported_tcb, product)
    got = TcbVersion(
        bootloader=_der_spl(_extension(vcek, _OID_BL_SPL)),
        tee=_der_spl(_extension(vcek, _OID_TEE_SPL)),
        snp=_der_spl(_extension(vcek, _OID_SNP_SPL)),
        microcode=_der_spl(_extension(vcek, _OID_UCODE_SPL)),
        fmc=_der_spl(_extension(vcek, _OID_FMC_SPL)) if product == "Turin" else None,
    )
    if got != want:
        raise AttestationError("vcek_mismatch", f"VCEK is for TCB {got}, report claims {want}")


def _extension(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes:
    try:
        value = cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        raise AttestationError("vcek_mismatch", f"VCEK lacks extension {oid.dotted_string}") from None
    if not isinstance(value, x509.UnrecognizedExtension):
        raise AttestationError("vcek_mismatch", f"VCEK extension {oid.dotted_string} has an unexpected form")
    return value.value


def _der_spl(value: bytes) -> int:
    """A security patch level: a DER INTEGER in 0..255 (one or two content bytes)."""
    n = len(value) - 2
    if n not in (1, 2) or value[0] != 0x02 or value[1] != n or value[2] & 0x80:
        raise AttestationError("vcek_mismatch", "VCEK SPL extension is not a small DER INTEGER")
    spl = int.from_bytes(value[2:], "big")
    if spl > 0xFF or (n == 2 and value[2] == 0 and not value[3] & 0x80):
        raise AttestationError("vcek_mismatch", "VCEK SPL extension is out of range or not minimal DER")
    return spl
