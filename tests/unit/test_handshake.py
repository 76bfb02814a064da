"""The dialer's in-channel proof: a signature over (role, listener nonce, listener certificate)."""

from __future__ import annotations

import hashlib

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.channel.handshake import DOMAIN, check_hello, make_hello, transcript
from cocoon.keys import public_bytes
from cocoon.protocol.errors import ErrorCode, RemoteProtocolError
from cocoon.protocol.messages import Hello, decode_message, encode_message

NONCE = b"\x11" * 32
CERT = b"listener certificate DER"


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def replace(hello: Hello, **changes: object) -> Hello:
    return msgspec.structs.replace(hello, **changes)


def assert_unauthorized(hello: Hello, nonce: bytes = NONCE, cert: bytes = CERT) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        check_hello(hello, nonce, cert)
    assert info.value.code is ErrorCode.UNAUTHORIZED


def test_transcript_layout() -> None:
    assert transcript("worker", b"n" * 16, CERT) == (DOMAIN + b"worker\x00" + b"n" * 16 + hashlib.sha256(CERT).digest())


def test_make_hello_fields(key: Ed25519PrivateKey) -> None:
    hello = make_hello(key, "worker", NONCE, CERT, "cocoon/test", evidence=b"quote")
    assert hello.role == "worker"
    assert hello.public_key == public_bytes(key)
    assert hello.software == "cocoon/test"
    assert hello.evidence == b"quote"
    assert len(hello.signature) == 64


def test_valid_hello_is_accepted(key: Ed25519PrivateKey) -> None:
    hello = make_hello(key, "client", NONCE, CERT, "c")
    check_hello(hello, NONCE, CERT)  # no exception
    # and it survives the wire
    check_hello(decode_message(encode_message(hello)), NONCE, CERT)  # type: ignore[arg-type]


def test_wrong_nonce_is_rejected(key: Ed25519PrivateKey) -> None:
    hello = make_hello(key, "worker", NONCE, CERT, "w")
    assert_unauthorized(hello, nonce=b"\x12" * 32)


def test_other_certificate_is_rejected(key: Ed25519PrivateKey) -> None:
    # a proof captured by a man in the middle (another certificate) is useless to it
    hello = make_hello(key, "worker", NONCE, b"mitm certificate DER", "w")
    assert_unauthorized(hello)


def test_tampered_signature_is_rejected(key: Ed25519PrivateKey) -> None:
    hello = make_hello(key, "worker", NONCE, CERT, "w")
    signature = bytearray(hello.signature)
    signature[0] ^= 0x01
    assert_unauthorized(replace(hello, signature=bytes(signature)))


def test_mismatched_public_key_is_rejected(key: Ed25519PrivateKey) -> None:
    hello = make_hello(key, "worker", NONCE, CERT, "w")
    other = public_bytes(Ed25519PrivateKey.generate())
    assert_unauthorized(replace(hello, public_key=other))


def test_changed_role_is_rejected(key: Ed25519PrivateKey) -> None:
    # the role is signed: a client proof cannot be passed off as a worker's
    hello = make_hello(key, "client", NONCE, CERT, "c")
    assert_unauthorized(replace(hello, role="worker"))


def test_invalid_public_key_bytes_are_rejected(key: Ed25519PrivateKey) -> None:
    hello = make_hello(key, "worker", NONCE, CERT, "w")
    assert_unauthorized(replace(hello, public_key=b"\xff" * 32))


def test_software_and_evidence_are_not_signed(key: Ed25519PrivateKey) -> None:
    # informative fields: the attestation layer checks evidence itself
    hello = make_hello(key, "worker", NONCE, CERT, "w", evidence=b"a")
    check_hello(replace(hello, software="other", evidence=b"b"), NONCE, CERT)
