"""The evidence envelope: one versioned structure for every kind of TEE."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from cocoon.attest.errors import MalformedEvidence

EVIDENCE_VERSION = 1
MAX_EVIDENCE = 2 * 1024 * 1024

Tee = Literal["tdx", "sev-snp", "sim"]


class Evidence(Struct, frozen=True, forbid_unknown_fields=False, omit_defaults=True):
    version: Annotated[int, Meta(ge=1, le=EVIDENCE_VERSION)]
    tee: Tee
    quote: Annotated[bytes, Meta(min_length=1, max_length=64 * 1024)]  # TDX quote or SNP report
    claims: Annotated[bytes, Meta(min_length=1, max_length=4096)]  # canonical claims
    event_log: Annotated[bytes, Meta(max_length=1024 * 1024)] = b""  # CCEL (TCG2) event log
    collateral: Annotated[bytes, Meta(max_length=256 * 1024)] = b""  # DCAP collateral JSON, if shipped
    vcek: Annotated[bytes, Meta(max_length=16 * 1024)] = b""  # SEV-SNP: the chip's VCEK (DER)
    cert_chain: Annotated[bytes, Meta(max_length=64 * 1024)] = b""  # SEV-SNP: ASK then ARK (PEM)
    gpu_evidence: Annotated[bytes, Meta(max_length=256 * 1024)] = b""  # carried, hashed in the claims


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Evidence)


def encode_evidence(evidence: Evidence) -> bytes:
    return _encoder.encode(evidence)


def decode_evidence(data: bytes) -> Evidence:
    if len(data) > MAX_EVIDENCE:
        raise MalformedEvidence(f"evidence of {len(data)} bytes exceeds {MAX_EVIDENCE}")
    if not data:
        raise MalformedEvidence("no evidence presented")
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise MalformedEvidence(f"evidence does not decode: {exc}") from exc
