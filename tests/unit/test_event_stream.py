"""The client's SSE response: headers leave with the first event, and nothing is lost after; it
runs in the request's task, and a caller who leaves stops it at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, MutableMapping
from typing import Any, cast

import pytest

from cocoon.client.api import EventStream, _disconnected


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


class CallDouble:
    """Test double of the call behind the stream: records being given up, and being told where
    to push later events."""

    def __init__(self) -> None:
        self.aborted: list[str] = []
        self.pushing: list[Any] = []

    async def abort(self, reason: str) -> None:
        self.aborted.append(reason)

    def push_events(self, write: Any) -> None:
        self.pushing.append(write)


def test_the_first_event_leaves_before_the_event_loop_takes_a_turn() -> None:
    # Starlette's own response starts a task for the events: one more turn of the event loop,
    # on the way to the caller's first token, behind whatever else was ready to run
    log: list[str] = []

    async def body() -> AsyncIterator[bytes]:
        yield b"data: {1}\n\n"

    async def send(message: MutableMapping[str, Any]) -> None:
        log.append(message["type"])

    async def receive() -> MutableMapping[str, Any]:
        await asyncio.Event().wait()
        return {}

    async def main() -> None:
        asyncio.get_running_loop().call_soon(log.append, "a turn of the event loop")
        await EventStream(body())({"type": "http", "asgi": {"spec_version": "2.3"}}, receive, send)

    asyncio.run(main())
    assert log[:3] == ["http.response.start", "http.response.body", "http.response.body"]


def test_a_caller_who_leaves_mid_stream_stops_it_and_gives_the_call_up_at_once() -> None:
    sent: list[bytes] = []
    closed: list[str] = []
    call = CallDouble()

    async def body() -> AsyncGenerator[bytes, None]:
        try:
            for n in range(1000):
                yield b"data: {%d}\n\n" % n
        finally:
            closed.append("events closed")  # the call's own clean-up runs here

    async def main() -> None:
        left = asyncio.Event()

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message.get("body", b""))
            if len(sent) == 4:  # the caller leaves after three events
                left.set()
            await asyncio.sleep(0.001)  # as a write waits for the socket: the events wait at a yield

        async def receive() -> MutableMapping[str, Any]:
            await left.wait()
            return {"type": "http.disconnect"}

        watcher = asyncio.create_task(_disconnected(receive))
        stream = EventStream(body(), watcher=watcher, call=cast(Any, call))
        await asyncio.wait_for(stream({"type": "http", "asgi": {"spec_version": "2.3"}}, receive, send), 5)
        assert watcher.done()
        assert closed == ["events closed"]  # at once, not when the generator is collected
        assert call.aborted == ["caller disconnected"]
        # after the first event, later ones may be pushed from the read loop: as body parts
        (write,) = call.pushing
        await write(b"data: {pushed}\n\n")
        assert sent[-1] == b"data: {pushed}\n\n"

    asyncio.run(main())
    assert 4 <= len(sent) < 11 and b"" not in sent[1:]  # stopped, and never ended as if complete


def test_later_events_go_through_the_servers_own_send() -> None:
    """Starlette's middleware wraps ``send`` twice to note the response's start: the events
    after the first go through the server's own, which ``ClientApp`` keeps in the scope."""
    from starlette.applications import Starlette

    from cocoon.client.api import SERVER_SEND, ClientApp

    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope.get(SERVER_SEND))

    async def server_send(message: MutableMapping[str, Any]) -> None:
        pass

    asyncio.run(ClientApp(cast(Starlette, app))({"type": "http"}, cast(Any, None), server_send))
    assert seen == [server_send]

    async def body() -> AsyncIterator[bytes]:
        for n in range(3):
            yield b"data: {%d}\n\n" % n

    wrapped: list[str] = []
    direct: list[bytes] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        wrapped.append(message["type"])

    async def own(message: MutableMapping[str, Any]) -> None:
        direct.append(message["body"])

    async def receive() -> MutableMapping[str, Any]:
        await asyncio.Event().wait()
        return {}

    scope = {"type": "http", "asgi": {"spec_version": "2.3"}, SERVER_SEND: own}
    asyncio.run(asyncio.wait_for(EventStream(body())(scope, receive, send), 5))
    assert wrapped == ["http.response.start", "http.response.body"]  # the start and the first event
    assert direct == [b"data: {1}\n\n", b"data: {2}\n\n", b""]


def test_with_a_middleware_of_our_own_events_go_through_it() -> None:
    """A middleware added to the client's app may see or change bodies: ``ClientApp`` then
    leaves the server's own ``send`` out of the scope, so that ``EventStream`` writes every event
    through the ``send`` it was given, the middleware's."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.gzip import GZipMiddleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from cocoon.client.api import SERVER_SEND, ClientApp

    seen: list[bool] = []

    async def endpoint(request: Request) -> PlainTextResponse:
        seen.append(SERVER_SEND in request.scope)
        return PlainTextResponse("ok")

    routes = [Route("/", endpoint)]
    for middleware, expected in (([], True), ([Middleware(GZipMiddleware)], False)):
        with TestClient(ClientApp(Starlette(routes=routes, middleware=middleware))) as client:
            assert client.get("/").text == "ok"
        assert seen.pop() is expected
