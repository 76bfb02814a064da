"""HPKE (RFC 9180) base mode: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305.

One sender context per candidate worker: it wraps the request's content key and exports the
secret the worker's answer is sealed with (RFC 9180 §5.3), so only that worker can answer.

The key schedule is written out here on `cryptography`'s X25519 and ChaCha20-Poly1305 and the
standard library's SHA-256, rather than taken from pyhpke, because pyhpke's Python layers doubled
the cost of a request (see docs/benchmarks.md); the RFC's structure is followed name by name,
and tests check both directions against pyhpke and the RFC 9180 test vector (A.2.1).
"""

from __future__ import annotations

import functools
import hashlib
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from cocoon.seal.errors import SealError

INFO = b"cocoon/seal/v1"
RESPONSE_EXPORT = b"cocoon/seal/v1 response"
SECRET_SIZE = 32

KEM_ID, KDF_ID, AEAD_ID = 0x0020, 0x0001, 0x0003
KEM_SUITE = b"KEM" + KEM_ID.to_bytes(2, "big")
HPKE_SUITE = b"HPKE" + KEM_ID.to_bytes(2, "big") + KDF_ID.to_bytes(2, "big") + AEAD_ID.to_bytes(2, "big")
MODE_BASE = b"\x00"
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


_INNER_PAD = int.from_bytes(b"\x36" * 64, "big")
_OUTER_PAD = int.from_bytes(b"\x5c" * 64, "big")


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104) on ``hashlib``'s SHA-256: the same result as ``hmac.digest``,
    whose per-call setup under OpenSSL 3 costs more than the two hashes (2.5 of its 3.7 µs
    here); a request's key schedule and answer keys take about twenty of them."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    # the pads by integer XOR, not by a table indexed with the key's bytes: no lookup whose
    # cache line depends on the secret (a host watching the TEE's cache could see it)
    padded = int.from_bytes(key.ljust(64, b"\0"), "big")
    inner = hashlib.sha256((padded ^ _INNER_PAD).to_bytes(64, "big") + message).digest()
    return hashlib.sha256((padded ^ _OUTER_PAD).to_bytes(64, "big") + inner).digest()


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-256 (RFC 5869); an empty salt is 32 zero bytes."""
    return hmac_sha256(salt or bytes(32), ikm)


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand with SHA-256 (RFC 5869): a fraction of the cost of ``cryptography``'s
    ``HKDFExpand`` object for the short outputs used here."""
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac_sha256(prk, block + info + bytes([counter]))
        out += block
        counter += 1
    return out[:length]


@functools.cache
def _schedule_context(info: bytes) -> bytes:
    """mode ‖ psk_id_hash ‖ info_hash: fixed for a fixed info, so computed once."""
    psk_id_hash = _labeled_extract(HPKE_SUITE, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(HPKE_SUITE, b"", b"info_hash", info)
    return MODE_BASE + psk_id_hash + info_hash


def _labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hkdf_extract(salt, b"HPKE-v1" + suite + label + ikm)


def _labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return hkdf_expand(prk, length.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info, length)


def _shared_secret(dh: bytes, enc: bytes, recipient_public: bytes) -> bytes:
    eae_prk = _labeled_extract(KEM_SUITE, b"", b"eae_prk", dh)
    return _labeled_expand(KEM_SUITE, eae_prk, b"shared_secret", enc + recipient_public, 32)


class Context:
    """An HPKE context after the key schedule (base mode, psk and psk_id empty)."""

    def __init__(self, shared_secret: bytes, info: bytes) -> None:
        context = _schedule_context(info)
        secret = _labeled_extract(HPKE_SUITE, shared_secret, b"secret", b"")
        self.key = _labeled_expand(HPKE_SUITE, secret, b"key", context, 32)
        self.base_nonce = _labeled_expand(HPKE_SUITE, secret, b"base_nonce", context, 12)
        self.exporter_secret = _labeled_expand(HPKE_SUITE, secret, b"exp", context, 32)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """The first (and, here, only) message of the context: sequence number 0."""
        return ChaCha20Poly1305(self.key).encrypt(self.base_nonce, plaintext, aad)

    def open(self, ciphertext: bytes, aad: bytes) -> bytes:
        return ChaCha20Poly1305(self.key).decrypt(self.base_nonce, ciphertext, aad)

    def export(self, exporter_context: bytes, length: int) -> bytes:
        return _labeled_expand(HPKE_SUITE, self.exporter_secret, b"sec", exporter_context, length)


def setup_sender(
    recipient_public: bytes, info: bytes, ephemeral: X25519PrivateKey | None = None
) -> tuple[bytes, Context]:
    """(enc, context) for ``recipient_public``; ``ephemeral`` only for known-answer tests."""
    try:
        public = X25519PublicKey.from_public_bytes(recipient_public)
    except ValueError as exc:
        raise SealError("bad_key", "the worker's HPKE key is not an X25519 public key") from exc
    ephemeral = ephemeral or X25519PrivateKey.generate()
    enc = ephemeral.public_key().public_bytes(*_RAW)
    try:
        dh = ephemeral.exchange(public)
    except ValueError as exc:  # a low-order point: the shared secret would be all zeros
        raise SealError("bad_key", "the worker's HPKE key is a low-order X25519 point") from exc
    return enc, Context(_shared_secret(dh, enc, recipient_public), info)


class RecipientKey:
    """A worker's HPKE key pair, loaded once (loading a private key costs a scalar multiplication)."""

    def __init__(self, private: X25519PrivateKey) -> None:
        self.private = private
        self.public = private.public_key().public_bytes(*_RAW)


def setup_recipient(recipient: RecipientKey, enc: bytes, info: bytes) -> Context:
    dh = recipient.private.exchange(X25519PublicKey.from_public_bytes(enc))
    return Context(_shared_secret(dh, enc, recipient.public), info)


class SenderSetup(NamedTuple):
    """One sender setup for ``INFO``, made ahead of a request and used for one only."""

    recipient_public: bytes
    enc: bytes
    context: Context


def prepare_sender(recipient_public: bytes) -> SenderSetup:
    """A fresh sender setup for a request to ``recipient_public`` that has not come yet: its two
    X25519 operations are most of the cost of sealing, and none depends on the request."""
    return SenderSetup(recipient_public, *setup_sender(recipient_public, INFO))


def wrap_key(
    recipient_public: bytes, content_key: bytes, aad: bytes, prepared: SenderSetup | None = None
) -> tuple[bytes, bytes, bytes]:
    """(enc, wrapped content key, response secret) for one recipient, with a setup from
    ``prepare_sender`` for that recipient when there is one (it must not be used again)."""
    if prepared is None:
        enc, context = setup_sender(recipient_public, INFO)
    elif prepared.recipient_public != recipient_public:
        raise SealError("bad_key", "a sender setup made for another key")  # would wrap for that key
    else:
        enc, context = prepared.enc, prepared.context
    return enc, context.seal(content_key, aad), context.export(RESPONSE_EXPORT, SECRET_SIZE)


def unwrap_key(recipient: RecipientKey, enc: bytes, wrapped: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """(content key, response secret); ``SealError`` if this key was not wrapped for us."""
    try:
        context = setup_recipient(recipient, enc, INFO)
        content_key = context.open(wrapped, aad)
    except (ValueError, InvalidTag) as exc:
        raise SealError("unwrap_failed", "the request key cannot be opened with this worker's key") from exc
    return content_key, context.export(RESPONSE_EXPORT, SECRET_SIZE)
