"""The synthetic benchmark engine: exact usage, pacing, both kinds, streamed or not, pulled or pushed."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from cocoon.engine.base import Chunk, EngineRequest, Finished
from cocoon.engine.synthetic import READY_RUN, BenchmarkEngine


async def collect(engine: BenchmarkEngine, request: EngineRequest) -> tuple[list[Chunk], Finished]:
    chunks, finished = [], None
    async for event in engine.generate(request):
        if isinstance(event, Chunk):
            chunks.append(event)
        else:
            finished = event
    assert finished is not None
    return chunks, finished


async def test_it_streams_exactly_the_tokens_it_counts() -> None:
    engine = BenchmarkEngine()
    request = EngineRequest("chat", {"messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 7}, True)
    chunks, finished = await collect(engine, request)
    assert len(chunks) == 7 and finished.usage.completion_tokens == 7 and finished.usage.prompt_tokens == 10
    assert chunks[-1].payload["choices"][0]["finish_reason"] == "length"


async def test_a_non_streamed_answer_is_one_response() -> None:
    chunks, finished = await collect(
        BenchmarkEngine(), EngineRequest("completion", {"prompt": "hi", "max_tokens": 3}, False)
    )
    (whole,) = chunks
    assert whole.payload["choices"][0]["text"] == " w0 w1 w2"
    assert whole.payload["usage"]["completion_tokens"] == finished.usage.completion_tokens == 3


async def test_it_paces_tokens_when_asked() -> None:
    engine = BenchmarkEngine(tokens_per_second=200)
    started = time.monotonic()
    await collect(engine, EngineRequest("chat", {"messages": [], "max_tokens": 20}, True))
    assert time.monotonic() - started >= 0.09  # 20 tokens at 200/s: 0.1 s


async def test_unpaced_it_has_a_run_of_tokens_ready_at_a_time() -> None:
    chunks, _ = await collect(BenchmarkEngine(), EngineRequest("chat", {"messages": [], "max_tokens": 40}, True))
    # each run ends with a chunk whose successor is not ready yet; the last is followed by the end
    assert [i for i, c in enumerate(chunks) if not c.more] == [READY_RUN - 1, 2 * READY_RUN - 1]
    assert chunks[-1].more


async def test_paced_a_token_is_ready_with_the_previous_one_only_when_its_time_has_come() -> None:
    engine = BenchmarkEngine(tokens_per_second=20)  # one token every 50 ms
    request = EngineRequest("chat", {"messages": [], "max_tokens": 8}, True)
    chunks: list[Chunk] = []
    async for event in engine.generate(request):
        if isinstance(event, Chunk):
            chunks.append(event)
            if len(chunks) == 3:
                time.sleep(0.17)  # noqa: ASYNC251 - the event loop is busy elsewhere: the next tokens come due
    assert not chunks[0].more  # on time: the next one is 50 ms away
    assert chunks[3].more and chunks[4].more  # late: their successors were due already
    assert not chunks[6].more  # caught up again
    assert chunks[-1].more  # the end follows the last token at once


# --- pushed, as a worker takes streamed answers ---------------------------------------------------


class RecordingSink:
    """Records each push (decoded) and when it came; ``refuse_after`` pushes, it says the
    stream is gone."""

    def __init__(self, refuse_after: int = -1) -> None:
        self.pushes: list[list[dict]] = []
        self.times: list[float] = []
        self.backed_up = False
        self.refuse_after = refuse_after

    def send(self, chunks: list[bytes]) -> bool:
        if len(self.pushes) == self.refuse_after:
            return False
        self.pushes.append([msgspec.json.decode(c) for c in chunks])
        self.times.append(time.monotonic())
        return True

    @property
    def tokens(self) -> list[dict]:
        return [c for push in self.pushes for c in push]


def chat(max_tokens: int) -> EngineRequest:
    return EngineRequest("chat", {"messages": [{"role": "user", "content": "x" * 40}], "max_tokens": max_tokens}, True)


async def test_pushed_it_streams_exactly_the_tokens_it_counts() -> None:
    sink = RecordingSink()
    finished = await BenchmarkEngine().stream_into(chat(40), sink)
    assert finished.usage.completion_tokens == 40 and finished.usage.prompt_tokens == 10
    assert [c["choices"][0]["delta"]["content"] for c in sink.tokens] == [f" w{i}" for i in range(40)]
    assert [c["choices"][0]["finish_reason"] for c in sink.tokens][-2:] == [None, "length"]
    # unpaced: a run of tokens at a time, as when pulled
    assert [len(push) for push in sink.pushes] == [READY_RUN, READY_RUN, 40 - 2 * READY_RUN]


async def test_pushed_and_paced_tokens_come_on_time_on_one_clock_for_every_stream() -> None:
    engine = BenchmarkEngine(tokens_per_second=200)  # one token every 5 ms
    sinks = [RecordingSink() for _ in range(3)]
    started = time.monotonic()
    await asyncio.gather(*(engine.stream_into(chat(20), sink) for sink in sinks))
    assert time.monotonic() - started >= 0.095  # 20 tokens at 200/s: 0.1 s
    for sink in sinks:
        assert len(sink.tokens) == 20 and len(sink.pushes) >= 15  # one at a time, mostly


async def test_pushed_tokens_whose_time_passed_come_together() -> None:
    engine = BenchmarkEngine(tokens_per_second=100)  # one token every 10 ms
    sink = RecordingSink()
    task = asyncio.create_task(engine.stream_into(chat(10), sink))
    await asyncio.sleep(0.015)
    time.sleep(0.05)  # noqa: ASYNC251 - the event loop is busy elsewhere: five more tokens come due
    await task
    assert max(len(push) for push in sink.pushes) >= 4  # those that came due meanwhile, together
    assert len(sink.tokens) == 10


async def test_a_backed_up_sink_holds_its_stream_in_the_engine() -> None:
    engine = BenchmarkEngine(tokens_per_second=500)
    sink = RecordingSink()
    task = asyncio.create_task(engine.stream_into(chat(30), sink))
    await asyncio.sleep(0.01)
    sink.backed_up = True
    held = len(sink.tokens)
    await asyncio.sleep(0.03)
    assert len(sink.tokens) == held  # nothing while the network takes nothing
    sink.backed_up = False
    await task
    assert len(sink.tokens) == 30
    assert max(len(push) for push in sink.pushes) >= 10  # what came due meanwhile, at once


async def test_a_stream_that_is_gone_gets_nothing_more() -> None:
    sink = RecordingSink(refuse_after=1)
    await asyncio.wait_for(BenchmarkEngine(tokens_per_second=1000).stream_into(chat(1000), sink), 1)
    assert len(sink.pushes) == 1


async def test_a_cancelled_request_leaves_the_clock() -> None:
    engine = BenchmarkEngine(tokens_per_second=1000)
    sink, other = RecordingSink(), RecordingSink()
    task = asyncio.create_task(engine.stream_into(chat(1000), sink))
    running = asyncio.create_task(engine.stream_into(chat(60), other))
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.sleep(0)
    pushed = len(sink.pushes)
    await running  # the clock goes on for the other stream
    assert len(sink.pushes) == pushed and len(other.tokens) == 60


async def test_a_sink_that_fails_fails_its_request_only() -> None:
    class FailingSink(RecordingSink):
        def send(self, chunks: list[bytes]) -> bool:
            raise RuntimeError("a bug in the worker")

    engine = BenchmarkEngine(tokens_per_second=1000)
    other = RecordingSink()
    running = asyncio.create_task(engine.stream_into(chat(30), other))
    with pytest.raises(RuntimeError, match="a bug"):
        await asyncio.wait_for(engine.stream_into(chat(30), FailingSink()), 1)
    await asyncio.wait_for(running, 1)  # the clock went on for the other stream
    assert len(other.tokens) == 30
