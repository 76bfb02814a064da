"""The relay hot path: corked writes, chunks passed straight through a stream, and the client
writing the SSE events of chunks that arrived together at once, all without reordering."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from cocoon.channel import peer as peer_module
from cocoon.channel.peer import CORK_LIMIT, Peer, PeerHandler, Stream
from cocoon.channel.verify import PeerIdentity
from cocoon.client.sealing import Receipts
from cocoon.client.service import Call, UpstreamError
from cocoon.openai.schemas import parse_request
from cocoon.protocol.connection import Connection, Side
from cocoon.protocol.errors import ErrorCode
from cocoon.protocol.messages import (
    Announce,
    Cancel,
    Challenge,
    Data,
    End,
    Error,
    Goodbye,
    Hello,
    Message,
    ModelList,
    Open,
    PayTerms,
    StreamRequest,
    Usage,
    Voucher,
    Welcome,
    WorkerList,
)
from tests.unit.seal.test_receipts import Setup


def open_connections(now: float) -> tuple[Connection, Connection]:
    """A dialer and a listener past the handshake (in memory)."""
    dialer, listener = Connection(Side.DIALER, now=now), Connection(Side.LISTENER, now=now)
    for sender, receiver, message in (
        (listener, dialer, Challenge(nonce=b"n" * 16)),
        (dialer, listener, Hello(role="worker", public_key=b"k" * 32, signature=b"s" * 64)),
        (listener, dialer, Welcome(role="proxy")),
    ):
        receiver.receive_data(sender.send(message), now)
        assert receiver.next_event() == message
    return dialer, listener


class Recorder:
    """A ``PeerHandler`` that keeps the streams opened to it."""

    def __init__(self) -> None:
        self.opened: asyncio.Queue[StreamRequest] = asyncio.Queue()

    def stream_opened(self, peer: Peer, message: StreamRequest) -> None:
        self.opened.put_nowait(message)

    def stream_cancelled(self, peer: Peer, message: Cancel) -> None:
        pass

    def connection_message(self, peer: Peer, message: Announce | Goodbye | Voucher) -> None:
        pass


class Pair:
    """Two peers on a loopback TCP connection (no TLS: the hot path is the same above it)."""

    dialer: Peer
    listener: Peer

    def __init__(self, dialer_handler: PeerHandler | None = None, listener_handler: Recorder | None = None) -> None:
        self.dialer_handler = dialer_handler or Recorder()
        self.handler = listener_handler or Recorder()

    async def __aenter__(self) -> Pair:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = loop.create_future()
        self.server = await asyncio.start_server(lambda r, w: accepted.set_result((r, w)), "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        server_reader, server_writer = await accepted
        dialer_conn, listener_conn = open_connections(loop.time())
        self.dialer = Peer(reader, writer, dialer_conn, PeerIdentity("worker", b"w" * 32))
        self.listener = Peer(server_reader, server_writer, listener_conn, PeerIdentity("proxy", b"p" * 32))
        self.tasks = [
            asyncio.create_task(self.dialer.serve(self.dialer_handler)),
            asyncio.create_task(self.listener.serve(self.handler)),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.dialer.aclose()
        await self.listener.aclose()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.server.close()
        await self.server.wait_closed()

    async def stream(self) -> Stream:
        """A stream the dialer opened, once the listener has it."""
        stream = await self.dialer.open(
            lambda sid: Open(stream_id=sid, model="m", kind="chat", stream=True, max_tokens=0, body=b"{}")
        )
        await asyncio.wait_for(self.handler.opened.get(), 5)
        return stream


def count_writes(peer: Peer) -> list[bytes]:
    writes: list[bytes] = []
    write = peer.writer.write

    def spy(data: Any) -> None:
        writes.append(bytes(data))
        write(data)

    peer.writer.write = spy  # type: ignore[method-assign]
    return writes


async def test_frames_sent_in_one_turn_of_the_loop_leave_in_one_write_in_order() -> None:
    async with Pair() as pair:
        stream = await pair.stream()
        writes = count_writes(pair.listener)
        for i in range(10):
            assert pair.listener.send_nowait(Data(stream_id=stream.id, payload=b"chunk %d" % i))
        assert writes == []  # corked until the end of this turn of the loop
        got = [await stream.receive(5) for _ in range(10)]
        assert [m.payload for m in got if isinstance(m, Data)] == [b"chunk %d" % i for i in range(10)]
        assert len(writes) == 1


async def test_flush_writes_at_once_once_the_cork_is_full() -> None:
    async with Pair() as pair:
        stream = await pair.stream()
        writes = count_writes(pair.listener)
        payload = b"x" * 4096
        for _ in range(CORK_LIMIT // len(payload) + 1):
            pair.listener.send_nowait(Data(stream_id=stream.id, payload=payload))
        await pair.listener.flush()
        assert len(writes) == 1 and len(writes[0]) > CORK_LIMIT


async def test_a_flush_on_an_idle_connection_writes_at_once_and_on_a_busy_one_at_the_end_of_the_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with Pair() as pair:
        stream = await pair.stream()
        writes = count_writes(pair.listener)
        await asyncio.sleep(peer_module.IDLE_WRITE * 2)  # nothing written meanwhile: idle
        pair.listener.send_nowait(Data(stream_id=stream.id, payload=b"first"))
        await pair.listener.flush()
        assert len(writes) == 1  # without waiting for the end of the turn
        monkeypatch.setattr(peer_module, "IDLE_WRITE", 60.0)  # busy, however slow this machine is
        pair.listener.send_nowait(Data(stream_id=stream.id, payload=b"second"))
        pair.listener.send_nowait(Data(stream_id=stream.id, payload=b"third"))
        await pair.listener.flush()
        assert len(writes) == 1  # busy: corked, to leave together
        got = [await stream.receive(5) for _ in range(3)]
        assert [m.payload for m in got if isinstance(m, Data)] == [b"first", b"second", b"third"]
        assert len(writes) == 2


async def test_send_at_once_writes_now_after_what_was_corked() -> None:
    async with Pair() as pair:
        stream = await pair.stream()
        writes = count_writes(pair.listener)
        pair.listener.send_nowait(Data(stream_id=stream.id, payload=b"corked"))
        assert pair.listener.send_at_once(Data(stream_id=stream.id, payload=b"urgent"))
        assert len(writes) == 1  # both, in order, without waiting for the end of the turn
        got = [await stream.receive(5) for _ in range(2)]
        assert [m.payload for m in got if isinstance(m, Data)] == [b"corked", b"urgent"]


async def test_closing_still_sends_what_was_corked() -> None:
    async with Pair() as pair:
        stream = await pair.stream()
        pair.listener.send_nowait(Data(stream_id=stream.id, payload=b"last words"))
        await pair.listener.aclose("done")
        first = await stream.receive(5)
        assert isinstance(first, Data) and first.payload == b"last words"
        second = await stream.receive(5)  # then the connection is gone
        assert isinstance(second, Error)


async def test_forwarded_chunks_skip_the_queue_and_never_overtake_queued_ones() -> None:
    async with Pair() as pair:
        stream = await pair.stream()
        forwarded: list[bytes] = []
        accept = True

        def forward(message: Data) -> bool:
            if accept:
                forwarded.append(message.payload)
            return accept

        stream.forward = forward

        async def send(*payloads: bytes) -> None:
            for payload in payloads:
                pair.listener.send_nowait(Data(stream_id=stream.id, payload=payload))
            await pair.listener.flush()
            await asyncio.sleep(0.05)

        await send(b"1", b"2")
        assert forwarded == [b"1", b"2"] and stream.ready == 0
        accept = False
        await send(b"3")
        accept = True
        await send(b"4")  # the queue holds 3: 4 waits behind it
        assert forwarded == [b"1", b"2"]
        assert [m.payload for m in (stream.receive_nowait(), stream.receive_nowait()) if isinstance(m, Data)] == [
            b"3",
            b"4",
        ]
        await send(b"5")  # the queue is empty again: straight through
        assert forwarded == [b"1", b"2", b"5"]
        pair.listener.send_nowait(End(stream_id=stream.id, usage=Usage()))  # the end always queues
        assert isinstance(await stream.receive(5), End)


async def test_a_waiting_message_is_taken_without_a_timer() -> None:
    async with Pair() as pair:
        stream = await pair.stream()
        assert stream.receive_nowait() is None
        stream.queue.put_nowait(Data(stream_id=stream.id, payload=b"here"))
        assert stream.ready == 1
        message = await stream.receive(timeout=0)
        assert isinstance(message, Data) and message.payload == b"here"
        with pytest.raises(TimeoutError):
            await stream.receive(timeout=0.01)


# --- the client's SSE stream -------------------------------------------------------------------


class FakePeer:
    def __init__(self) -> None:
        self._streams: dict[int, Stream] = {}
        self.sent: list[Message] = []

    async def send(self, message: Message) -> None:
        self.sent.append(message)


def chunk(i: int) -> bytes:
    delta = b'"choices":[{"index":0,"delta":{"content":" w%d"},"finish_reason":null}]' % i
    return b'{"id":"w","object":"chat.completion.chunk","created":1,"model":"m",' + delta + b"}"


async def sse_call(setup: Setup) -> tuple[Call, Stream, FakePeer]:
    peer = FakePeer()
    stream = Stream(cast(Peer, peer), 1)
    request = parse_request("chat", b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}')
    call = Call("chat", request, stream, 5.0, 10.0, setup.call, Receipts())
    return call, stream, peer


async def next_write(events: AsyncIterator[bytes]) -> bytes:
    return await asyncio.wait_for(events.__anext__(), 5)


def contents(write: bytes) -> list[str]:
    import json

    out = []
    for event in write.split(b"\n\n"):
        if event.startswith(b"data: {"):
            body = json.loads(event[6:])
            out.append(body["choices"][0]["delta"]["content"] if body.get("choices") else body)
        elif event:
            out.append(event.decode())
    return out


async def test_chunks_that_arrived_together_leave_in_one_write_in_order() -> None:
    setup = Setup(max_tokens=None)
    call, stream, _ = await sse_call(setup)

    def put(payload: bytes) -> None:
        stream.queue.put_nowait(Data(stream_id=1, payload=payload))

    for i in range(3):
        put(setup.sealer.seal(chunk(i)))
    events = call.events(await call.first())
    assert contents(await next_write(events)) == [" w0", " w1", " w2"]
    put(setup.sealer.seal(chunk(3)))  # one at a time: no waiting for company
    assert contents(await next_write(events)) == [" w3"]
    receipt = setup.receipt(completion=4)
    put(setup.sealer.seal(chunk(4)))
    put(setup.sealer.seal(receipt, final=True))
    stream.queue.put_nowait(
        End(stream_id=1, usage=Usage(prompt_tokens=20, completion_tokens=4), finish_reason="stop", receipt=receipt)
    )
    assert contents(await next_write(events)) == [" w4", "data: [DONE]"]
    with pytest.raises(StopAsyncIteration):
        await next_write(events)


async def test_a_tampered_chunk_among_good_ones_ends_the_stream_after_them() -> None:
    setup = Setup(max_tokens=None)
    call, stream, peer = await sse_call(setup)
    good = [setup.sealer.seal(chunk(i)) for i in range(2)]
    bad = bytearray(setup.sealer.seal(chunk(2)))
    bad[-1] ^= 1
    for payload in [*good, bytes(bad), setup.sealer.seal(chunk(3))]:
        stream.queue.put_nowait(Data(stream_id=1, payload=payload))
    events = call.events(await call.first())
    write = await next_write(events)
    *opened, error = contents(write)
    assert opened == [" w0", " w1"]  # the good chunks before it, then the error, nothing after
    assert isinstance(error, dict) and "not intact" in error["error"]["message"]
    assert any(isinstance(m, Cancel) for m in peer.sent)  # the worker is told to stop
    with pytest.raises(StopAsyncIteration):
        await next_write(events)


PAY_TERMS = PayTerms(stream_id=1, root=b"r" * 32, proxy_wallet=b"w" * 32, close_delay=1, channel=b"c" * 32,
                     min_stake=1, exists=True, balance=1, stake=1, redeemed=0, charged=0, paid=0)  # fmt: skip


@pytest.mark.parametrize(
    "answer",
    [ModelList(stream_id=1, models=[]), WorkerList(stream_id=1, workers=[]), PAY_TERMS],
    ids=lambda m: type(m).__name__,
)
async def test_a_message_that_answers_no_request_is_the_proxys_protocol_error(answer: Message) -> None:
    """Only chunks, an end or an error answer a request: anything else on its stream (which the
    connection lets a responder send) must not reach the caller as its first answer."""
    call, stream, _ = await sse_call(Setup(max_tokens=None))
    stream.queue.put_nowait(answer)
    with pytest.raises(UpstreamError) as caught:
        await call.first()
    assert caught.value.code == ErrorCode.PROTOCOL_ERROR and type(answer).__name__ in str(caught.value)
    call, stream, _ = await sse_call(setup := Setup(max_tokens=None))
    stream.queue.put_nowait(Data(stream_id=1, payload=setup.sealer.seal(chunk(0))))
    stream.queue.put_nowait(answer)
    events = call.events(await call.first())  # and after the first chunk: an error event ends the stream
    *opened, error = contents(await next_write(events))
    assert opened == [" w0"] and isinstance(error, dict) and error["error"]["code"] == "protocol_error"


async def test_the_calls_deferred_work_runs_once_the_first_event_is_written() -> None:
    setup = Setup(max_tokens=None)
    call, stream, _ = await sse_call(setup)
    ran: list[int] = []
    call.after_first_answer = lambda: ran.append(len(ran))
    for i in range(2):
        stream.queue.put_nowait(Data(stream_id=1, payload=setup.sealer.seal(chunk(i))))
    events = call.events(await call.first())
    assert contents(await next_write(events)) == [" w0", " w1"]
    assert ran == []  # the first event is with the server, not yet written
    stream.queue.put_nowait(Data(stream_id=1, payload=setup.sealer.seal(chunk(2))))
    assert contents(await next_write(events)) == [" w2"]
    assert ran == [0]  # after the first write, once
    await events.aclose()
    assert ran == [0]


async def test_a_non_streamed_calls_deferred_work_runs_at_once() -> None:
    setup = Setup(max_tokens=None)
    call, stream, _ = await sse_call(setup)
    ran: list[str] = []
    call.after_first_answer = lambda: ran.append("ran")
    stream.queue.put_nowait(Data(stream_id=1, payload=setup.sealer.seal(chunk(0))))
    first = await call.first()
    answer = asyncio.ensure_future(call.response(first))
    await asyncio.sleep(0)  # the caller gets nothing before the whole answer: no reason to wait
    assert ran == ["ran"]
    answer.cancel()


@pytest.mark.parametrize("streamed", [True, False])
async def test_only_a_streamed_answer_is_given_up_after_idle_timeout_of_silence(streamed: bool) -> None:
    """A whole answer comes as one message once it is made: waiting for it is silence by nature,
    which only the request's deadline bounds (the proxy waits as long), not ``idle_timeout``."""
    setup = Setup(max_tokens=None)
    peer = FakePeer()
    stream = Stream(cast(Peer, peer), 1)
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": %s}' % (
        b"true" if streamed else b"false"
    )
    call = Call("chat", parse_request("chat", body), stream, 0.05, 0.4, setup.call, Receipts())
    started = asyncio.get_running_loop().time()
    with pytest.raises(UpstreamError) as caught:
        await call.first()
    waited = asyncio.get_running_loop().time() - started
    assert caught.value.code == ErrorCode.TIMEOUT
    assert (waited < 0.3) if streamed else (waited >= 0.35)
    assert ("no answer from the network" if streamed else "took too long") in str(caught.value)


# --- the client pushing events from the read loop ----------------------------------------------


class PushedWrites:
    """The HTTP response's writes a call pushes (``Call.push_events``); while ``gate`` is
    closed a write waits, as for a caller whose socket is backed up."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def write(self, body: bytes) -> None:
        if not self.gate.is_set():
            await self.gate.wait()
        self.bodies.append(body)

    @property
    def contents(self) -> list[str | dict[str, Any]]:
        return [c for body in self.bodies for c in contents(body)]


def arrive(stream: Stream, message: Message) -> None:
    """``message`` as the connection's read loop hands it on (``Peer._dispatch``)."""
    peer = cast(Peer, stream.peer)
    Peer._dispatch(peer, message, cast(PeerHandler, None))


async def pushing_call(
    setup: Setup, idle_timeout: float = 5.0
) -> tuple[Call, Stream, FakePeer, AsyncIterator[bytes], PushedWrites]:
    call, stream, peer = await sse_call(setup)
    call.idle_timeout = idle_timeout
    peer._streams[1] = stream
    stream.queue.put_nowait(Data(stream_id=1, payload=setup.sealer.seal(chunk(0))))
    events = call.events(await call.first())
    assert contents(await next_write(events)) == [" w0"]  # the first event, written by the task
    writes = PushedWrites()
    call.push_events(writes.write)
    return call, stream, peer, events, writes


async def waiting(events: AsyncIterator[bytes]) -> asyncio.Task[bytes]:
    """The request's task, waiting for its next message (the end) once this returns."""
    task = asyncio.create_task(next_write(events))
    for _ in range(10):
        await asyncio.sleep(0)
    return task


async def end(setup: Setup, stream: Stream, completion: int) -> None:
    receipt = setup.receipt(completion=completion)
    arrive(stream, Data(stream_id=1, payload=setup.sealer.seal(receipt, final=True)))
    arrive(
        stream,
        End(
            stream_id=1,
            usage=Usage(prompt_tokens=20, completion_tokens=completion),
            finish_reason="stop",
            receipt=receipt,
        ),
    )


async def test_pushed_chunks_are_written_from_the_read_loop_in_order() -> None:
    setup = Setup(max_tokens=None)
    _call, stream, _, events, writes = await pushing_call(setup)
    rest = await waiting(events)
    for i in range(1, 4):
        arrive(stream, Data(stream_id=1, payload=setup.sealer.seal(chunk(i))))
        assert writes.contents == [f" w{j}" for j in range(1, i + 1)]  # written in the same call
    assert stream.queue.empty() and not rest.done()
    await end(setup, stream, 4)
    assert contents(await rest) == ["data: [DONE]"]


async def test_a_pushed_write_that_waits_for_the_caller_keeps_the_order() -> None:
    setup = Setup(max_tokens=None)
    _call, stream, _, events, writes = await pushing_call(setup)
    rest = await waiting(events)
    writes.gate.clear()  # the caller reads nothing for now
    arrive(stream, Data(stream_id=1, payload=setup.sealer.seal(chunk(1))))
    arrive(stream, Data(stream_id=1, payload=setup.sealer.seal(chunk(2))))  # queued behind it
    await asyncio.sleep(0.05)
    assert writes.bodies == [] and not rest.done()
    writes.gate.set()
    assert contents(await rest) == [" w2"]  # the task writes the next, once the first is out
    assert writes.contents == [" w1"]
    rest = await waiting(events)
    arrive(stream, Data(stream_id=1, payload=setup.sealer.seal(chunk(3))))  # pushed again
    assert writes.contents == [" w1", " w3"]


async def test_an_invalid_pushed_chunk_ends_the_stream_with_an_error() -> None:
    setup = Setup(max_tokens=None)
    _call, stream, peer, events, writes = await pushing_call(setup)
    rest = await waiting(events)
    arrive(stream, Data(stream_id=1, payload=setup.sealer.seal(chunk(1))))
    arrive(stream, Data(stream_id=1, payload=setup.sealer.seal(b"[1, 2]")))  # opens, but is no chunk
    arrive(stream, Data(stream_id=1, payload=setup.sealer.seal(chunk(3))))
    (error,) = contents(await rest)
    assert isinstance(error, dict) and error["error"]["code"] == ErrorCode.PROTOCOL_ERROR
    assert writes.contents == [" w1"]  # nothing after it
    with pytest.raises(StopAsyncIteration):
        await next_write(events)
    assert any(isinstance(m, Cancel) for m in peer.sent)  # the worker is told to stop


async def test_a_tampered_pushed_chunk_fails_the_request_as_without_pushing() -> None:
    setup = Setup(max_tokens=None)
    _call, stream, peer, events, writes = await pushing_call(setup)
    rest = await waiting(events)
    bad = bytearray(setup.sealer.seal(chunk(1)))
    bad[-1] ^= 1
    arrive(stream, Data(stream_id=1, payload=bytes(bad)))
    (error,) = contents(await rest)
    assert isinstance(error, dict) and "not intact" in error["error"]["message"]
    assert writes.bodies == [] and any(isinstance(m, Cancel) for m in peer.sent)


async def test_pushed_chunks_keep_a_long_stream_from_timing_out() -> None:
    """The task waits for the end while every chunk goes past it: the silence it times out on
    is the network's, not its own."""
    setup = Setup(max_tokens=None)
    _call, stream, _, events, writes = await pushing_call(setup, idle_timeout=0.2)
    rest = await waiting(events)
    for i in range(1, 8):  # 0.5 s of answer: more than twice the idle timeout
        await asyncio.sleep(0.07)
        arrive(stream, Data(stream_id=1, payload=setup.sealer.seal(chunk(i))))
    await end(setup, stream, 8)
    assert contents(await rest) == ["data: [DONE]"]
    assert len(writes.contents) == 7
    _call2, _stream2, _, events2, _ = await pushing_call(Setup(max_tokens=None), idle_timeout=0.2)
    (error,) = contents(await next_write(events2))  # silence is still silence
    assert isinstance(error, dict) and error["error"]["code"] == ErrorCode.TIMEOUT


async def test_a_chunk_that_arrives_while_the_task_is_busy_waits_for_it() -> None:
    setup = Setup(max_tokens=None)
    _call, stream, _, events, writes = await pushing_call(setup)  # its task holds a write back
    arrive(stream, Data(stream_id=1, payload=setup.sealer.seal(chunk(1))))
    assert writes.bodies == [] and not stream.queue.empty()  # not pushed past it
    assert contents(await next_write(events)) == [" w1"]


async def test_a_timeout_waits_for_the_pushed_write_before_its_error() -> None:
    setup = Setup(max_tokens=None)
    _call, stream, _, events, writes = await pushing_call(setup, idle_timeout=0.2)
    rest = await waiting(events)
    writes.gate.clear()  # the caller reads nothing for a while
    arrive(stream, Data(stream_id=1, payload=setup.sealer.seal(chunk(1))))
    asyncio.get_running_loop().call_later(0.5, writes.gate.set)
    (error,) = contents(await rest)  # silence for the idle timeout: an error, after the chunk
    assert writes.contents == [" w1"]
    assert isinstance(error, dict) and error["error"]["code"] == ErrorCode.TIMEOUT


async def test_a_pushed_write_that_fails_at_once_fails_the_stream_in_order() -> None:
    setup = Setup(max_tokens=None)
    call, stream, _, events, _ = await pushing_call(setup)

    async def broken(body: bytes) -> None:
        raise ConnectionResetError("the caller's socket")

    call.push_events(broken)
    rest = await waiting(events)
    arrive(stream, Data(stream_id=1, payload=setup.sealer.seal(chunk(1))))
    arrive(stream, Data(stream_id=1, payload=setup.sealer.seal(chunk(2))))  # behind it
    with pytest.raises(ConnectionResetError):
        await rest  # the write's own error, not a chunk "replayed" by opening it twice
