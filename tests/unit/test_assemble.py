"""``assemble_response``: streamed chunks joined into one non-streamed OpenAI response."""

from __future__ import annotations

from typing import Any

from cocoon.engine.llama_cpp import assemble_response
from cocoon.protocol.messages import Usage

USAGE = Usage(prompt_tokens=11, completion_tokens=4)
USAGE_BODY = {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}


def chat_chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "smol",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def text_chunk(text: str, finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1700000001,
        "model": "smol",
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }


def test_chat_chunks_become_one_chat_completion() -> None:
    chunks = [
        chat_chunk({"role": "assistant"}),
        chat_chunk({"content": "Hel"}),
        chat_chunk({"content": "lo"}),
        chat_chunk({"content": "!"}),
        chat_chunk({}, finish_reason="stop"),
    ]
    assert assemble_response("chat", chunks, USAGE) == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "smol",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE_BODY,
    }


def test_chat_finish_reason_is_the_last_non_null_one() -> None:
    chunks = [chat_chunk({"content": "a"}, finish_reason="length"), chat_chunk({"content": "b"})]
    response = assemble_response("chat", chunks, USAGE)
    assert response["choices"][0]["finish_reason"] == "length"
    assert response["choices"][0]["message"]["content"] == "ab"


def test_chat_null_content_deltas_are_skipped() -> None:
    chunks = [chat_chunk({"role": "assistant", "content": None}), chat_chunk({"content": "x"}), {"choices": []}]
    assert assemble_response("chat", chunks, USAGE)["choices"][0]["message"]["content"] == "x"


def test_completion_chunks_become_one_text_completion() -> None:
    chunks = [text_chunk("Once"), text_chunk(" upon"), text_chunk(" a time", finish_reason="length")]
    assert assemble_response("completion", chunks, USAGE) == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1700000001,
        "model": "smol",
        "choices": [{"index": 0, "text": "Once upon a time", "logprobs": None, "finish_reason": "length"}],
        "usage": USAGE_BODY,
    }


def test_tool_call_deltas_are_merged() -> None:
    chunks = [
        chat_chunk({"role": "assistant", "content": None}),
        chat_chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "call_a", "type": "function", "function": {"name": "weather", "arguments": ""}}
                ]
            }
        ),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chat_chunk(
            {
                "tool_calls": [
                    {"index": 1, "id": "call_b", "type": "function", "function": {"name": "time", "arguments": "{}"}}
                ]
            }
        ),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chat_chunk({}, finish_reason="tool_calls"),
    ]
    response = assemble_response("chat", chunks, USAGE)
    message = response["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": None,  # as OpenAI's, beside tool calls that came with no text
        "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": "{}"}},
        ],
    }
    assert response["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_calls_are_ordered_by_index() -> None:
    chunks = [
        chat_chunk({"tool_calls": [{"index": 2, "id": "c2", "function": {"name": "b"}}]}),
        chat_chunk({"tool_calls": [{"index": 0, "id": "c0", "function": {"name": "a"}}]}),
    ]
    calls = assemble_response("chat", chunks, USAGE)["choices"][0]["message"]["tool_calls"]
    assert [c["id"] for c in calls] == ["c0", "c2"]
    assert all(c["function"]["arguments"] == "" for c in calls)


def test_no_tool_calls_key_without_tool_calls() -> None:
    message = assemble_response("chat", [chat_chunk({"content": "hi"})], USAGE)["choices"][0]["message"]
    assert "tool_calls" not in message


def test_no_chunks() -> None:
    chat = assemble_response("chat", [], Usage())
    assert chat["object"] == "chat.completion"
    assert chat["id"] == ""
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": ""}
    assert chat["choices"][0]["finish_reason"] is None
    assert chat["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    completion = assemble_response("completion", [], Usage())
    assert completion["object"] == "text_completion"
    assert completion["choices"][0]["text"] == ""


def test_usage_is_the_given_usage_not_a_count_of_chunks() -> None:
    chunks = [chat_chunk({"content": "a"}), chat_chunk({"content": "b"})]
    usage = Usage(prompt_tokens=100, completion_tokens=200, cached_tokens=50)
    assert assemble_response("chat", chunks, usage)["usage"] == {
        "prompt_tokens": 100,
        "completion_tokens": 200,
        "total_tokens": 300,
    }
