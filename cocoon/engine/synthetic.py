"""``BenchmarkEngine``: a synthetic engine for benchmarks and load tests, never for users.

It emits pre-tokenized text as fast as asked (``tokens_per_second`` per stream; 0 = as fast as
the event loop runs), so the network's own cost can be measured without a model in the way.
Paced, each token is ready at its time on a fixed grid (tokens whose time passed while the event
loop was busy are ready together); unpaced, ``READY_RUN`` tokens are ready each time a stream
gets the loop. ``Chunk.more`` says so, as a threaded engine's queue would.
Its answers are fixed filler words; its usage counts are exact for what it sends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from cocoon.engine.base import Chunk, EngineEvent, EngineRequest, Finished, ProgressCallback
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

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineEvent]:
        wanted = request.params.get("max_tokens") or request.params.get("max_completion_tokens") or DEFAULT_ANSWER
        count = max(1, min(int(wanted), self.max_tokens))
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

    async def aclose(self) -> None:
        pass
