"""Worker-signed usage records (receipts): sign and verify are pure functions.

The record is canonical bytes (msgpack array, fixed field order); the signature is Ed25519 by the
worker's attested channel key over a domain tag and those bytes.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from msgspec import Meta, Struct

from cocoon.seal import ed25519
from cocoon.seal.errors import SealError

DOMAIN = b"cocoon/usage/v1\x00"
Count = Annotated[int, Meta(ge=0, le=2**40)]
Millis = Annotated[int, Meta(ge=0, le=2**53)]  # unix time in milliseconds


class UsageRecord(Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    version: Annotated[int, Meta(ge=1, le=1)]
    request_id: Annotated[bytes, Meta(min_length=16, max_length=16)]
    sealed_request_hash: Annotated[bytes, Meta(min_length=32, max_length=32)]
    model_hash: Annotated[bytes, Meta(max_length=64)]
    worker_key: Annotated[bytes, Meta(min_length=32, max_length=32)]
    prompt_tokens: Count
    cached_tokens: Count
    completion_tokens: Count
    reasoning_tokens: Count
    finish_reason: Annotated[str, Meta(max_length=64)]
    started_ms: Millis
    finished_ms: Millis


class SignedUsage(Struct, array_like=True, frozen=True):
    record: Annotated[bytes, Meta(max_length=1024)]
    signature: Annotated[bytes, Meta(min_length=64, max_length=64)]


_record_decoder = msgspec.msgpack.Decoder(UsageRecord)
_signed_decoder = msgspec.msgpack.Decoder(SignedUsage)


def sign_usage(record: UsageRecord, key: Ed25519PrivateKey) -> bytes:
    raw = msgspec.msgpack.encode(record)
    return msgspec.msgpack.encode(SignedUsage(raw, key.sign(DOMAIN + raw)))


def verify_usage(signed: bytes, worker_key: bytes) -> UsageRecord:
    """The record, if ``worker_key`` signed it; ``SealError`` otherwise."""
    try:
        envelope = _signed_decoder.decode(signed)
        record = _record_decoder.decode(envelope.record)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise SealError("malformed", f"usage record does not decode: {exc}") from exc
    if record.worker_key != worker_key:
        raise SealError("wrong_worker", "the usage record names another worker")
    if not ed25519.verify(worker_key, envelope.signature, DOMAIN + envelope.record):
        raise SealError("bad_signature", "the usage record's signature does not verify")
    return record
