"""The in-channel proof of the dialing side (pure functions).

The dialer signs a transcript made of a domain tag, its role, the listener's fresh nonce and
the hash of the listener's TLS certificate. A man in the middle has another certificate, so a
proof captured by it cannot be replayed to the real listener, and a stale proof fails the nonce.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cocoon.keys import public_bytes
from cocoon.protocol.errors import ErrorCode, RemoteProtocolError
from cocoon.protocol.messages import Hello, Role

DOMAIN = b"cocoon/hop-auth/v1\x00"


def transcript(role: str, nonce: bytes, listener_cert_der: bytes) -> bytes:
    return DOMAIN + role.encode() + b"\x00" + nonce + hashlib.sha256(listener_cert_der).digest()


def make_hello(
    key: Ed25519PrivateKey,
    role: Role,
    nonce: bytes,
    listener_cert_der: bytes,
    software: str,
    evidence: bytes = b"",
) -> Hello:
    return Hello(
        role=role,
        public_key=public_bytes(key),
        signature=key.sign(transcript(role, nonce, listener_cert_der)),
        software=software,
        evidence=evidence,
    )


def check_hello(hello: Hello, nonce: bytes, listener_cert_der: bytes | Sequence[bytes]) -> None:
    """Raise ``RemoteProtocolError`` unless the hello is signed over this channel's transcript
    (for one of the listener's certificates)."""
    candidates = [listener_cert_der] if isinstance(listener_cert_der, bytes) else list(listener_cert_der)
    try:
        key = Ed25519PublicKey.from_public_bytes(hello.public_key)
    except ValueError as exc:
        raise RemoteProtocolError("hello carries an invalid key", ErrorCode.UNAUTHORIZED) from exc
    for cert_der in candidates:
        try:
            key.verify(hello.signature, transcript(hello.role, nonce, cert_der))
        except InvalidSignature:
            continue
        return
    raise RemoteProtocolError("hello signature does not verify", ErrorCode.UNAUTHORIZED)
