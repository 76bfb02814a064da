"""The proxy's relay against misbehaving workers: real connections on loopback between the proxy
and worker doubles whose answers each test scripts, and a client connection double."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.attest.node import NodeAttestation
from cocoon.channel.peer import Peer
from cocoon.channel.verify import PeerIdentity, PeerVerifier
from cocoon.config import ProxySettings
from cocoon.keys import public_bytes
from cocoon.protocol.errors import ErrorCode
from cocoon.protocol.messages import (
    Announce,
    Cancel,
    Data,
    End,
    Error,
    Goodbye,
    Open,
    StreamRequest,
    Usage,
    Voucher,
)
from cocoon.proxy.service import Proxy
from cocoon.seal.request import sealed_hash
from cocoon.seal.usage import UsageRecord, sign_usage
from tests.unit.test_peer_relay import open_connections

MODEL = "m"
Answer = Callable[[Peer, Open], Awaitable[None]]


class ClientConnectionDouble:
    """Test double of a client's connection to the proxy: keeps what the proxy sends on it."""

    def __init__(self) -> None:
        self.identity = PeerIdentity("client", b"c" * 32)
        self.closed = False
        self.close_reason = ""
        self.backed_up = False
        self.sent: list[Any] = []

    def send_nowait(self, message: Any) -> bool:
        self.sent.append(message)
        return True

    async def send(self, message: Any) -> None:
        self.sent.append(message)

    async def flush(self) -> None:
        pass

    def errors(self) -> list[Error]:
        return [m for m in self.sent if isinstance(m, Error)]


class WorkerDouble:
    """Test double of a worker's side of its connection: answers each request with ``answer``
    (a script of the test), and keeps the cancels it gets."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.opened: list[Open] = []
        self.cancelled: list[int] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def stream_opened(self, peer: Peer, message: StreamRequest) -> None:
        assert isinstance(message, Open)
        self.opened.append(message)
        task = asyncio.create_task(self.answer(peer, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stream_cancelled(self, peer: Peer, message: Cancel) -> None:
        self.cancelled.append(message.stream_id)

    def connection_message(self, peer: Peer, message: Announce | Goodbye | Voucher) -> None:
        pass


class Relay:
    """A proxy (not listening: its worker connections are made here) with worker doubles."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.workers: list[WorkerDouble] = []
        self.keys: list[bytes] = []
        self.worker_sides: list[Peer] = []  # each worker double's end of its connection
        self._servers: list[asyncio.Server] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def add_worker(self, answer: Answer, *, reads: bool = True, key: bytes = b"") -> bytes:
        """Connect a worker double; with ``reads`` False it never reads its socket (its side of
        the connection backs up as soon as the proxy writes more than the socket buffers hold);
        with ``key``, as a further connection of that worker."""
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = loop.create_future()
        server = await asyncio.start_server(lambda r, w: accepted.set_result((r, w)), "127.0.0.1", 0)
        self._servers.append(server)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        proxy_reader, proxy_writer = await accepted
        if not reads:  # small socket buffers, so that a request body does not fit in them
            for w, option in ((proxy_writer, socket.SO_SNDBUF), (writer, socket.SO_RCVBUF)):
                w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, option, 4096)
        worker_conn, proxy_conn = open_connections(loop.time())  # the worker dialed the proxy
        key = key or bytes([len(self.keys) + 1]) * 32
        worker_side = Peer(reader, writer, worker_conn, PeerIdentity("proxy", b"p" * 32))
        label = f"w{len(self.keys)}"
        proxy_side = Peer(proxy_reader, proxy_writer, proxy_conn, PeerIdentity("worker", key), label=label)
        double = WorkerDouble(answer)
        if reads:
            self._tasks.append(asyncio.create_task(worker_side.serve(double)))
        self._tasks.append(asyncio.create_task(self.proxy._serve_worker(proxy_side)))
        await asyncio.sleep(0)  # _serve_worker registers the connection
        offer = Announce(model=MODEL, engine="e", capacity=4)
        self.proxy.router.announce(id(proxy_side), label, offer, key.hex())
        self.workers.append(double)
        if key not in self.keys:
            self.keys.append(key)
        self.worker_sides.append(worker_side)
        return key

    def request(self, *, stream: bool = True, body: bytes = b"sealed") -> Open:
        return Open(
            stream_id=1,
            model=MODEL,
            kind="chat",
            stream=stream,
            max_tokens=0,
            body=body,
            request_id=b"r" * 16,
            candidates=list(self.keys),
        )

    async def relay(self, request: Open, within: float = 10.0) -> ClientConnectionDouble:
        """Relay ``request`` as the proxy does for a client; what the client got."""
        client = ClientConnectionDouble()
        async with asyncio.timeout(within):
            await self.proxy._relay(cast(Peer, client), request)
        return client

    def standing(self, key: bytes) -> tuple[int, int]:
        stats = self.proxy.reputation.stats(key.hex())
        return stats.errors, stats.timeouts

    async def aclose(self) -> None:
        for peer in [*self.worker_sides, *self.proxy.worker_peers.values()]:
            await peer.aclose()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            server.close()


@contextlib.asynccontextmanager
async def relay(tmp_path: Path, **settings: Any) -> AsyncIterator[Relay]:
    options = {"queue_timeout": 0.0, "reputation_file": str(tmp_path / "reputation.json"), **settings}
    proxy = Proxy(
        ProxySettings(**options),
        Ed25519PrivateKey.generate(),
        cast(NodeAttestation, None),  # workers are connected here, not attested
        verifier=cast(PeerVerifier, object()),  # nobody dials in
    )
    network = Relay(proxy)
    try:
        yield network
    finally:
        await network.aclose()


def answer_with(*messages: Callable[[int], Any]) -> Answer:
    """A worker double's script: send these messages (made for the stream id) in turn."""

    async def answer(peer: Peer, request: Open) -> None:
        for make in messages:
            await peer.send(make(request.stream_id))

    return answer


def chunk(sid: int) -> Data:
    return Data(stream_id=sid, payload=b"sealed chunk")


def unknown_code(sid: int) -> Error:
    return Error(stream_id=sid, code="from_a_newer_worker", message="something new")


def payment_required(sid: int) -> Error:
    return Error(stream_id=sid, code=ErrorCode.PAYMENT_REQUIRED, message="pay me")


# --- error codes a worker may not send -------------------------------------------------------------


async def test_an_unknown_code_before_the_first_chunk_counts_against_the_worker_and_is_retried(
    tmp_path: Path,
) -> None:
    async with relay(tmp_path) as net:
        odd = await net.add_worker(answer_with(unknown_code))
        client = await net.relay(net.request())
        assert [e.code for e in client.errors()] == [ErrorCode.WORKER_LOST]  # the only candidate failed
        assert net.standing(odd) == (1, 0)
        good = await net.add_worker(answer_with(chunk, lambda sid: Error(stream_id=sid, code=ErrorCode.ENGINE_ERROR)))
        client = await net.relay(net.request())  # whichever the proxy tries first, the good one answers
        assert [e.code for e in client.errors()] == [ErrorCode.ENGINE_ERROR]  # a worker's code: as it is
        assert net.standing(good) == (1, 0)


async def test_an_unknown_code_after_the_first_chunk_reaches_the_client_as_a_protocol_error(tmp_path: Path) -> None:
    async with relay(tmp_path) as net:
        odd = await net.add_worker(answer_with(chunk, unknown_code))
        client = await net.relay(net.request())
        assert [type(m) for m in client.sent] == [Data, Error]
        (error,) = client.errors()
        assert error.code == ErrorCode.PROTOCOL_ERROR
        assert "from_a_newer_worker" in error.message
        assert net.standing(odd) == (1, 0)


async def test_a_code_that_is_not_a_workers_to_say_is_not_relayed(tmp_path: Path) -> None:
    # payment_required from a worker would make the client top up its channel with the proxy
    async with relay(tmp_path) as net:
        liar = await net.add_worker(answer_with(chunk, payment_required))
        client = await net.relay(net.request())
        assert [e.code for e in client.errors()] == [ErrorCode.PROTOCOL_ERROR]
        assert net.standing(liar) == (1, 0)
        net.workers[0].answer = answer_with(payment_required)  # before any chunk: another worker's turn
        client = await net.relay(net.request())
        assert [e.code for e in client.errors()] == [ErrorCode.WORKER_LOST]
        assert net.standing(liar) == (2, 0)


async def test_a_workers_refusal_of_a_replayed_request_does_not_count_against_it(tmp_path: Path) -> None:
    """A worker refuses a request id it has served (a replay) as ``bad_request``: the request's
    fault, not the worker's, so it is relayed as it is, not retried, and the worker keeps its
    standing (an honest proxy never meets it: it sends no request to a worker twice)."""

    def replayed(sid: int) -> Error:
        return Error(stream_id=sid, code=ErrorCode.BAD_REQUEST, message="this request id was already served")

    async with relay(tmp_path) as net:
        first = await net.add_worker(answer_with(replayed))
        second = await net.add_worker(answer_with(replayed))
        client = await net.relay(net.request())
        assert [e.code for e in client.errors()] == [ErrorCode.BAD_REQUEST]
        assert len(net.workers[0].opened) + len(net.workers[1].opened) == 1
        assert net.standing(first) == net.standing(second) == (0, 0)


# --- a request that crosses a worker's goodbye ------------------------------------------------------


def engine_error(sid: int) -> Error:
    return Error(stream_id=sid, code=ErrorCode.ENGINE_ERROR, message="the engine failed")


class NoExploring(random.Random):
    """The proxy's randomness, never exploring: of two workers, the better is chosen."""

    def random(self) -> float:
        return 0.5


async def test_a_request_that_crosses_a_workers_goodbye_goes_to_its_fresh_connection_unblamed(
    tmp_path: Path,
) -> None:
    """A worker renewing by itself says goodbye on its old connection a second after the fresh one
    announced; a request the proxy sent there before it read the goodbye is refused as
    ``shutting_down``: it goes to the fresh connection (the same worker), and counts against
    nobody."""
    async with relay(tmp_path) as net:
        net.proxy._rng = NoExploring()
        worker = await net.add_worker(answer_with(chunk, engine_error))
        await net.add_worker(answer_with(chunk, engine_error), key=worker)
        old, fresh = net.proxy.router.workers.values()
        for _ in range(2):  # the old connection is the less loaded: the request goes there first
            net.proxy.router.acquire(fresh)
        net.worker_sides[0].send_nowait(Goodbye(reason="renewed"))
        client = await net.relay(net.request())  # sent before the proxy reads the goodbye
        assert net.workers[0].opened == []  # refused by the old connection, untouched
        assert len(net.workers[1].opened) == 1
        assert [type(m) for m in client.sent] == [Data, Error]  # the fresh connection's answer
        assert net.standing(worker) == (1, 0)  # its engine error; the refusal counted for nothing
        assert old.draining


async def test_shutting_down_from_a_worker_that_said_no_goodbye_counts_against_it(tmp_path: Path) -> None:
    async with relay(tmp_path) as net:
        odd = await net.add_worker(answer_with(lambda sid: Error(stream_id=sid, code=ErrorCode.SHUTTING_DOWN)))
        client = await net.relay(net.request())
        assert [e.code for e in client.errors()] == [ErrorCode.WORKER_LOST]
        assert net.standing(odd) == (1, 0)


# --- workers that take a request and never answer ----------------------------------------------


async def silent(peer: Peer, request: Open) -> None:
    """A worker double's script: take the request, never answer (it stays connected and pings)."""


async def test_a_worker_that_never_answers_a_stream_times_out_at_the_first_token_timeout(tmp_path: Path) -> None:
    async with relay(tmp_path, first_token_timeout=0.3) as net:
        mute = await net.add_worker(silent)
        started = asyncio.get_running_loop().time()
        client = await net.relay(net.request(stream=True))
        assert asyncio.get_running_loop().time() - started < 3.0
        assert [e.code for e in client.errors()] == [ErrorCode.TIMEOUT]  # the only candidate timed out
        assert net.standing(mute) == (0, 1)
        async with asyncio.timeout(5):
            while not net.workers[0].cancelled:  # the worker is told to stop
                await asyncio.sleep(0.01)


async def test_a_worker_that_never_answers_a_whole_answer_times_out_at_the_request_timeout(tmp_path: Path) -> None:
    async with relay(tmp_path, first_token_timeout=60.0, request_timeout=0.5) as net:
        mute = await net.add_worker(silent)
        client = await net.relay(net.request(stream=False))
        assert [e.code for e in client.errors()] == [ErrorCode.TIMEOUT]
        assert net.standing(mute) == (0, 1)


async def test_a_worker_that_stops_reading_cannot_hold_a_request_past_the_first_token_timeout(
    tmp_path: Path,
) -> None:
    # It still counts as alive (a write backlog is dead only after dead_after, 15 s here, and not
    # at all while it takes a trickle): the request's own limit is what ends the wait.
    async with relay(tmp_path, first_token_timeout=0.3) as net:
        stuck = await net.add_worker(silent, reads=False)
        (connection,) = net.proxy.worker_peers.values()
        started = asyncio.get_running_loop().time()
        client = await net.relay(net.request(body=b"x" * (1 << 20)), within=5.0)
        assert asyncio.get_running_loop().time() - started < 3.0
        assert connection.backed_up  # the request is still on its way, and the worker not dropped
        assert [e.code for e in client.errors()] == [ErrorCode.TIMEOUT]
        assert net.standing(stuck) == (0, 1)
        assert connection.open_streams == 0 and not connection._streams  # given up, a cancel queued after it


async def test_a_request_the_proxy_fails_on_gets_an_error_frame_at_once() -> None:
    """A bug, or the books' database failing as an answer is billed, ends the request with an
    ``internal`` error; the client does not wait out its idle timeout for a stream nobody serves."""
    proxy = Proxy.__new__(Proxy)  # only the relay's last resort is exercised

    async def failing(client: Peer, request: Open, channel: bytes | None) -> None:
        raise RuntimeError("database is locked")

    proxy._relay_attempts = failing  # type: ignore[method-assign]
    client = ClientConnectionDouble()
    request = Open(stream_id=7, model="m", kind="chat", stream=True, max_tokens=0, body=b"x")
    await proxy._relay(cast(Peer, client), request)
    (error,) = client.errors()
    assert (error.stream_id, error.code, error.message) == (7, ErrorCode.INTERNAL, "the proxy failed")


async def test_a_cancel_crossing_the_end_does_not_lose_the_workers_success(tmp_path: Path) -> None:
    """The client gives the request up just as its end comes, while the proxy waits for the
    client's socket to take the end: the worker answered in full, and that counts for it."""
    worker_key = Ed25519PrivateKey.generate()
    async with relay(tmp_path) as net:
        request = net.request()  # (its id and body: the worker's record names them)

        def end(sid: int) -> End:
            record = UsageRecord(
                version=1,
                request_id=request.request_id,
                sealed_request_hash=sealed_hash(request.body),
                model_hash=b"",
                worker_key=public_bytes(worker_key),
                prompt_tokens=3,
                cached_tokens=0,
                completion_tokens=1,
                reasoning_tokens=0,
                finish_reason="stop",
                started_ms=1,
                finished_ms=2,
            )
            usage = Usage(prompt_tokens=3, completion_tokens=1)
            return End(stream_id=sid, usage=usage, finish_reason="stop", receipt=sign_usage(record, worker_key))

        key = await net.add_worker(answer_with(chunk, end), key=public_bytes(worker_key))
        request = net.request()  # sealed for that worker
        client = BackedUpClientDouble()
        relaying = asyncio.create_task(net.proxy._relay(cast(Peer, client), request))
        await asyncio.wait_for(client.end_queued.wait(), 5)
        relaying.cancel()  # (the proxy's ``cancel_relay``, as the client's cancel crosses the end)
        await asyncio.gather(relaying, return_exceptions=True)
        assert [type(m) for m in client.sent] == [Data, End]
        assert net.proxy.reputation.stats(key.hex()).successes == 1


class BackedUpClientDouble(ClientConnectionDouble):
    """Test double of a client connection whose socket takes nothing once the end is queued."""

    def __init__(self) -> None:
        super().__init__()
        self.end_queued = asyncio.Event()

    def send_nowait(self, message: Any) -> bool:
        if isinstance(message, End):
            self.end_queued.set()
        return super().send_nowait(message)

    async def send(self, message: Any) -> None:
        self.send_nowait(message)
        await self.flush()

    async def flush(self) -> None:
        if self.end_queued.is_set():
            await asyncio.sleep(3600)
