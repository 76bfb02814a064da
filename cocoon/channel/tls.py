"""TLS 1.3 contexts with short-lived self-signed certificates on the node's Ed25519 key.

Certificates are not checked against a CA: the listener's identity is the public key in its
certificate (TLS 1.3 CertificateVerify proves the listener holds it) and the peer verifier
decides whether that key is acceptable. The dialer proves itself inside the channel (see
``handshake``), because Python's server side cannot accept self-signed client certificates.
"""

from __future__ import annotations

import datetime
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from cocoon.keys import public_bytes

CERT_LIFETIME = datetime.timedelta(days=1)
# Our own (non-critical) extension carrying the node's attestation evidence. The OID is in the
# UUID arc (2.25, ITU-T X.667), so it needs no registration and collides with nothing.
EVIDENCE_OID = x509.ObjectIdentifier("2.25.216482513916411519658052734829366270581")
MAX_EVIDENCE_EXTENSION = 2 * 1024 * 1024


def make_certificate(
    key: Ed25519PrivateKey, now: datetime.datetime, evidence: bytes = b"", lifetime: datetime.timedelta = CERT_LIFETIME
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cocoon-" + public_bytes(key)[:8].hex())])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + min(lifetime, CERT_LIFETIME))
    )
    if evidence:
        builder = builder.add_extension(x509.UnrecognizedExtension(EVIDENCE_OID, evidence), critical=False)
    return builder.sign(key, None)


def certificate_evidence(cert_der: bytes) -> bytes:
    """The evidence carried in a peer certificate, or b"" when it carries none."""
    try:
        extension = x509.load_der_x509_certificate(cert_der).extensions.get_extension_for_oid(EVIDENCE_OID)
    except x509.ExtensionNotFound:
        return b""
    except ValueError:
        return b""
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension) or len(value.value) > MAX_EVIDENCE_EXTENSION:
        return b""
    return value.value


def server_context(
    key: Ed25519PrivateKey, evidence: bytes = b"", lifetime: datetime.timedelta = CERT_LIFETIME
) -> tuple[ssl.SSLContext, bytes]:
    """A listening context and the DER of its certificate (which dialers sign over)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx, load_certificate(ctx, key, evidence, lifetime)


def load_certificate(
    ctx: ssl.SSLContext, key: Ed25519PrivateKey, evidence: bytes = b"", lifetime: datetime.timedelta = CERT_LIFETIME
) -> bytes:
    """Put a fresh certificate into ``ctx`` (new connections get it); returns its DER."""
    cert = make_certificate(key, datetime.datetime.now(datetime.UTC), evidence, lifetime)
    # ssl loads certificates from files only; the temporary directory lives for the call.
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.touch(mode=0o600)
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        ctx.load_cert_chain(cert_path, key_path)
    return cert.public_bytes(serialization.Encoding.DER)


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # identity is the certificate's key, checked by the verifier
    return ctx


def certificate_public_key(cert_der: bytes) -> bytes:
    """The raw Ed25519 public key of a peer certificate; ValueError if it holds another kind."""
    key = x509.load_der_x509_certificate(cert_der).public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("peer certificate does not carry an Ed25519 key")
    return public_bytes(key)
