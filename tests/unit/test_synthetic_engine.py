"""The synthetic benchmark engine: exact usage, pacing, both kinds, streamed or not."""

from __future__ import annotations

import time

from cocoon.engine.base import Chunk, EngineRequest, Finished
from cocoon.engine.synthetic import BenchmarkEngine


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
