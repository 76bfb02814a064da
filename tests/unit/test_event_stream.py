"""The client's SSE response: headers leave with the first event, and nothing is lost after."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest

from cocoon.client.api import EventStream


class BrokenBeforeTheFirstEvent(Exception):
    pass


def run(
    events: list[bytes], spec: str, *, fail: bool = False, log: list[tuple[str, Any]] | None = None
) -> list[tuple[str, Any]]:
    """What the response sends, in order, with the moments the events were asked for."""
    log = [] if log is None else log

    async def body() -> AsyncIterator[bytes]:
        if fail:
            raise BrokenBeforeTheFirstEvent
        for event in events:
            log.append(("asked", event))
            yield event

    async def send(message: MutableMapping[str, Any]) -> None:
        log.append((message["type"], message.get("body", message.get("status"))))

    async def receive() -> MutableMapping[str, Any]:
        await asyncio.Event().wait()  # the caller stays
        return {}

    response = EventStream(body(), media_type="text/event-stream")
    scope = {"type": "http", "asgi": {"spec_version": spec}}  # 2.3: Starlette also watches for a disconnect
    asyncio.run(response(scope, receive, send))
    return log


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
def test_the_headers_wait_for_the_first_event_then_everything_follows_in_order(spec: str) -> None:
    events = [b"data: {1}\n\n", b"data: {2}\n\n", b"data: [DONE]\n\n"]
    assert run(events, spec) == [
        ("asked", events[0]),  # the first event is ready before the status line goes
        ("http.response.start", 200),
        ("http.response.body", events[0]),
        ("asked", events[1]),
        ("http.response.body", events[1]),
        ("asked", events[2]),
        ("http.response.body", events[2]),
        ("http.response.body", b""),
    ]


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
def test_an_empty_stream_still_answers(spec: str) -> None:
    assert run([], spec) == [("http.response.start", 200), ("http.response.body", b"")]


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
def test_a_failure_before_the_first_event_sends_no_status_line(spec: str) -> None:
    # nothing has gone out, so the application's error handler can still answer with a status
    # of its own (Starlette's response would have sent 200 and then cut the stream)
    sent: list[tuple[str, Any]] = []
    with pytest.raises(BaseException) as excinfo:
        run([b"data: {1}\n\n"], spec, fail=True, log=sent)
    group = excinfo.value
    causes = group.exceptions if isinstance(group, BaseExceptionGroup) else (group,)
    assert any(isinstance(cause, BrokenBeforeTheFirstEvent) for cause in causes)
    assert sent == []
