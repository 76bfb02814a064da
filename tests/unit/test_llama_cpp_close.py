"""Closing the embedded engine while requests run: they stop, and the model is freed only once
no slot's thread is in it (freed under one, llama.cpp crashes the process)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from cocoon.engine.llama_cpp import LlamaCppEngine
from tests.unit.test_engine_refusals import chat


class SlowLlamaDouble:
    """Test double for a llama-cpp-python instance: a token every ``pace`` seconds, up to 1,000;
    notes whether it was closed while a thread was in it."""

    def __init__(self, pace: float = 0.01, stuck: threading.Event | None = None) -> None:
        self.pace = pace
        self.stuck = stuck  # while clear, the first token never comes (a long prefill)
        self.cancel: Any = None
        self.max_completion: Any = None
        self.prompt_count = self.completion_count = 0
        self.inside = 0
        self.closed_inside: int | None = None

    def create_chat_completion(self, **params: Any) -> Any:
        def tokens() -> Any:
            self.inside += 1
            try:
                if self.stuck is not None:
                    self.stuck.wait(5)
                for _ in range(1000):
                    time.sleep(self.pace)
                    yield {"choices": [{"delta": {"content": "a"}, "finish_reason": None}]}
            finally:
                self.inside -= 1

        return tokens()

    def close(self) -> None:
        self.closed_inside = self.inside


def engine_with(llama: SlowLlamaDouble) -> LlamaCppEngine:
    engine = LlamaCppEngine(slots=1, n_ctx=256)
    engine._instances.append(llama)
    engine._pool.put_nowait(llama)
    return engine


class Sink:
    backed_up = False

    def send(self, chunks: list[bytes]) -> bool:
        return True


async def test_closing_stops_the_running_requests_before_it_frees_the_model() -> None:
    llama = SlowLlamaDouble()
    engine = engine_with(llama)
    running = asyncio.create_task(engine.stream_into(chat(), Sink()))
    await asyncio.sleep(0.1)
    assert llama.inside == 1
    await asyncio.wait_for(engine.aclose(), 5)
    assert llama.closed_inside == 0  # freed once the thread had left it
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)


async def test_a_thread_that_does_not_stop_in_time_keeps_its_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cocoon.engine.llama_cpp.CLOSE_WAIT", 0.2)
    stuck = threading.Event()
    llama = SlowLlamaDouble(stuck=stuck)
    engine = engine_with(llama)
    running = asyncio.create_task(engine.stream_into(chat(), Sink()))
    await asyncio.sleep(0.1)
    await asyncio.wait_for(engine.aclose(), 5)
    assert llama.closed_inside is None  # not freed under the thread (the process frees it)
    stuck.set()
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
