"""What a node claims about itself, bound into its TEE quote.

Claims are canonical bytes (a msgspec struct encoded as a msgpack array, fields in a fixed
order); a decoder re-encodes and refuses anything that is not byte-identical, so one set of
claims has exactly one encoding. REPORTDATA = SHA-512(domain tag ‖ canonical claims), so a quote
made for anything else can never be passed off as ours.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from cocoon.attest.errors import AttestationError, MalformedEvidence

CLAIMS_VERSION = 1
REPORT_DATA_DOMAIN = b"cocoon/attest/claims/v1\x00"
MAX_CLAIMS = 4096

Key32 = Annotated[bytes, Meta(min_length=32, max_length=32)]
Hash = Annotated[bytes, Meta(max_length=64)]
UnixTime = Annotated[int, Meta(ge=0, le=2**40)]


class Claims(Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    version: Annotated[int, Meta(ge=1, le=CLAIMS_VERSION)]
    role: Literal["client", "proxy", "worker"]
    channel_key: Key32  # Ed25519 public key of the TLS certificate / hop handshake
    hpke_key: Key32  # X25519 public key that end-to-end sealed requests are encrypted to
    model_hash: Hash  # SHA-256 of the served weights (workers); empty for other roles
    software: Annotated[str, Meta(max_length=128)]
    not_before: UnixTime
    not_after: UnixTime
    config_hash: Hash = b""  # hash of the node's configuration, extended into an RTMR where possible
    gpu_evidence_hash: Hash = b""  # SHA-256 of GPU evidence carried alongside (not verified here)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Claims)


def encode_claims(claims: Claims) -> bytes:
    return _encoder.encode(claims)


def decode_claims(data: bytes) -> Claims:
    if len(data) > MAX_CLAIMS:
        raise MalformedEvidence(f"claims of {len(data)} bytes exceed {MAX_CLAIMS}")
    try:
        claims = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise MalformedEvidence(f"claims do not decode: {exc}") from exc
    if encode_claims(claims) != data:
        raise MalformedEvidence("claims are not in canonical form")
    return claims


def report_data_for(claims_bytes: bytes) -> bytes:
    """The 64 bytes a quote must carry as REPORTDATA for these claims."""
    return hashlib.sha512(REPORT_DATA_DOMAIN + claims_bytes).digest()


def check_report_data(claims_bytes: bytes, report_data: bytes) -> None:
    if report_data != report_data_for(claims_bytes):
        raise AttestationError("claims_mismatch", "the quote's REPORTDATA does not bind these claims")


def check_validity(claims: Claims, now: int) -> None:
    if now < claims.not_before:
        raise AttestationError("not_yet_valid", f"claims valid from {claims.not_before}, now is {now}")
    if now >= claims.not_after:
        raise AttestationError("expired", f"claims expired at {claims.not_after}, now is {now}")
