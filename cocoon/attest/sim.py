"""The simulated TEE: real TDX v4 quote layout, signed through a locally generated dev root.

Chain: dev root CA (P-256, self-signed) → sim PCK → QE report → attestation key → quote.
The dev root is created on first use under ``<data dir>/sim-tee`` (mode 0600 keys). Only a
development policy hands this root to the verifier; the production path pins Intel's and
AMD's roots in code and rejects ``tee = "sim"`` before looking at anything else.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cocoon.attest.errors import AttestationError
from cocoon.attest.quote_signatures import check_quote_signatures, raw_signature
from cocoon.attest.tdx import ENCLAVE_REPORT_SIZE, TD10_SIZE, TEE_TDX, Quote, parse_quote

SIM_QE_VENDOR_ID = b"COCOON-SIM-QE-01"  # never Intel's 939a7233…: a sim quote cannot pass as real
SIM_ROOT_NAME = "Cocoon Simulated TEE Root CA (DEVELOPMENT ONLY)"
SIM_PCK_NAME = "Cocoon Simulated PCK (DEVELOPMENT ONLY)"
CERT_YEARS = 10


@dataclass(frozen=True)
class SimMeasurements:
    """Registers of the simulated TD; defaults are fixed, recognisable values."""

    mr_td: bytes = hashlib.sha384(b"cocoon-sim mrtd").digest()
    mr_config_id: bytes = bytes(48)
    mr_owner: bytes = bytes(48)
    mr_owner_config: bytes = bytes(48)
    rtmrs: tuple[bytes, bytes, bytes, bytes] = (
        hashlib.sha384(b"cocoon-sim rtmr0").digest(),
        hashlib.sha384(b"cocoon-sim rtmr1").digest(),
        hashlib.sha384(b"cocoon-sim rtmr2").digest(),
        hashlib.sha384(b"cocoon-sim rtmr3").digest(),
    )
    td_attributes: int = 0x10000000  # SEPT_VE_DISABLE, not DEBUG

    def __post_init__(self) -> None:
        for value in (self.mr_td, self.mr_config_id, self.mr_owner, self.mr_owner_config, *self.rtmrs):
            if len(value) != 48:
                raise ValueError("measurement registers are 48 bytes")

    @property
    def image_hash(self) -> bytes:
        """The image hash a verifier computes for quotes with these measurements."""
        from cocoon.attest.image import tdx_registers_hash

        return tdx_registers_hash(self.mr_td, self.mr_config_id, self.mr_owner, self.mr_owner_config, self.rtmrs)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class SimAuthority:
    """The dev root and sim PCK: signs simulated quotes."""

    def __init__(self, root_key: ec.EllipticCurvePrivateKey, root_cert: x509.Certificate,
                 pck_key: ec.EllipticCurvePrivateKey, pck_cert: x509.Certificate) -> None:  # fmt: skip
        self.root_key = root_key
        self.root_cert = root_cert
        self.pck_key = pck_key
        self.pck_cert = pck_cert

    @property
    def root_der(self) -> bytes:
        return self.root_cert.public_bytes(serialization.Encoding.DER)

    @classmethod
    def generate(cls, now: datetime.datetime) -> SimAuthority:
        root_key = ec.generate_private_key(ec.SECP256R1())
        pck_key = ec.generate_private_key(ec.SECP256R1())
        until = now + datetime.timedelta(days=365 * CERT_YEARS)
        root_cert = (
            x509.CertificateBuilder()
            .subject_name(_name(SIM_ROOT_NAME))
            .issuer_name(_name(SIM_ROOT_NAME))
            .public_key(root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .sign(root_key, hashes.SHA256())
        )
        pck_cert = (
            x509.CertificateBuilder()
            .subject_name(_name(SIM_PCK_NAME))
            .issuer_name(root_cert.subject)
            .public_key(pck_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(root_key, hashes.SHA256())
        )
        return cls(root_key, root_cert, pck_key, pck_cert)

    @classmethod
    def load_or_create(cls, directory: Path) -> SimAuthority:
        """The dev authority kept in ``directory`` (mode 0700, keys 0600), created on first use.

        Nodes of one local network start together: the authority is written to a temporary
        directory and renamed into place, so exactly one is created and nobody reads half of it.
        """
        if not directory.exists():
            directory.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".sim-tee-", dir=directory.parent))
            authority = cls.generate(datetime.datetime.now(datetime.UTC))
            authority._write(staging)
            try:
                os.rename(staging, directory)
            except OSError:  # another process won the race: use its authority
                shutil.rmtree(staging, ignore_errors=True)
        return cls._read(directory)

    @classmethod
    def _read(cls, directory: Path) -> SimAuthority:
        paths = [directory / n for n in ("root.key", "root.pem", "pck.key", "pck.pem")]
        try:
            keys = [serialization.load_pem_private_key(paths[i].read_bytes(), None) for i in (0, 2)]
            certs = [x509.load_pem_x509_certificate(paths[i].read_bytes()) for i in (1, 3)]
        except (OSError, ValueError) as exc:
            raise AttestationError("bad_key", f"{directory} does not hold a simulated TEE authority") from exc
        if not all(isinstance(k, ec.EllipticCurvePrivateKey) for k in keys):
            raise AttestationError("bad_key", f"{directory} holds keys of the wrong kind")
        return cls(keys[0], certs[0], keys[1], certs[1])  # type: ignore[arg-type]

    def _write(self, directory: Path) -> None:
        directory.chmod(0o700)
        pem = serialization.Encoding.PEM
        private = serialization.PrivateFormat.PKCS8
        none = serialization.NoEncryption()
        _write_private(directory / "root.key", self.root_key.private_bytes(pem, private, none))
        (directory / "root.pem").write_bytes(self.root_cert.public_bytes(pem))
        _write_private(directory / "pck.key", self.pck_key.private_bytes(pem, private, none))
        (directory / "pck.pem").write_bytes(self.pck_cert.public_bytes(pem))

    def quote(self, report_data: bytes, measurements: SimMeasurements | None = None) -> bytes:
        """A TDX v4 quote over ``report_data`` (64 bytes)."""
        if len(report_data) != 64:
            raise ValueError("REPORTDATA is 64 bytes")
        m = measurements or SimMeasurements()
        header = struct.pack("<HHIHH", 4, 2, TEE_TDX, 0, 0) + SIM_QE_VENDOR_ID + bytes(20)
        body = b"".join(
            [
                bytes(16),  # TEE_TCB_SVN
                hashlib.sha384(b"cocoon-sim mrseam").digest(),
                bytes(48),  # MRSIGNERSEAM
                bytes(8),  # SEAM attributes
                m.td_attributes.to_bytes(8, "little"),
                bytes(8),  # XFAM
                m.mr_td,
                m.mr_config_id,
                m.mr_owner,
                m.mr_owner_config,
                *m.rtmrs,
                report_data,
            ]
        )
        assert len(body) == TD10_SIZE
        attestation_key = ec.generate_private_key(ec.SECP256R1())
        att_xy = attestation_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )[1:]
        auth_data = bytes(range(32))
        qe_report = bytearray(ENCLAVE_REPORT_SIZE)
        qe_report[320:384] = hashlib.sha256(att_xy + auth_data).digest() + bytes(32)
        qe_signature = raw_signature(self.pck_key.sign(bytes(qe_report), ec.ECDSA(hashes.SHA256())))
        chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.pck_cert, self.root_cert))
        nested = struct.pack("<HI", 5, len(chain)) + chain
        qe_cert_data = bytes(qe_report) + qe_signature + struct.pack("<H", len(auth_data)) + auth_data + nested
        signature = raw_signature(attestation_key.sign(header + body, ec.ECDSA(hashes.SHA256())))
        signature_data = signature + att_xy + struct.pack("<HI", 6, len(qe_cert_data)) + qe_cert_data
        return header + body + struct.pack("<I", len(signature_data)) + signature_data


def verify_sim_quote(raw: bytes, dev_root_der: bytes, now: datetime.datetime) -> Quote:
    """Verify a simulated quote against the local dev root; returns the parsed quote."""
    quote = parse_quote(raw)
    if quote.header.qe_vendor_id != SIM_QE_VENDOR_ID:
        raise AttestationError("not_simulated", "quote is not from the simulated TEE")
    try:
        certs = x509.load_pem_x509_certificates(quote.pem_chain())
    except ValueError as exc:
        raise AttestationError("bad_chain", "PCK chain does not parse") from exc
    if len(certs) != 2:
        raise AttestationError("bad_chain", "the simulated PCK chain has two certificates")
    pck, root = certs
    if root.public_bytes(serialization.Encoding.DER) != dev_root_der:
        raise AttestationError("untrusted_root", "quote is signed by another simulated root than ours")
    for cert in certs:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise AttestationError("expired", f"certificate {cert.subject.rfc4514_string()} is not valid now")
    try:
        pck.verify_directly_issued_by(root)
    except (ValueError, TypeError) as exc:
        raise AttestationError("bad_chain", "sim PCK is not signed by the dev root") from exc
    except Exception as exc:  # InvalidSignature
        raise AttestationError("bad_chain", "sim PCK is not signed by the dev root") from exc
    pck_key = pck.public_key()
    if not isinstance(pck_key, ec.EllipticCurvePublicKey):
        raise AttestationError("bad_chain", "sim PCK key is not P-256")
    check_quote_signatures(quote, pck_key)
    return quote
