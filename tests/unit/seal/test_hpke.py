"""Our RFC 9180 key schedule against pyhpke (an independent implementation checked against the
RFC's test vectors), in both directions, including the exporter."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pyhpke import AEADId, CipherSuite, KDFId, KEMId

from cocoon.seal.errors import SealError
from cocoon.seal.hpke import RecipientKey, setup_recipient, setup_sender, unwrap_key, wrap_key

SUITE = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.CHACHA20_POLY1305)
RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def keys() -> tuple[X25519PrivateKey, bytes, bytes]:
    private = X25519PrivateKey.generate()
    raw_private = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return private, private.public_key().public_bytes(*RAW), raw_private


@pytest.mark.parametrize("info", [b"", b"cocoon/seal/v1", os.urandom(40)])
def test_our_sender_and_pyhpke_recipient_agree(info: bytes) -> None:
    _, public, raw_private = keys()
    enc, sender = setup_sender(public, info)
    recipient = SUITE.create_recipient_context(enc, SUITE.kem.deserialize_private_key(raw_private), info=info)
    assert recipient.open(sender.seal(b"content key", b"aad"), aad=b"aad") == b"content key"
    assert recipient.export(b"ctx", 32) == sender.export(b"ctx", 32)
    assert recipient.export(b"long", 80) == sender.export(b"long", 80)


@pytest.mark.parametrize("info", [b"", b"cocoon/seal/v1"])
def test_pyhpke_sender_and_our_recipient_agree(info: bytes) -> None:
    private, public, _ = keys()
    enc, sender = SUITE.create_sender_context(SUITE.kem.deserialize_public_key(public), info=info)
    ours = setup_recipient(RecipientKey(private), enc, info)
    assert ours.open(sender.seal(b"hello", aad=b"x"), b"x") == b"hello"
    assert ours.export(b"cocoon", 32) == sender.export(b"cocoon", 32)


def test_wrapping_round_trip_and_failures() -> None:
    private, public, _ = keys()
    enc, wrapped, secret = wrap_key(public, b"k" * 32, b"aad")
    assert unwrap_key(RecipientKey(private), enc, wrapped, b"aad") == (b"k" * 32, secret)
    for bad in (
        (RecipientKey(X25519PrivateKey.generate()), enc, wrapped, b"aad"),
        (RecipientKey(private), enc, wrapped, b"other"),
    ):
        with pytest.raises(SealError) as excinfo:
            unwrap_key(*bad)
        assert excinfo.value.code == "unwrap_failed"
    with pytest.raises(SealError) as excinfo:
        wrap_key(b"short", b"k" * 32, b"")
    assert excinfo.value.code == "bad_key"
