"""Sealed requests: the body sealed once, its key wrapped for up to K candidate workers.

The proxy sees the request id, the candidates' ids and the sizes; the body (messages,
system prompt, tools, sampling parameters, user) is ChaCha20-Poly1305 under a fresh content
key with the request id and kind as associated data.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from msgspec import Meta, Struct

from cocoon.seal.errors import SealError
from cocoon.seal.hpke import RecipientKey, SenderSetup, unwrap_key, wrap_key

MAX_CANDIDATES = 8
MAX_SEALED_BODY = 8 * 1024 * 1024
ZERO_NONCE = bytes(12)  # the content key is fresh for every request, so one nonce is safe
# 2: the answer's keys take a fresh response nonce from the worker (``response``). A worker refuses
# another version before it runs anything, so a client and a worker a version apart fail at once
# (``seal_error``, the next candidate tried), not after an answer the client cannot open.
VERSION = 2

RequestId = Annotated[bytes, Meta(min_length=16, max_length=16)]
Key32 = Annotated[bytes, Meta(min_length=32, max_length=32)]


class WrappedKey(Struct, array_like=True, frozen=True):
    worker_id: Key32  # the worker's channel (identity) key, which the proxy routes by
    enc: Key32
    wrapped: Annotated[bytes, Meta(max_length=64)]


class SealedRequest(Struct, array_like=True, frozen=True):
    version: Annotated[int, Meta(ge=1, le=255)]
    request_id: RequestId
    kind: Literal["chat", "completion"]
    keys: Annotated[list[WrappedKey], Meta(min_length=1, max_length=MAX_CANDIDATES)]
    ciphertext: Annotated[bytes, Meta(max_length=MAX_SEALED_BODY)]


_decoder = msgspec.msgpack.Decoder(SealedRequest)


def _aad(request_id: bytes, kind: str) -> bytes:
    return b"cocoon/request/v1\x00" + request_id + kind.encode()


def seal_request(
    body: bytes,
    *,
    kind: Literal["chat", "completion"],
    request_id: bytes,
    content_key: bytes,
    recipients: list[tuple[bytes, bytes]],
    prepared: dict[bytes, SenderSetup] | None = None,
) -> tuple[bytes, dict[bytes, bytes]]:
    """Seal ``body`` for ``recipients`` (worker id, HPKE public key). Returns the sealed bytes
    and, per worker id, the secret that worker's answer will be sealed with. ``prepared``: sender
    setups made ahead (``prepare_sender``) for some of those workers' keys, by worker id; each is
    used here and must not be used again."""
    if not 1 <= len(recipients) <= MAX_CANDIDATES:
        raise SealError("no_candidates", f"between 1 and {MAX_CANDIDATES} candidate workers are needed")
    if len({worker_id for worker_id, _ in recipients}) < len(recipients):
        # the worker would open the first key wrapped for it, the client expect the answer under the last's
        raise SealError("no_candidates", "a candidate worker is named twice")
    aad = _aad(request_id, kind)
    keys, secrets = [], {}
    for worker_id, public in recipients:
        setup = prepared.get(worker_id) if prepared else None
        enc, wrapped, secret = wrap_key(public, content_key, aad + worker_id, setup)
        keys.append(WrappedKey(worker_id, enc, wrapped))
        secrets[worker_id] = secret
    ciphertext = ChaCha20Poly1305(content_key).encrypt(ZERO_NONCE, body, aad)
    sealed = SealedRequest(VERSION, request_id, kind, keys, ciphertext)
    return msgspec.msgpack.encode(sealed), secrets


def decode_sealed(data: bytes) -> SealedRequest:
    try:
        sealed = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise SealError("malformed", f"sealed request does not decode: {exc}") from exc
    if sealed.version != VERSION:
        raise SealError("unsupported_version", f"sealed request version {sealed.version}; this worker reads {VERSION}")
    return sealed


def open_request(data: bytes, *, worker_id: bytes, hpke_key: RecipientKey) -> tuple[SealedRequest, bytes, bytes]:
    """(sealed request, body, response secret) for the worker ``worker_id``."""
    sealed = decode_sealed(data)
    entry = next((k for k in sealed.keys if k.worker_id == worker_id), None)
    if entry is None:
        raise SealError("not_a_candidate", "the request was not sealed for this worker")
    aad = _aad(sealed.request_id, sealed.kind)
    content_key, secret = unwrap_key(hpke_key, entry.enc, entry.wrapped, aad + worker_id)
    try:
        body = ChaCha20Poly1305(content_key).decrypt(ZERO_NONCE, sealed.ciphertext, aad)
    except (InvalidTag, ValueError) as exc:
        raise SealError("tampered", "the sealed body does not authenticate") from exc
    return sealed, body, secret


def sealed_hash(data: bytes) -> bytes:
    """What the usage record commits to: SHA-256 of the sealed request bytes."""
    return hashlib.sha256(data).digest()
