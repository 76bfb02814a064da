"""The worker seals the answer chunks its engine had ready together as one answer chunk (JSON
objects separated by newlines), within bounds, and never holds a chunk back for a later one:
pulled from an engine's iterator, or pushed by an engine as it makes them."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cocoon.attest.node import NodeAttestation
from cocoon.channel.peer import Peer
from cocoon.config import WorkerSettings
from cocoon.engine.base import (
    Chunk,
    ChunkSink,
    EngineError,
    EngineEvent,
    EngineRefused,
    EngineRequest,
    Finished,
    ProgressCallback,
    PushingEngine,
)
from cocoon.keys import public_bytes
from cocoon.protocol.errors import ErrorCode
from cocoon.protocol.messages import Data, End, Error, Message, Open, Usage
from cocoon.seal.hpke import RecipientKey
from cocoon.seal.request import seal_request
from cocoon.seal.response import ChunkOpener
from cocoon.worker.service import MAX_COALESCED_BYTES, MAX_COALESCED_CHUNKS, Worker

BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}'


class FakeAttestation:
    def __init__(self) -> None:
        self.hpke_recipient = RecipientKey(X25519PrivateKey.generate())
        self.model_hash = b"\x01" * 32


class FakePeer:
    """Records what the worker sends, as a connection would see it."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.open = True  # False: the stream was cancelled (what is sent is dropped)
        self.backed_up = False
        self.flushed = 0

    def send_nowait(self, message: Message) -> bool:
        if not self.open:
            return False
        self.sent.append(message)
        return True

    def nudge(self) -> None:
        pass

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    async def flush(self) -> None:
        self.flushed += 1


class ScriptedEngine:
    """Yields ``(payload, more)`` chunks; ``None`` in the script waits for ``gate``; an
    exception in it is raised there."""

    name = "scripted"
    max_tokens = 1000

    def __init__(self, script: list[tuple[dict[str, Any], bool] | Exception | None]) -> None:
        self.script = script
        self.gate = asyncio.Event()

    async def start(self, progress: ProgressCallback | None = None) -> None:
        pass

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineEvent]:
        count = 0
        for step in self.script:
            if step is None:
                await self.gate.wait()
            elif isinstance(step, Exception):
                raise step
            else:
                count += 1
                yield Chunk(step[0], more=step[1])
        yield Finished(usage=Usage(prompt_tokens=1, completion_tokens=count), finish_reason="stop")

    async def aclose(self) -> None:
        pass


def chunk(i: int) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": f" t{i}\n"}}]}


class PushingScriptedEngine(ScriptedEngine):
    """Pushes its script's runs: each item a list of chunks made together (``None`` waits for
    ``gate``; an exception is raised there). ``accepted`` records what each push returned."""

    def __init__(self, script: list[list[dict[str, Any]] | Exception | None]) -> None:  # type: ignore[override]
        super().__init__([])
        self.pushes = script
        self.accepted: list[bool] = []

    async def stream_into(self, request: EngineRequest, sink: ChunkSink) -> Finished:
        count = 0
        for step in self.pushes:
            if step is None:
                await self.gate.wait()
            elif isinstance(step, Exception):
                raise step
            else:
                count += len(step)
                self.accepted.append(sink.send([msgspec.json.encode(c) for c in step]))
                if not self.accepted[-1]:
                    break
        return Finished(usage=Usage(prompt_tokens=1, completion_tokens=count), finish_reason="stop")


def setup(engine: ScriptedEngine, *, stream: bool = True) -> tuple[Worker, FakePeer, Open, Callable[[], ChunkOpener]]:
    attestation = FakeAttestation()
    key = Ed25519PrivateKey.generate()
    worker = Worker(WorkerSettings(), engine, key, cast(NodeAttestation, attestation))
    request_id = os.urandom(16)
    public = attestation.hpke_recipient.public
    body = BODY if stream else BODY.replace(b"true", b"false")
    sealed, secrets = seal_request(
        body, kind="chat", request_id=request_id, content_key=os.urandom(32), recipients=[(public_bytes(key), public)]
    )
    message = Open(stream_id=2, model="m", kind="chat", stream=stream, max_tokens=0, body=sealed, request_id=request_id)
    secret = secrets[public_bytes(key)]
    return worker, FakePeer(), message, lambda: ChunkOpener(secret, request_id)


def answer_chunks(peer: FakePeer, opener: ChunkOpener) -> list[list[dict[str, Any]]]:
    """The chunks of each sealed answer chunk, in order (the final one, the receipt, left out)."""
    out = []
    for message in peer.sent:
        if isinstance(message, Data):
            payload, final = opener.open(message.payload)
            if not final:
                out.append([msgspec.json.decode(line) for line in payload.split(b"\n")])
    return out


async def test_chunks_that_were_ready_together_are_sealed_together() -> None:
    script: list[tuple[dict[str, Any], bool] | Exception | None] = [
        (chunk(0), True), (chunk(1), True), (chunk(2), False), (chunk(3), False), (chunk(4), False),
    ]  # fmt: skip
    worker, peer, message, opener = setup(ScriptedEngine(script))
    await worker._serve(cast(Peer, peer), message)
    receiving = opener()
    assert answer_chunks(peer, receiving) == [[chunk(0), chunk(1), chunk(2)], [chunk(3)], [chunk(4)]]
    assert isinstance(peer.sent[-1], End) and peer.sent[-1].usage.completion_tokens == 5
    receiving.finish()  # the receipt came as the final chunk


@pytest.mark.parametrize("pushing", [False, True], ids=["pulled", "pushed"])
async def test_a_chunk_that_is_ready_alone_is_not_held_back(pushing: bool) -> None:
    engine = (
        PushingScriptedEngine([[chunk(0)], None, [chunk(1)]])
        if pushing
        else ScriptedEngine([(chunk(0), False), None, (chunk(1), False)])
    )
    worker, peer, message, opener = setup(engine)
    task = asyncio.create_task(worker._serve(cast(Peer, peer), message))
    for _ in range(20):
        await asyncio.sleep(0)
    # the engine waits for its next token: the first one is on its way already
    assert answer_chunks(peer, opener()) == [[chunk(0)]]
    engine.gate.set()
    await task
    assert answer_chunks(peer, opener()) == [[chunk(0)], [chunk(1)]]
    assert isinstance(peer.sent[-1], End)


async def test_coalescing_is_bounded() -> None:
    total = MAX_COALESCED_CHUNKS * 2 + 5
    worker, peer, message, opener = setup(ScriptedEngine([(chunk(i), True) for i in range(total)]))
    await worker._serve(cast(Peer, peer), message)
    sizes = [len(group) for group in answer_chunks(peer, opener())]
    assert sizes == [MAX_COALESCED_CHUNKS, MAX_COALESCED_CHUNKS, 5]


async def test_ready_chunks_go_out_before_an_engine_error() -> None:
    script: list[tuple[dict[str, Any], bool] | Exception | None] = [
        (chunk(0), True), (chunk(1), True), EngineError("out of memory"),
    ]  # fmt: skip
    worker, peer, message, opener = setup(ScriptedEngine(script))
    await worker._serve(cast(Peer, peer), message)
    assert answer_chunks(peer, opener()) == [[chunk(0), chunk(1)]]
    assert isinstance(peer.sent[-1], Error) and peer.sent[-1].code == ErrorCode.ENGINE_ERROR


async def test_an_unexpected_failure_ends_the_request_with_an_error_at_once() -> None:
    """Not only the engine's own errors: anything that goes wrong fails the request there and
    then, with what was ready sent first, instead of leaving the proxy to wait out its timeout."""
    worker, peer, message, opener = setup(ScriptedEngine([(chunk(0), False), KeyError("secret prompt")]))
    await worker._serve(cast(Peer, peer), message)
    assert answer_chunks(peer, opener()) == [[chunk(0)]]
    error = peer.sent[-1]
    assert isinstance(error, Error) and error.code == ErrorCode.INTERNAL and "secret" not in error.message


async def test_a_request_the_engine_refuses_is_the_requests_fault() -> None:
    """A prompt longer than the context window, a parameter the engine cannot honour: a
    ``bad_request`` (the proxy neither tries other workers with it nor counts it against this
    one), not an ``engine_error``."""
    script: list[tuple[dict[str, Any], bool] | Exception | None] = [EngineRefused("the prompt does not fit")]
    worker, peer, message, _ = setup(ScriptedEngine(script))
    await worker._serve(cast(Peer, peer), message)
    error = peer.sent[-1]
    assert isinstance(error, Error) and (error.code, error.message) == (
        ErrorCode.BAD_REQUEST,
        "the prompt does not fit",
    )


# --- engines that push their chunks ------------------------------------------------------------


async def test_chunks_pushed_together_are_sealed_together() -> None:
    engine = PushingScriptedEngine([[chunk(0), chunk(1), chunk(2)], [chunk(3)], [chunk(4)]])
    assert isinstance(engine, PushingEngine)
    worker, peer, message, opener = setup(engine)
    await worker._serve(cast(Peer, peer), message)
    receiving = opener()
    assert answer_chunks(peer, receiving) == [[chunk(0), chunk(1), chunk(2)], [chunk(3)], [chunk(4)]]
    assert isinstance(peer.sent[-1], End) and peer.sent[-1].usage.completion_tokens == 5
    assert engine.accepted == [True, True, True]
    assert peer.flushed  # the backlog is waited for before the end (a proxy that reads nothing is found dead)
    receiving.finish()


async def test_a_large_push_is_split_within_the_bounds() -> None:
    total = MAX_COALESCED_CHUNKS * 2 + 5
    worker, peer, message, opener = setup(PushingScriptedEngine([[chunk(i) for i in range(total)]]))
    await worker._serve(cast(Peer, peer), message)
    assert [len(group) for group in answer_chunks(peer, opener())] == [MAX_COALESCED_CHUNKS, MAX_COALESCED_CHUNKS, 5]
    big = {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "y" * 6000}}]}
    worker, peer, message, opener = setup(PushingScriptedEngine([[big] * 5]))
    await worker._serve(cast(Peer, peer), message)
    groups = answer_chunks(peer, opener())
    assert [len(group) for group in groups] == [3, 2]  # a run closes once it reaches the byte bound
    assert MAX_COALESCED_BYTES < 3 * 6100


async def test_a_push_to_a_stream_that_is_gone_is_refused_and_nothing_follows() -> None:
    engine = PushingScriptedEngine([[chunk(0)], None, [chunk(1)], [chunk(2)]])
    worker, peer, message, _ = setup(engine)
    task = asyncio.create_task(worker._serve(cast(Peer, peer), message))
    for _ in range(20):
        await asyncio.sleep(0)
    peer.open = False  # cancelled by the proxy meanwhile
    engine.gate.set()
    await task
    assert engine.accepted == [True, False]  # told at once: it made nothing more
    assert not any(isinstance(m, (End, Error)) for m in peer.sent)


async def test_a_pushing_engines_error_fails_the_request_after_what_it_pushed() -> None:
    engine = PushingScriptedEngine([[chunk(0), chunk(1)], EngineError("out of memory")])
    worker, peer, message, opener = setup(engine)
    await worker._serve(cast(Peer, peer), message)
    assert answer_chunks(peer, opener()) == [[chunk(0), chunk(1)]]
    assert isinstance(peer.sent[-1], Error) and peer.sent[-1].code == ErrorCode.ENGINE_ERROR


async def test_a_whole_answer_is_still_pulled_from_a_pushing_engine() -> None:
    """Pushing is for streamed answers: a whole answer is one chunk, taken from ``generate``."""
    engine = PushingScriptedEngine([[chunk(9)]])
    engine.script = [(chunk(0), False)]
    worker, peer, message, opener = setup(engine, stream=False)
    await worker._serve(cast(Peer, peer), message)
    assert answer_chunks(peer, opener()) == [[chunk(0)]]
    assert engine.accepted == []


async def test_a_backlog_under_a_pushing_engine_is_waited_on_while_it_streams() -> None:
    """A pulled answer waits for the backlog after every chunk (where a proxy that takes nothing
    is found dead); a pushed one has that wait started as soon as the backlog builds up."""
    engine = PushingScriptedEngine([[chunk(0)], None, [chunk(1)]])
    worker, peer, message, _ = setup(engine)
    peer.backed_up = True
    task = asyncio.create_task(worker._serve(cast(Peer, peer), message))
    for _ in range(20):
        await asyncio.sleep(0)
    assert peer.flushed == 1  # while the engine still makes the answer
    engine.gate.set()
    await task
    assert isinstance(peer.sent[-1], End)
