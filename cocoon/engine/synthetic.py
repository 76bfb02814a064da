"""``BenchmarkEngine``: a synthetic engine for benchmarks and load tests, never for users.

It emits pre-tokenized text as fast as asked (``tokens_per_second`` per stream; 0 = as fast as
the event loop runs), so the network's own cost can be measured without a model in the way.
Paced, each token is ready at its time on a fixed grid (tokens whose time passed while the event
loop was busy are ready together); unpaced, ``READY_RUN`` tokens are ready each time a stream
gets the loop. ``Chunk.more`` says so, as a threaded engine's queue would.
Its answers are fixed filler words; its usage counts are exact for what it sends.

A worker takes streamed answers through ``stream_into``: one clock for every stream (one timer,
or one callback a turn of the loop when unpaced) pushes each stream's tokens that are due, as a
batching engine makes one step's tokens for all its streams at once, so that the engine's own
cost per token stays small beside the network's it is there to measure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from cocoon.engine.base import Chunk, ChunkSink, EngineEvent, EngineRequest, Finished, ProgressCallback
from cocoon.engine.llama_cpp import assemble_response
from cocoon.protocol.messages import Usage

WORDS = tuple(f" w{i}" for i in range(64))  # one token each
DEFAULT_ANSWER = 16  # tokens, when the request sets no max_tokens
READY_RUN = 16
"""Unpaced, the engine outpaces any network: each time it gets the event loop it has this many
tokens of a stream ready at once (then lets the other streams run)."""


def _prompt_tokens(request: EngineRequest) -> int:
    """A stable stand-in for tokenizing: one token per four bytes of prompt text."""
    params = request.params
    if request.kind == "chat":
        text = "".join(str(m.get("content") or "") for m in params.get("messages", []) if isinstance(m, dict))
    else:
        prompt = params.get("prompt", "")
        text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
    return max(1, len(text.encode()) // 4)


class BenchmarkEngine:
    name = "benchmark"

    def __init__(self, *, tokens_per_second: float = 0.0, max_tokens: int = 4096) -> None:
        self.tokens_per_second = tokens_per_second
        self.max_tokens = max_tokens
        self._clock: _Clock | None = None
        self._encoded: tuple[str, int, tuple[bytes, ...]] = ("", 0, ())  # the last words encoded, by kind and time

    async def start(self, progress: ProgressCallback | None = None) -> None:
        if progress:
            progress(1, 1, "benchmark engine ready (synthetic answers)")

    def _chunk(self, kind: str, created: int, text: str, finish: str | None) -> dict[str, Any]:
        if kind == "chat":
            delta: dict[str, Any] = {"content": text} if text else {}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            return {"id": "bench", "object": "chat.completion.chunk", "created": created, "model": "bench",
                    "choices": [choice]}  # fmt: skip
        return {"id": "bench", "object": "text_completion", "created": created, "model": "bench",
                "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}  # fmt: skip

    def _count(self, request: EngineRequest) -> int:
        wanted = request.params.get("max_tokens") or request.params.get("max_completion_tokens") or DEFAULT_ANSWER
        return max(1, min(int(wanted), self.max_tokens))

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineEvent]:
        count = self._count(request)
        created = int(time.time())
        interval = 1.0 / self.tokens_per_second if self.tokens_per_second > 0 else 0.0
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        chunks = []
        for i in range(count):
            last = i == count - 1
            if interval:
                next_at += interval
                delay = next_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                # a token is ready once its time has come: those whose time came while this
                # stream waited for the event loop are ready together, as a real engine's are
                more = last or next_at + interval <= loop.time()
            else:
                if i % READY_RUN == 0:
                    await asyncio.sleep(0)  # let other streams run, as a real engine's thread would
                more = last or (i + 1) % READY_RUN != 0
            chunk = self._chunk(request.kind, created, WORDS[i % len(WORDS)], "length" if last else None)
            if request.stream:
                yield Chunk(chunk, more=more)
            else:
                chunks.append(chunk)
        usage = Usage(prompt_tokens=_prompt_tokens(request), completion_tokens=count)
        if not request.stream:
            yield Chunk(assemble_response(request.kind, chunks, usage), more=True)
        yield Finished(usage=usage, finish_reason="length")

    async def stream_into(self, request: EngineRequest, sink: ChunkSink) -> Finished:
        count = self._count(request)
        created = int(time.time())
        kind, when, words = self._encoded
        if (kind, when) != (request.kind, created):  # the same words serve every request of that second
            words = tuple(_json.encode(self._chunk(request.kind, created, word, None)) for word in WORDS)
            self._encoded = (request.kind, created, words)
        last = _json.encode(self._chunk(request.kind, created, WORDS[(count - 1) % len(WORDS)], "length"))
        loop = asyncio.get_running_loop()
        if self._clock is None or self._clock.loop is not loop:
            self._clock = _Clock(loop, self.tokens_per_second)
        stream = _Stream(sink, count, words, last, loop.create_future())
        self._clock.add(stream)
        await stream.done  # (cancelled with the request: the clock drops it at its next tick)
        return Finished(
            usage=Usage(prompt_tokens=_prompt_tokens(request), completion_tokens=count), finish_reason="length"
        )

    async def aclose(self) -> None:
        pass


_json = msgspec.json.Encoder()
HELD_POLL = 0.001
"""Seconds between looks at streams held back while the network takes nothing more."""


class _Stream:
    """One streamed answer on the clock: ``sent`` tokens of ``count`` pushed so far."""

    __slots__ = ("count", "done", "due", "last", "sent", "sink", "words")

    def __init__(
        self, sink: ChunkSink, count: int, words: tuple[bytes, ...], last: bytes, done: asyncio.Future[None]
    ) -> None:
        self.sink = sink
        self.count = count
        self.words = words
        self.last = last
        self.done = done
        self.sent = 0
        self.due = 0.0  # loop time at which its next token is ready (paced)

    def push(self, tokens: int) -> None:
        """Hand the next ``tokens`` tokens to the sink; done once all are, or the stream is gone."""
        words, start = self.words, self.sent
        end = min(self.count, start + tokens)
        chunks = [words[i % len(words)] for i in range(start, end)]
        if end == self.count:
            chunks[-1] = self.last
        self.sent = end
        if not self.sink.send(chunks) or end == self.count:
            self.done.set_result(None)


class _Clock:
    """The engine's streams on one clock, as a batching engine makes one step's tokens for all
    its streams at once. Paced, it steps when the soonest token is due, but never sooner than a
    millisecond after the last step ended (uvloop's timers count whole milliseconds): each step
    pushes every token due within half a millisecond. Unpaced, it steps once a turn of the loop,
    pushing ``READY_RUN`` tokens of every stream. A stream whose sink is backed up is skipped,
    its tokens waiting in the engine."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tokens_per_second: float) -> None:
        self.loop = loop
        self.interval = 1.0 / tokens_per_second if tokens_per_second > 0 else 0.0
        self.streams: list[_Stream] = []
        self.timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self.at = 0.0  # loop time of the next step (when ``timer`` is set)
        self.stepped = -1.0  # loop time of the last step

    def add(self, stream: _Stream) -> None:
        stream.due = self.loop.time() + self.interval
        self.streams.append(stream)
        self._set(max(stream.due - HALF_STEP, self.stepped + STEP) if self.interval else 0.0)

    def _set(self, at: float) -> None:
        if self.timer is not None:
            if self.at <= at:
                return
            self.timer.cancel()
        self.at = at
        delay = at - self.loop.time()
        self.timer = self.loop.call_later(delay, self._step) if delay > 0 else self.loop.call_soon(self._step)

    def _step(self) -> None:
        self.timer = None
        self.stepped = now = self.loop.time()
        interval = self.interval
        horizon = now + HALF_STEP
        soonest = float("inf")
        held = False
        for stream in self.streams:
            if stream.done.done():
                continue  # finished, gone, or cancelled with its request
            try:
                if stream.sink.backed_up:
                    held = True
                elif not interval:
                    stream.push(READY_RUN)
                elif stream.due <= horizon:
                    tokens = int((horizon - stream.due) / interval) + 1
                    stream.due += tokens * interval
                    stream.push(tokens)
            except Exception as exc:  # noqa: BLE001 - its request's failure, not the clock's (nor the other streams')
                stream.done.set_exception(exc)
                continue
            soonest = min(soonest, stream.due)
        self.streams = running = [stream for stream in self.streams if not stream.done.done()]
        if not running:
            return
        if not interval:
            self._set(self.loop.time() + HELD_POLL if held else 0.0)
        else:
            # a millisecond's rest after this step at least (the loop's timers can do no less
            # but at once, which under load made steps of a few tokens each, right after a late one)
            rest = self.loop.time()
            self._set(max(rest + STEP, soonest - HALF_STEP))


STEP = 0.001  # seconds between a paced clock's steps at least
HALF_STEP = STEP / 2
