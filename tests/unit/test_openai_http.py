"""Pure helpers of the HTTP engine: reading usage and text out of OpenAI payloads, and reading
its event stream (which events are ready together)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cocoon.engine.base import Chunk, EngineError, EngineRequest, Finished
from cocoon.engine.openai_http import MAX_LINE, OpenAIHttpEngine, _text_of, _usage_of
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


class _Reads(httpx.AsyncByteStream):
    """A response body that arrives in the given reads."""

    def __init__(self, reads: list[bytes]) -> None:
        self.reads = reads

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for read in self.reads:
            yield read


def _event(i: int) -> bytes:
    return b'data: {"choices": [{"index": 0, "delta": {"content": "t%d"}, "finish_reason": null}]}\r\n\r\n' % i


async def test_stream_events_that_came_in_one_read_are_ready_together() -> None:
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}\n\n'
    whole = _event(2)
    reads = [_event(0), _event(1) + whole[:20], whole[20:40], whole[40:] + _event(3) + b": comment\n" + usage]
    response = httpx.Response(200, stream=_Reads([*reads, b"data: [DONE]\n\n"]))
    engine = OpenAIHttpEngine("http://engine.invalid")
    request = EngineRequest("chat", {"messages": []}, True)
    events = [e async for e in engine._relay_stream(request, response)]
    await engine.aclose()
    chunks = [e for e in events if isinstance(e, Chunk)]
    assert [c.payload["choices"][0]["delta"]["content"] for c in chunks] == ["t0", "t1", "t2", "t3"]
    assert [c.more for c in chunks] == [False, False, True, False]  # t2 and t3 completed in one read
    assert events[-1] == Finished(usage=Usage(prompt_tokens=3, completion_tokens=4), finish_reason=None)


async def test_an_oversized_stream_line_is_refused() -> None:
    response = httpx.Response(200, stream=_Reads([b"data: " + b"x" * (MAX_LINE + 1)]))
    engine = OpenAIHttpEngine("http://engine.invalid")
    with pytest.raises(EngineError, match="oversized"):
        async for _ in engine._relay_stream(EngineRequest("chat", {"messages": []}, True), response):
            pass
    await engine.aclose()


def test_the_url_shown_carries_no_credentials_and_no_query() -> None:
    from cocoon.engine.openai_http import shown_url

    assert shown_url("http://user:s3cret@[::1]:8080/v1?key=abc") == "http://[::1]:8080/v1"
    assert shown_url("https://engine.example/v1") == "https://engine.example/v1"


async def test_an_engine_url_with_a_password_never_shows_it() -> None:
    # where the engine cannot be reached: the worker logs progress, writes it to its status file
    # and prints the error
    seen: list[str] = []
    engine = OpenAIHttpEngine("http://user:s3cret@127.0.0.1:1/v1?key=abc")
    with pytest.raises(EngineError) as excinfo:
        await engine.start(lambda done, total, what: seen.append(what))
    await engine.aclose()
    shown = " ".join([*seen, str(excinfo.value)])
    assert "127.0.0.1:1" in shown
    assert "s3cret" not in shown and "user" not in shown and "abc" not in shown


@pytest.mark.parametrize(
    "url", ["http://[zz::1", "ftp://zz.example/v1", "zz.example:8000", "http://", "http://zz/" + "x" * 3000]
)
def test_a_bad_engine_url_is_a_config_error_that_does_not_quote_it(url: str) -> None:
    from cocoon.config import ConfigError
    from cocoon.run import check_engine_url

    with pytest.raises(ConfigError) as excinfo:
        check_engine_url(url)
    assert "zz" not in str(excinfo.value)


def test_an_engine_url_with_credentials_is_accepted() -> None:
    from cocoon.run import check_engine_url

    check_engine_url("http://user:s3cret@127.0.0.1:8080/v1")
