"""The engine seam: what a worker needs from whatever generates tokens.

An engine yields OpenAI-shaped JSON objects (stream chunks, or one whole response when not
streaming) and ends with ``Finished`` carrying the usage the engine metered. The worker never
derives usage from the text it relays. A chunk says whether the next event is ready already
(``Chunk.more``), so that the worker can send what an engine produced faster than the network
took it in one frame.

An engine that makes the tokens of many streams in one place (a batching engine's step, a
thread per slot) may also push a streamed request's chunks (``PushingEngine.stream_into``): it
hands them to a ``ChunkSink`` the moment they are made, and the worker seals and queues them in
that same call, with no task of the request's to wake for every chunk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from cocoon.protocol.messages import Usage

ProgressCallback = Callable[[int, int, str], None]
"""``progress(done, total, what)`` while an engine loads."""


@dataclass(frozen=True)
class EngineRequest:
    kind: Literal["chat", "completion"]
    params: dict[str, Any]  # OpenAI generation parameters, validated (see openai.schemas)
    stream: bool


@dataclass(frozen=True)
class Chunk:
    payload: dict[str, Any]
    more: bool = False
    """The engine holds its next event already: asking for it will not wait. The worker then
    seals the chunks that are ready together into one answer chunk (it never waits for a chunk
    that is not ready yet); an engine that cannot tell leaves this False."""


@dataclass(frozen=True)
class Finished:
    usage: Usage
    finish_reason: str | None


EngineEvent = Chunk | Finished


class EngineError(Exception):
    """The engine failed. The message must never contain prompt or answer text: it goes to
    the proxy and to logs."""


class EngineRefused(EngineError):
    """The engine cannot take the request as it is: a prompt longer than its context window, a
    parameter it cannot honour. The request's fault, not the engine's (the worker answers
    ``bad_request``, which the proxy neither retries elsewhere nor counts against the worker).
    The message names what, never the content."""


class Engine(Protocol):
    name: str
    max_tokens: int
    """The longest answer this engine can produce (announced to the proxy)."""

    async def start(self, progress: ProgressCallback | None = None) -> None: ...

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineEvent]:
        """Run one request. Closing the iterator early (the caller went away) stops it."""
        ...

    async def aclose(self) -> None: ...


class ChunkSink(Protocol):
    """Where a pushing engine hands a streamed request's chunks as it makes them."""

    def send(self, chunks: list[bytes]) -> bool:
        """Take chunks made together, in order: each an encoded JSON object (a stream chunk).
        False once the stream is gone (cancelled, or its connection closed): the engine stops
        the request and makes nothing more for it."""
        ...

    @property
    def backed_up(self) -> bool:
        """The network is not taking the chunks as fast as they come: an engine that can hold a
        stream back does so (its chunks wait in the engine) until this is False again."""
        ...


@runtime_checkable
class PushingEngine(Protocol):
    def stream_into(self, request: EngineRequest, sink: ChunkSink) -> Awaitable[Finished]:
        """Run one streamed request, handing its chunks to ``sink``; the usage once it is done.
        Raises ``EngineError`` as ``generate`` does; cancelling the await stops the request."""
        ...


def finish_reason_of(payload: dict[str, Any]) -> str | None:
    choices = payload.get("choices") or []
    if choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        return reason if isinstance(reason, str) else None
    return None
