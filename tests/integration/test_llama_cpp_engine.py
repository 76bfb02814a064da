"""The embedded engine in-process, on the real model: exact metering, cancellation, and a free
event loop while it generates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from cocoon.engine import llama_cpp as llama_cpp_engine
from cocoon.engine.base import Chunk, EngineError, EngineRefused, EngineRequest, Finished
from cocoon.engine.llama_cpp import LlamaCppEngine

pytestmark = pytest.mark.integration

STORY = [{"role": "user", "content": "Write a long story about a dragon."}]
NO_END = {"0": -100, "2": -100}  # the model's end-of-generation tokens banned: answers run to max_tokens


@pytest.fixture
async def engine() -> AsyncIterator[LlamaCppEngine]:
    progress: list[tuple[int, int]] = []
    engine = LlamaCppEngine(slots=2, threads=1)
    await engine.start(lambda done, total, what: progress.append((done, total)))
    assert progress[0] == (0, 2) and progress[-1] == (2, 2)
    yield engine
    await engine.aclose()


async def run(engine: LlamaCppEngine, request: EngineRequest) -> tuple[list[Chunk], Finished]:
    chunks: list[Chunk] = []
    finished = None
    async for event in engine.generate(request):
        if isinstance(event, Chunk):
            chunks.append(event)
        else:
            finished = event
    assert finished is not None
    return chunks, finished


async def test_streamed_and_plain_answers_are_metered_alike(engine: LlamaCppEngine) -> None:
    params = {"messages": STORY, "max_tokens": 25, "temperature": 0}
    plain_chunks, plain = await run(engine, EngineRequest("chat", params, stream=False))
    stream_chunks, streamed = await run(engine, EngineRequest("chat", params, stream=True))
    assert len(plain_chunks) == 1
    body = plain_chunks[0].payload
    # llama-cpp-python's own count for the non-streamed answer matches ours
    assert body["usage"]["completion_tokens"] == plain.usage.completion_tokens == 25
    assert streamed.usage == plain.usage
    assert streamed.finish_reason == plain.finish_reason == "length"
    text = "".join(c.payload["choices"][0]["delta"].get("content") or "" for c in stream_chunks)
    assert text == body["choices"][0]["message"]["content"]
    tokens = engine._instances[0].tokenize(text.encode(), add_bos=False)
    assert abs(len(tokens) - 25) <= 2  # re-tokenizing the text agrees, up to merges


async def test_greedy_answers_skip_llama_cpps_sampler_with_the_same_tokens(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llama_cpp

    sampled: list[int] = []  # llama.cpp's sampler chain, once per token it picks
    real_sample = llama_cpp.Llama.sample

    def counted(self: llama_cpp.Llama, *args: object, **kwargs: object) -> int:
        sampled.append(1)
        return real_sample(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(llama_cpp.Llama, "sample", counted)
    params = {"messages": STORY, "max_tokens": 40, "temperature": 0}
    fast_chunks, fast = await run(engine, EngineRequest("chat", params, stream=False))
    assert sampled == []  # the highest logit, read in place
    monkeypatch.setattr(llama_cpp_engine, "plain_greedy", lambda sampling: False)
    slow_chunks, slow = await run(engine, EngineRequest("chat", params, stream=False))
    assert len(sampled) >= 40
    assert fast_chunks[0].payload["choices"] == slow_chunks[0].payload["choices"]
    assert fast.usage == slow.usage
    monkeypatch.undo()
    monkeypatch.setattr(llama_cpp.Llama, "sample", counted)
    sampled.clear()
    for other in ({"repeat_penalty": 1.1}, {"presence_penalty": 0.5}, {"logit_bias": NO_END}, {"temperature": 0.7}):
        await run(engine, EngineRequest("chat", {**params, "max_tokens": 3, **other}, stream=False))
        assert len(sampled) == 3, other  # anything but plain greedy goes through llama.cpp's chain
        sampled.clear()


async def test_a_greedy_pick_without_logits_fails_the_request_not_the_process(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llama_cpp

    # where llama.cpp has no logits (a null pointer), its own sampler would abort the process
    monkeypatch.setattr(llama_cpp, "llama_get_logits_ith", lambda ctx, i: None)
    params = {"messages": STORY, "max_tokens": 12, "temperature": 0}
    with pytest.raises(EngineError, match="RuntimeError"):
        await run(engine, EngineRequest("chat", params, stream=False))
    monkeypatch.undo()
    _, finished = await run(engine, EngineRequest("chat", params, stream=False))  # the slot is free
    assert finished.usage.completion_tokens == 12


async def test_end_of_generation_token_is_not_billed(engine: LlamaCppEngine) -> None:
    params = {
        "messages": [{"role": "user", "content": "Reply with the single word: yes"}],
        "max_tokens": 50,
        "temperature": 0,
    }
    chunks, finished = await run(engine, EngineRequest("chat", params, stream=False))
    assert finished.finish_reason == "stop"
    assert chunks[0].payload["usage"]["completion_tokens"] == finished.usage.completion_tokens < 50


async def test_closing_the_stream_cancels_and_frees_the_slot(engine: LlamaCppEngine) -> None:
    request = EngineRequest("chat", {"messages": STORY, "max_tokens": 1500}, stream=True)
    for _ in range(3):  # more cancellations than slots: each one must give its slot back
        events = engine.generate(request)
        async for event in events:
            assert isinstance(event, Chunk)
            break
        await events.aclose()  # type: ignore[attr-defined]
    async with asyncio.timeout(30):
        _, finished = await run(engine, EngineRequest("completion", {"prompt": "Hi", "max_tokens": 3}, stream=True))
    assert finished.usage.completion_tokens == 3


async def test_generation_does_not_block_the_event_loop(engine: LlamaCppEngine) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    request = EngineRequest("chat", {"messages": STORY, "max_tokens": 60, "temperature": 0}, stream=False)
    started = asyncio.get_running_loop().time()
    results = await asyncio.gather(run(engine, request), run(engine, request))
    elapsed = asyncio.get_running_loop().time() - started
    task.cancel()
    assert all(f.usage.completion_tokens == 60 for _, f in results)
    assert ticks >= 0.5 * elapsed / 0.01  # the loop kept running while both slots generated


class CollectingSink:
    """Takes pushed chunks as a worker's sink does; says the stream is gone after ``keep``."""

    backed_up = False

    def __init__(self, keep: int = -1) -> None:
        self.pushes: list[list[dict]] = []
        self.keep = keep

    def send(self, chunks: list[bytes]) -> bool:
        if len(self.pushes) == self.keep:
            return False
        self.pushes.append([msgspec.json.decode(c) for c in chunks])
        return True


async def test_pushed_answers_are_the_pulled_ones_metered_alike(engine: LlamaCppEngine) -> None:
    params = {"messages": STORY, "max_tokens": 25, "temperature": 0}
    pulled, finished = await run(engine, EngineRequest("chat", params, stream=True))
    sink = CollectingSink()
    pushed = await engine.stream_into(EngineRequest("chat", params, stream=True), sink)
    assert pushed == finished and pushed.usage.completion_tokens == 25
    # the same answer (each has an id and a time of its own)
    assert [c["choices"] for push in sink.pushes for c in push] == [c.payload["choices"] for c in pulled]


async def all_slots_back(engine: LlamaCppEngine) -> bool:
    """Whether every instance is back in the pool within a second (an answer of 1,500 tokens
    that ran on would hold its slot for some 15 s)."""
    for _ in range(100):
        if engine._pool.qsize() == engine.slots:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_a_pushed_stream_that_is_gone_stops_and_frees_its_slot(engine: LlamaCppEngine) -> None:
    request = EngineRequest("chat", {"messages": STORY, "max_tokens": 1500, "logit_bias": NO_END}, stream=True)
    async with asyncio.timeout(60):
        for _ in range(3):  # more than the slots: each must come back
            finished = await engine.stream_into(request, CollectingSink(keep=1))
            assert finished.usage.completion_tokens < 50  # stopped at once, not run on
            assert await all_slots_back(engine)
        task = asyncio.create_task(engine.stream_into(request, CollectingSink()))
        await asyncio.sleep(0.3)
        task.cancel()  # the request itself cancelled: stops too
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await all_slots_back(engine)


async def test_a_pushed_request_the_engine_refuses_raises(engine: LlamaCppEngine) -> None:
    with pytest.raises(EngineRefused):
        await engine.stream_into(
            EngineRequest("completion", {"prompt": "Hi " * 3000, "max_tokens": 3}, stream=True), CollectingSink()
        )


async def test_a_sink_that_fails_fails_the_pushed_request_and_frees_its_slot(engine: LlamaCppEngine) -> None:
    class FailingSink(CollectingSink):
        def send(self, chunks: list[bytes]) -> bool:
            raise RuntimeError("a bug in the worker")

    request = EngineRequest("chat", {"messages": STORY, "max_tokens": 1500, "logit_bias": NO_END}, stream=True)
    async with asyncio.timeout(60):
        for _ in range(3):
            with pytest.raises(RuntimeError, match="a bug"):
                await engine.stream_into(request, FailingSink())
            assert await all_slots_back(engine)


class BackedUpSink(CollectingSink):
    """A sink whose network takes nothing more (``backed_up``) until ``release``."""

    backed_up = True

    def release(self) -> None:
        self.backed_up = False


async def test_a_pushed_stream_is_held_back_while_the_network_takes_nothing(engine: LlamaCppEngine) -> None:
    # the slot's thread makes no next token while the sink is backed up, as a batching engine
    # holds a stream back, instead of the whole answer piling up in the worker
    request = EngineRequest("chat", {"messages": STORY, "max_tokens": 200, "logit_bias": NO_END}, stream=True)
    async with asyncio.timeout(60):
        sink = BackedUpSink()
        task = asyncio.create_task(engine.stream_into(request, sink))
        await asyncio.sleep(0.5)  # some 60 tokens' time at the model's pace
        held = sum(map(len, sink.pushes))
        assert 1 <= held <= 4  # the first chunks, made before the hold took effect
        sink.release()
        finished = await task
        assert finished.usage.completion_tokens == 200
        assert sum(map(len, sink.pushes)) >= 200  # (and the role chunk)
        # cancelled while held back: the thread stops and gives its slot back
        held_sink = BackedUpSink()
        task = asyncio.create_task(engine.stream_into(request, held_sink))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await all_slots_back(engine)
