"""The client's SSE response: headers leave with the first event, and nothing is lost after."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

from cocoon.client.api import EventStream


def run(events: list[bytes]) -> list[tuple[str, Any]]:
    """What the response sends, in order, with the moments the events were asked for."""
    log: list[tuple[str, Any]] = []

    async def body() -> AsyncIterator[bytes]:
        for event in events:
            log.append(("asked", event))
            yield event

    async def send(message: MutableMapping[str, Any]) -> None:
        log.append((message["type"], message.get("body", message.get("status"))))

    async def receive() -> MutableMapping[str, Any]:
        await asyncio.Event().wait()  # the caller stays
        return {}

    response = EventStream(body(), media_type="text/event-stream")
    scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
    asyncio.run(response(scope, receive, send))
    return log


def test_the_headers_wait_for_the_first_event_then_everything_follows_in_order() -> None:
    events = [b"data: {1}\n\n", b"data: {2}\n\n", b"data: [DONE]\n\n"]
    assert run(events) == [
        ("asked", events[0]),  # the first event is ready before the status line goes
        ("http.response.start", 200),
        ("http.response.body", events[0]),
        ("asked", events[1]),
        ("http.response.body", events[1]),
        ("asked", events[2]),
        ("http.response.body", events[2]),
        ("http.response.body", b""),
    ]


def test_an_empty_stream_still_answers() -> None:
    assert run([]) == [("http.response.start", 200), ("http.response.body", b"")]
