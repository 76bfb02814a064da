"""Test double: the real worker with a fault-injecting engine wrapped around its real one.

``COCOON_TEST_FAULT`` selects the fault: ``slow:SECONDS`` (sleep that long per token),
``fail_first`` (fail before the first chunk, every time), ``stall`` (send one chunk, then hang),
``full`` (answer every request "at capacity", as a worker kept busy by other proxies does),
``full_first:N`` (so answer the first N requests, then serve: a slot another proxy took first),
``seal_error`` (answer every request that it cannot open it, as for a request sealed for a key
the worker no longer has, or garbage), ``unknown_code`` (send the first chunk, then fail with an
error code no version of the protocol has, as a newer or a broken worker might), ``silent`` (take
every request and never answer it, while the connection stays alive), ``late_announce:SECONDS``
(announce that late on every connection after the first, as a worker whose fresh connection at
an attestation renewal is slow to come up), ``no_sealed_end`` (leave out the sealed copy of the
usage record that closes every answer: the proxy can see nothing wrong, the client refuses the
answer as truncated), ``invalid_chunk`` (send two chunks, then, sealed as they are, a JSON value
that is no chunk object). Several faults join with commas (``slow:0.1,…``).

Streamed answers are pushed into the worker (``stream_into``), as the embedded and synthetic
engines push theirs, so that the faults meet the worker's push path; whole answers are pulled.
Run as ``python -m tests.integration.faulty_worker worker --config …``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import msgspec

import cocoon.run
from cocoon.cli import main
from cocoon.config import WorkerSettings
from cocoon.engine.base import (
    Chunk,
    ChunkSink,
    Engine,
    EngineError,
    EngineEvent,
    EngineRequest,
    Finished,
    ProgressCallback,
)
from cocoon.protocol.messages import Usage

FAULTS = dict(item.partition(":")[::2] for item in os.environ.get("COCOON_TEST_FAULT", "").split(","))
FAULT = next(iter(FAULTS))  # the faults without a value are used one at a time


class FaultyEngine:
    def __init__(self, real: Engine) -> None:
        self.real = real
        self.name = real.name
        self.max_tokens = real.max_tokens

    async def start(self, progress: ProgressCallback | None = None) -> None:
        await self.real.start(progress)

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineEvent]:
        if FAULT == "fail_first":
            raise EngineError("injected failure before the first token")
        chunks = 0
        async for event in self.real.generate(request):
            if isinstance(event, Chunk) and event.more:
                # the delays injected below make "the next chunk is ready already" untrue; left
                # as it is, the worker would hold this chunk for the next (as it may), which stalls
                event = Chunk(event.payload)
            if "slow" in FAULTS and isinstance(event, Chunk):
                # per token: a streamed chunk is one token, a whole answer is all of them
                tokens = 1 if request.stream else int(event.payload.get("usage", {}).get("completion_tokens", 1))
                await asyncio.sleep(float(FAULTS["slow"]) * tokens)
            if FAULT == "stall" and chunks == 1:
                await asyncio.sleep(3600)
            if FAULT == "unknown_code" and chunks == 1:
                raise EngineError("injected failure after the first chunk")  # sent with the code below
            if FAULT == "invalid_chunk" and chunks == 2:
                event = Chunk(["no", "chunk"])  # type: ignore[arg-type]
            chunks += isinstance(event, Chunk)
            yield event

    async def stream_into(self, request: EngineRequest, sink: ChunkSink) -> Finished:
        """``generate``'s answer and faults, each chunk handed to ``sink`` as it comes."""
        events = self.generate(request)
        try:
            async for event in events:
                if isinstance(event, Finished):
                    return event
                if not sink.send([_json.encode(event.payload)]):
                    break  # the stream is gone: nothing more is made for it
            else:
                raise EngineError("the engine ended the answer without its usage")
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        return Finished(usage=Usage(), finish_reason=None)  # (the worker drops it: the stream is gone)

    async def aclose(self) -> None:
        await self.real.aclose()


_json = msgspec.json.Encoder()


real_make_engine = cocoon.run.make_engine


def make_faulty_engine(settings: WorkerSettings) -> Engine:
    return FaultyEngine(real_make_engine(settings))


cocoon.run.make_engine = make_faulty_engine

if FAULT in ("full", "full_first", "seal_error"):
    from cocoon.channel.peer import Peer
    from cocoon.protocol.errors import ErrorCode
    from cocoon.protocol.messages import Error, StreamRequest
    from cocoon.worker.service import Worker

    real_stream_opened = Worker.stream_opened
    refusals = int(FAULTS["full_first"] or 1) if FAULT == "full_first" else 0

    def always_refuse(self: Worker, peer: Peer, message: StreamRequest) -> None:
        global refusals
        if FAULT == "full_first":
            if refusals <= 0:
                real_stream_opened(self, peer, message)
                return
            refusals -= 1
        if FAULT in ("full", "full_first"):
            error = Error(stream_id=message.stream_id, code=ErrorCode.SATURATED, message="worker at capacity")
        else:
            error = Error(stream_id=message.stream_id, code=ErrorCode.SEAL_ERROR, message="cannot open the request")
        peer.send_nowait(error)

    Worker.stream_opened = always_refuse  # type: ignore[method-assign]

if FAULT == "silent":
    from cocoon.channel.peer import Peer
    from cocoon.protocol.messages import StreamRequest
    from cocoon.worker.service import Worker

    def never_answer(self: Worker, peer: Peer, message: StreamRequest) -> None:
        pass

    Worker.stream_opened = never_answer  # type: ignore[method-assign]

if FAULT == "unknown_code":
    from cocoon.channel.peer import Peer
    from cocoon.protocol.errors import ErrorCode
    from cocoon.protocol.messages import Data, End, Error
    from cocoon.worker.service import Worker

    real_send = Worker._send

    async def send_unknown_code(self: Worker, peer: Peer, message: Data | End | Error) -> None:
        if isinstance(message, Error) and message.code == ErrorCode.ENGINE_ERROR:
            message = Error(stream_id=message.stream_id, code="from_a_newer_worker", message="injected")
        await real_send(self, peer, message)

    Worker._send = send_unknown_code  # type: ignore[method-assign]

if FAULT == "no_sealed_end":
    from cocoon.channel.peer import Peer
    from cocoon.protocol.messages import Data, End, Error
    from cocoon.worker.service import Worker

    send_all = Worker._send

    async def send_but_the_sealed_end(self: Worker, peer: Peer, message: Data | End | Error) -> None:
        if not isinstance(message, Data):  # (the answer's chunks go out another way; this Data is the sealed receipt)
            await send_all(self, peer, message)

    Worker._send = send_but_the_sealed_end  # type: ignore[method-assign]

if "late_announce" in FAULTS:
    from cocoon.channel.peer import Peer
    from cocoon.worker.service import Worker

    real_serve_proxy = Worker._serve_proxy
    dialed: set[str] = set()

    async def serve_proxy_announcing_late(self: Worker, address: str, peer: Peer) -> None:
        if address in dialed:
            await asyncio.sleep(float(FAULTS["late_announce"]))
        dialed.add(address)
        await real_serve_proxy(self, address, peer)

    Worker._serve_proxy = serve_proxy_announcing_late  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
