"""The overhead benchmark's lean streaming HTTP client keeps connections alive as the ``openai``
client's pool does: reused while open and fresh, never for a request that another answer still
occupies, and a request that a reused connection drops unanswered is sent again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from benchmarks import overhead_servers
from benchmarks.overhead_servers import HttpError, close_idle_connections, stream_chat


def sse_answer(words: list[str], *, close: bool = False) -> bytes:
    """A chunked ``text/event-stream`` answer, one event per word, then ``[DONE]``."""
    events = [b"data: " + json.dumps({"choices": [{"delta": {"content": w}}]}).encode() + b"\n\n" for w in words]
    events.append(b"data: [DONE]\n\n")
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
    head += b"connection: close\r\n\r\n" if close else b"\r\n"
    return head + body


@dataclass
class ScriptedSSEServer:
    """A test double of an OpenAI server: answers every request with the same two-word stream.
    ``drop_second`` closes a connection, unanswered, when a second request comes on it (a server
    whose idle timeout struck as the request left); ``close_after`` closes it after each answer."""

    drop_second: bool = False
    close_after: bool = False
    say_close: bool = False
    connections: int = 0
    requests: int = 0
    dropped: int = 0  # requests that came on a connection and were closed on, unanswered
    url: str = ""
    server: asyncio.Server | None = field(default=None, repr=False)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.lower().split(b"\r\n")
                length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
                await reader.readexactly(length)
                if served and self.drop_second:
                    self.dropped += 1
                    return
                self.requests += 1
                served += 1
                writer.write(sse_answer(["hello", " world"], close=self.say_close))
                await writer.drain()
                if self.close_after or self.say_close:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedSSEServer]:
    double = ScriptedSSEServer()
    double.server = await asyncio.start_server(double.handle, "127.0.0.1", 0)
    port = double.server.sockets[0].getsockname()[1]
    double.url = f"http://127.0.0.1:{port}/v1"
    yield double
    close_idle_connections()
    double.server.close()


async def test_one_connection_carries_consecutive_requests(scripted: ScriptedSSEServer) -> None:
    for _ in range(3):
        trace = await stream_chat(scripted.url, b"{}")
        assert trace.text == "hello world" and trace.tokens == 2
    assert scripted.connections == 1 and scripted.requests == 3


async def test_concurrent_requests_each_get_a_connection(scripted: ScriptedSSEServer) -> None:
    traces = await asyncio.gather(*(stream_chat(scripted.url, b"{}") for _ in range(3)))
    assert [t.text for t in traces] == ["hello world"] * 3
    assert scripted.connections == 3
    await stream_chat(scripted.url, b"{}")
    assert scripted.connections == 3  # the next one reuses an idle one


async def test_a_connection_the_server_closed_is_not_reused(scripted: ScriptedSSEServer) -> None:
    scripted.close_after = True
    assert (await stream_chat(scripted.url, b"{}")).text == "hello world"
    await asyncio.sleep(0.05)  # the server's close arrives while the connection is idle
    address = ("127.0.0.1", int(scripted.url.split(":")[2].split("/")[0]))
    assert overhead_servers._take_idle(address) is None  # seen closed, and dropped
    assert (await stream_chat(scripted.url, b"{}")).text == "hello world"
    assert scripted.connections == 2 and scripted.requests == 2 and scripted.dropped == 0


async def test_an_answer_saying_connection_close_is_not_kept(scripted: ScriptedSSEServer) -> None:
    scripted.say_close = True
    assert (await stream_chat(scripted.url, b"{}")).text == "hello world"
    assert overhead_servers._idle.get(("127.0.0.1", int(scripted.url.split(":")[2].split("/")[0])), []) == []


async def test_a_request_dropped_unanswered_on_a_reused_connection_is_sent_again(
    scripted: ScriptedSSEServer,
) -> None:
    scripted.drop_second = True
    assert (await stream_chat(scripted.url, b"{}")).text == "hello world"
    assert (await stream_chat(scripted.url, b"{}")).text == "hello world"
    assert scripted.connections == 2 and scripted.requests == 2 and scripted.dropped == 1


async def test_an_expired_connection_is_not_reused(
    scripted: ScriptedSSEServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(overhead_servers, "KEEPALIVE_EXPIRY", 0.0)
    await stream_chat(scripted.url, b"{}")
    await stream_chat(scripted.url, b"{}")
    assert scripted.connections == 2


async def test_a_new_connection_dropped_unanswered_is_an_error() -> None:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(HttpError):
            await stream_chat(f"http://127.0.0.1:{port}/v1", b"{}")
    finally:
        server.close()
