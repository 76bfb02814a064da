"""Server-sent events as OpenAI streams them."""

from __future__ import annotations

from typing import Any

import msgspec

_json = msgspec.json.Encoder()

DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + _json.encode(payload) + b"\n\n"


def encode_event(payload: Any) -> bytes:
    """``event`` for any value msgspec encodes (``msgspec.Raw`` fields pass through as they are)."""
    return b"data: " + _json.encode(payload) + b"\n\n"
