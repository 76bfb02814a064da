"""What the engines make of a request they cannot take as it is: a refusal the request's own
(``EngineRefused``: the worker answers ``bad_request``, which the proxy neither retries on other
workers nor counts against this one), never a slot lost, and parameters passed in the form the
engine takes them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from cocoon.engine.base import Chunk, EngineError, EngineRefused, EngineRequest, Finished
from cocoon.engine.llama_cpp import LlamaCppEngine
from cocoon.engine.openai_http import OpenAIHttpEngine


def chat(**params: Any) -> EngineRequest:
    return EngineRequest("chat", {"messages": [{"role": "user", "content": "hi"}], **params}, stream=True)


class LlamaDouble:
    """Test double for a llama-cpp-python instance: raises ``failure`` when a request is taken
    in, else streams two chunks; notes the parameters it was given."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.failure = failure
        self.taken: list[dict[str, Any]] = []
        self.cancel: Any = None
        self.max_completion: Any = None
        self.prompt_count = self.completion_count = 0

    def create_chat_completion(self, **params: Any) -> Any:
        self.taken.append(params)
        if self.failure is not None:
            raise self.failure
        return iter([{"choices": [{"delta": {"content": "a"}, "finish_reason": None}]},
                     {"choices": [{"delta": {}, "finish_reason": "stop"}]}])  # fmt: skip


def engine_with(llama: LlamaDouble) -> LlamaCppEngine:
    engine = LlamaCppEngine(slots=1, n_ctx=256)
    engine._n_vocab = 100
    engine._instances.append(llama)
    engine._pool.put_nowait(llama)
    return engine


async def run(engine: Any, request: EngineRequest) -> list[Any]:
    return [event async for event in engine.generate(request)]


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"logit_bias": {"abc": 1.0}}, "integers"),
        ({"logit_bias": {"100": 1.0}}, "from 0 to 99"),
        ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
        ({"response_format": {}}, "the type is"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "needs its schema"),
        ({"tools": [{"type": "function", "function": {"name": "a"}}] * 2, "tool_choice": "required"}, "exactly one"),
    ],
)
async def test_a_request_the_embedded_engine_cannot_take_is_refused_and_keeps_no_slot(
    params: dict[str, Any], why: str
) -> None:
    llama = LlamaDouble()
    engine = engine_with(llama)
    for _ in range(3):  # (a slot lost each time would leave none after the first)
        with pytest.raises(EngineRefused, match=why):
            await run(engine, chat(**params))
    assert engine._pool.qsize() == 1 and llama.taken == []
    events = await asyncio.wait_for(run(engine, chat()), 5)
    assert isinstance(events[-1], Finished)


@pytest.mark.parametrize(
    ("failure", "refused"),
    [
        (ValueError("Requested tokens (400) exceed context window of 256"), True),
        (KeyError("type"), True),  # a parameter it could not take in
        (RuntimeError("llama_decode returned -3"), False),  # the engine's own failure
    ],
)
async def test_what_fails_as_the_engine_takes_the_request_in_is_told_apart(failure: Exception, refused: bool) -> None:
    engine = engine_with(LlamaDouble(failure))
    with pytest.raises(EngineError) as caught:
        await asyncio.wait_for(run(engine, chat()), 5)
    assert isinstance(caught.value, EngineRefused) is refused
    assert "400" not in str(caught.value) or "context window of 256" in str(caught.value)
    await asyncio.sleep(0.05)  # (the thread's end gives the instance back)
    assert engine._pool.qsize() == 1


async def test_parameters_reach_the_embedded_engine_in_its_own_terms() -> None:
    llama = LlamaDouble()
    engine = engine_with(llama)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    tool = {"type": "function", "function": {"name": "weather"}}
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    response_format = {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}
    await run(engine, chat(parallel_tool_calls=False, logit_bias={"7": 5.0}, tools=[tool], tool_choice="required",
                           response_format=response_format, messages=messages, reasoning_effort="low"))  # fmt: skip
    await run(engine, chat())
    await run(engine, chat(seed=42))
    first, second, third = llama.taken
    assert "parallel_tool_calls" not in first  # (the call would fail: it takes no such argument)
    assert "reasoning_effort" not in first  # (likewise)
    assert first["logit_bias"] == {7: 5.0}
    assert first["response_format"] == {"type": "json_object", "schema": schema}
    assert first["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert first["messages"][0] == {"role": "system", "content": "Be brief."}
    # a fresh seed for every request that names none (llama-cpp-python's is fixed), the one named
    assert isinstance(first["seed"], int) and first["seed"] != second["seed"] and third["seed"] == 42


def http_engine(handler: Any) -> OpenAIHttpEngine:
    engine = OpenAIHttpEngine("http://engine.test", model="m")
    engine._http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return engine


@pytest.mark.parametrize(("status", "refused"), [(400, True), (413, True), (429, False), (500, False), (503, False)])
async def test_an_engine_server_that_refuses_the_request_is_told_from_one_that_fails(
    status: int, refused: bool
) -> None:
    engine = http_engine(lambda request: httpx.Response(status, json={"error": {"message": "the prompt: hi"}}))
    with pytest.raises(EngineError) as caught:
        await run(engine, chat())
    assert isinstance(caught.value, EngineRefused) is refused
    assert "hi" not in str(caught.value)  # its text may quote the prompt


async def test_an_answer_counted_by_a_tokenizer_that_adds_a_bos_is_not_counted_one_too_many() -> None:
    """llama-cpp-python's server counts ``tokenize(text)`` with the BOS its model adds: the
    answer has none, and one above max_tokens would get the worker's receipt refused."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/chat/completions":
            lines = [{"choices": [{"delta": {"content": w}, "finish_reason": None}]} for w in ("one", " two")]
            lines.append({"choices": [{"delta": {}, "finish_reason": "length"}]})
            body = "".join(f"data: {json.dumps(line)}\n\n" for line in lines) + "data: [DONE]\n\n"
            return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
        if request.url.path == "/extras/tokenize":
            text = json.loads(request.content)["input"]
            return httpx.Response(200, json={"tokens": [1] + [0] * len(text.split())})  # BOS + a token a word
        return httpx.Response(404)

    events = await run(http_engine(handler), chat(max_tokens=2))
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.usage.completion_tokens == 2
    assert [type(e) for e in events] == [Chunk, Chunk, Chunk, Finished]
    assert finished.usage.prompt_tokens == 2  # (the prompt has its BOS: "hi" and BOS)


async def test_an_engine_server_is_asked_for_the_reasoning_effort_the_caller_set() -> None:
    """For a reasoning model behind an engine server: the embedded engine drops it (above)."""
    asked: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(json.loads(request.content))
        return httpx.Response(500)

    with pytest.raises(EngineError):
        await run(http_engine(handler), chat(reasoning_effort="high"))
    assert asked[0]["reasoning_effort"] == "high"
