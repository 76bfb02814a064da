"""An engine reached over HTTP: any OpenAI-compatible server (vLLM, SGLang, llama.cpp server,
``python -m llama_cpp.server``).

Streams are requested with ``stream_options.include_usage`` so the server meters them. A server
that sends no usage is metered with its own tokenizer endpoint (``/tokenize`` as vLLM and the
llama.cpp server have it, ``/extras/tokenize`` as llama-cpp-python's server has it); a stream is
never counted as zero tokens.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx

from cocoon.engine.base import (
    Chunk,
    EngineError,
    EngineEvent,
    EngineRefused,
    EngineRequest,
    Finished,
    ProgressCallback,
    finish_reason_of,
)
from cocoon.protocol.messages import Usage

MAX_LINE = 4 * 1024 * 1024
_LINE_END = re.compile(rb"\r\n|\r|\n")  # SSE allows all three; a CRLF cut between reads only adds an empty line


class OpenAIHttpEngine:
    name = "openai_http"

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        max_tokens: int = 4096,
        timeout: float = 600.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.shown_url = shown_url(self.base_url)  # for logs, status and errors: no credentials
        self.model = model
        self.max_tokens = max_tokens
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout, connect=10.0))
        self._added: dict[str, int] = {}  # per tokenizer endpoint: the special tokens it adds to any text

    async def start(self, progress: ProgressCallback | None = None) -> None:
        """Wait for nothing: check the server answers and learn its model name if not given."""
        if progress:
            progress(0, 1, f"contacting {self.shown_url}")
        try:
            response = await self._http.get(self.base_url + "/models")
            response.raise_for_status()
            models = [m.get("id") for m in response.json().get("data", [])]
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            detail = str(exc).replace(self.base_url, self.shown_url)  # httpx quotes the URL in some errors
            raise EngineError(f"engine at {self.shown_url} does not answer /models: {detail}") from exc
        if self.model is None:
            if not models:
                raise EngineError(f"engine at {self.shown_url} lists no model")
            self.model = str(models[0])
        if progress:
            progress(1, 1, f"engine ready: {self.model}")

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineEvent]:
        body = {**request.params, "model": self.model, "stream": request.stream}
        if request.stream:
            body["stream_options"] = {"include_usage": True}
        path = "/chat/completions" if request.kind == "chat" else "/completions"
        try:
            async with self._http.stream("POST", self.base_url + path, json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    code = response.status_code
                    if 400 <= code < 500 and code not in (408, 429):
                        # the request's fault (too long, a parameter it does not take); its text
                        # is not passed on: it may quote the prompt
                        raise EngineRefused(f"the engine refused the request (HTTP {code})")
                    raise EngineError(f"engine answered HTTP {code}")
                if request.stream:
                    async for event in self._relay_stream(request, response):
                        yield event
                else:
                    raw = await response.aread()
                    payload = _json_object(raw)
                    usage = _usage_of(payload) or await self._count(request, [_text_of(payload)])
                    yield Chunk(payload)
                    yield Finished(usage=usage, finish_reason=finish_reason_of(payload))
        except httpx.HTTPError as exc:
            raise EngineError(f"engine request failed: {type(exc).__name__}") from exc

    async def _relay_stream(self, request: EngineRequest, response: httpx.Response) -> AsyncIterator[EngineEvent]:
        usage: Usage | None = None
        finish_reason: str | None = None
        texts: list[str] = []
        done = False
        async for batch in _data_lines(response):
            ready: list[dict[str, Any]] = []
            for data in batch:
                if data == b"[DONE]":
                    done = True
                    break
                payload = _json_object(data)
                if "error" in payload:
                    raise EngineError("engine reported an error mid-stream")
                usage = _usage_of(payload) or usage
                if not payload.get("choices"):
                    continue  # the usage-only chunk: we send our own at the end
                payload.pop("usage", None)
                finish_reason = finish_reason_of(payload) or finish_reason
                texts.append(_text_of(payload))
                ready.append(payload)
            for i, payload in enumerate(ready):
                # the events that came in one read are ready together
                yield Chunk(payload, more=i < len(ready) - 1)
            if done:
                break
        if usage is None:
            usage = await self._count(request, texts)
        yield Finished(usage=usage, finish_reason=finish_reason)

    async def _count(self, request: EngineRequest, texts: list[str]) -> Usage:
        """Meter with the engine's tokenizer when it reported no usage.

        The completion is exact up to re-tokenization of its text. A chat prompt is counted
        with the chat template where the tokenizer endpoint applies it (vLLM, SGLang), and
        from the message texts alone elsewhere (documented as a lower bound).
        """
        if request.kind == "chat":
            messages = request.params.get("messages", [])
            templated = {"model": self.model, "messages": messages}
            prompt = "\n".join(_message_text(m) for m in messages)
            prompt_tokens = await self._tokenize(prompt, first=("/tokenize", templated))
        else:
            prompt_tokens = await self._tokenize(str(request.params.get("prompt", "")))
        # The tokenizer endpoints add the model's special tokens (a BOS) to what they count,
        # which the prompt has too, but an answer does not: that many come off its count. It is
        # never above the request's max_tokens (re-tokenizing may merge differently).
        completion = await self._tokenize("".join(texts), plain=True)
        wanted = request.params.get("max_tokens")
        if isinstance(wanted, int) and completion > wanted:
            completion = wanted
        return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion)

    async def _tokenize(
        self, text: str, first: tuple[str, dict[str, Any]] | None = None, *, plain: bool = False
    ) -> int:
        """How many tokens ``text`` is, by the first tokenizer endpoint that answers; ``plain``:
        without the special tokens the endpoint adds to any text (what it counts for "")."""
        if not text:
            return 0
        root = self.base_url.removesuffix("/v1")
        attempts: list[tuple[str, dict[str, Any], str]] = [  # (path, body, the field holding the text)
            ("/tokenize", {"model": self.model, "prompt": text}, "prompt"),
            ("/extras/tokenize", {"input": text}, "input"),
            ("/tokenize", {"content": text}, "content"),
        ]
        if first:
            attempts.insert(0, (first[0], first[1], ""))
        for path, body, field in attempts:
            count = await self._count_at(root + path, body)
            if count is None:
                continue
            if plain and field:
                key = f"{path} {field}"
                if key not in self._added:
                    self._added[key] = await self._count_at(root + path, {**body, field: ""}) or 0
                count = max(0, count - self._added[key])
            return count
        raise EngineError("engine reports no usage and has no tokenizer endpoint")

    async def _count_at(self, url: str, body: dict[str, Any]) -> int | None:
        try:
            response = await self._http.post(url, json=body)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        try:
            data = response.json()
        except ValueError:
            return None
        if isinstance(data, dict) and isinstance(data.get("count"), int):
            return int(data["count"])
        if isinstance(data, dict) and isinstance(data.get("tokens"), list):
            return len(data["tokens"])
        return None

    async def aclose(self) -> None:
        await self._http.aclose()


async def _data_lines(response: httpx.Response) -> AsyncIterator[list[bytes]]:
    """The values of the SSE ``data:`` lines, in lists of those that arrived in one read."""
    buffer = b""
    async for received in response.aiter_bytes():
        buffer += received
        *lines, buffer = _LINE_END.split(buffer)
        if len(buffer) > MAX_LINE or any(len(line) > MAX_LINE for line in lines):
            raise EngineError("engine sent an oversized event")
        batch = [line[5:].strip() for line in lines if line.startswith(b"data:")]
        if batch:
            yield batch
    if buffer.startswith(b"data:"):  # a last line without its line end
        yield [buffer[5:].strip()]


def shown_url(url: str) -> str:
    """``url`` as it may be shown: without the user name, password and query it may carry."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "(an invalid URL)"
    return str(parsed.copy_with(userinfo=b"", query=None))


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise EngineError("engine sent invalid JSON") from exc
    if not isinstance(value, dict):
        raise EngineError("engine sent JSON that is not an object")
    return value


def _usage_of(payload: dict[str, Any]) -> Usage | None:
    usage = payload.get("usage")
    if not isinstance(usage, dict) or not isinstance(usage.get("completion_tokens"), int):
        return None
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Usage(
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage["completion_tokens"]),
        cached_tokens=int(prompt_details.get("cached_tokens") or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )


def _text_of(payload: dict[str, Any]) -> str:
    parts: list[str] = []
    for choice in payload.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        source = choice.get("delta") or choice.get("message") or {}
        parts.append(str(choice.get("text") or source.get("content") or ""))
    return "".join(parts)


def _message_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return str(content or "")
