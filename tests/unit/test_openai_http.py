"""Pure helpers of the HTTP engine: reading usage and text out of OpenAI payloads."""

from __future__ import annotations

from typing import Any

import pytest

from cocoon.engine.openai_http import _text_of, _usage_of
from cocoon.protocol.messages import Usage


def test_usage_of_full_payload() -> None:
    payload = {
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 30,
            "total_tokens": 42,
            "prompt_tokens_details": {"cached_tokens": 8},
            "completion_tokens_details": {"reasoning_tokens": 5},
        }
    }
    assert _usage_of(payload) == Usage(prompt_tokens=12, completion_tokens=30, cached_tokens=8, reasoning_tokens=5)


def test_usage_of_minimal_payload() -> None:
    assert _usage_of({"usage": {"completion_tokens": 3}}) == Usage(completion_tokens=3)


def test_usage_of_null_details() -> None:
    payload = {
        "usage": {
            "prompt_tokens": None,
            "completion_tokens": 2,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        }
    }
    assert _usage_of(payload) == Usage(prompt_tokens=0, completion_tokens=2)


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"usage": None},
        {"usage": "lots"},
        {"usage": {"prompt_tokens": 5}},
        {"usage": {"prompt_tokens": 5, "completion_tokens": "7"}},
        {"usage": {"completion_tokens": None}},
    ],
)
def test_usage_of_without_usable_usage(payload: dict[str, Any]) -> None:
    assert _usage_of(payload) is None


def test_text_of_chat_delta() -> None:
    assert _text_of({"choices": [{"index": 0, "delta": {"content": "Hi"}}]}) == "Hi"


def test_text_of_chat_message() -> None:
    assert _text_of({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}}]}) == "Hello"


def test_text_of_completion() -> None:
    assert _text_of({"choices": [{"index": 0, "text": "once"}, {"index": 1, "text": " more"}]}) == "once more"


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"choices": None},
        {"choices": []},
        {"choices": ["not a dict", 3]},
        {"choices": [{"delta": {}}]},
        {"choices": [{"delta": {"role": "assistant", "content": None}}]},
        {"choices": [{"message": {"content": None, "tool_calls": []}}]},
    ],
)
def test_text_of_without_text(payload: dict[str, Any]) -> None:
    assert _text_of(payload) == ""
