"""The libsodium Ed25519 check agrees with OpenSSL's on honest signatures and refuses the rest."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.keys import public_bytes
from cocoon.seal import ed25519

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = public_bytes(KEY)
# the curve's group order: S must be below it (RFC 8032, 5.1.7)
ORDER = 2**252 + 27742317777372353535851937790883648493


@settings(max_examples=50)
@given(message=st.binary(max_size=512))
def test_accepts_what_openssl_signs(message: bytes) -> None:
    assert ed25519.verify(PUBLIC, KEY.sign(message), message)


def test_refuses_another_message_key_or_signature() -> None:
    message = b"cocoon"
    signature = KEY.sign(message)
    assert not ed25519.verify(PUBLIC, signature, message + b"!")
    assert not ed25519.verify(public_bytes(Ed25519PrivateKey.generate()), signature, message)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not ed25519.verify(PUBLIC, flipped, message)


def test_refuses_wrong_sizes() -> None:
    message = os.urandom(32)
    signature = KEY.sign(message)
    assert not ed25519.verify(PUBLIC[:31], signature, message)
    assert not ed25519.verify(PUBLIC + b"\x00", signature, message)
    assert not ed25519.verify(PUBLIC, signature[:63], message)
    assert not ed25519.verify(PUBLIC, signature + b"\x00", message)


def test_refuses_a_non_canonical_s() -> None:
    # the same signature with S + L: the equation still holds, but the encoding is not canonical
    message = b"malleable"
    signature = KEY.sign(message)
    s = int.from_bytes(signature[32:], "little") + ORDER
    assert s < 2**256
    assert not ed25519.verify(PUBLIC, signature[:32] + s.to_bytes(32, "little"), message)


def test_refuses_a_small_order_key() -> None:
    # the identity point: any R = S·B "verifies" against it under a lax check
    identity = (1).to_bytes(32, "little")
    assert not ed25519.verify(identity, bytes(64), b"anything")
