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


def make_certificate(key: Ed25519PrivateKey, now: datetime.datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cocoon-" + public_bytes(key)[:8].hex())])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CERT_LIFETIME)
        .sign(key, None)
    )


def server_context(key: Ed25519PrivateKey) -> tuple[ssl.SSLContext, bytes]:
    """A listening context and the DER of its certificate (which dialers sign over)."""
    cert = make_certificate(key, datetime.datetime.now(datetime.UTC))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
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
    return ctx, cert.public_bytes(serialization.Encoding.DER)


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
