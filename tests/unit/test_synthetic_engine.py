"""The synthetic benchmark engine: exact usage, pacing, both kinds, streamed or not."""

from __future__ import annotations

import time

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
