"""HPKE base mode, DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / ChaCha20-Poly1305, via pyhpke.

One sender context per candidate worker: it wraps the request's content key and exports the
secret the worker's answer is sealed with (RFC 9180 §5.3), so only that worker can answer.
"""

from __future__ import annotations

from pyhpke import AEADId, CipherSuite, KDFId, KEMId

from cocoon.seal.errors import SealError

SUITE = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.CHACHA20_POLY1305)
INFO = b"cocoon/seal/v1"
RESPONSE_EXPORT = b"cocoon/seal/v1 response"
SECRET_SIZE = 32


def wrap_key(recipient_public: bytes, content_key: bytes, aad: bytes) -> tuple[bytes, bytes, bytes]:
    """(enc, wrapped content key, response secret) for one recipient."""
    try:
        public = SUITE.kem.deserialize_public_key(recipient_public)
    except Exception as exc:  # pyhpke raises its own types for bad keys
        raise SealError("bad_key", "the worker's HPKE key is not an X25519 public key") from exc
    enc, sender = SUITE.create_sender_context(public, info=INFO)
    return enc, sender.seal(content_key, aad=aad), sender.export(RESPONSE_EXPORT, SECRET_SIZE)


def unwrap_key(recipient_private: bytes, enc: bytes, wrapped: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """(content key, response secret); ``SealError`` if this key was not wrapped for us."""
    try:
        private = SUITE.kem.deserialize_private_key(recipient_private)
        recipient = SUITE.create_recipient_context(enc, private, info=INFO)
        content_key = recipient.open(wrapped, aad=aad)
    except Exception as exc:  # any failure here means: not for us, or tampered
        raise SealError("unwrap_failed", "the request key cannot be opened with this worker's key") from exc
    return content_key, recipient.export(RESPONSE_EXPORT, SECRET_SIZE)
