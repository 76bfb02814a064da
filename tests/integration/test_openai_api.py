"""The OpenAI API of a real network (client → proxy → 2 workers on the embedded model),
driven by the official ``openai`` package."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from cocoon.keys import load_identity, public_bytes
from tests.integration.network import MODEL, Network

pytestmark = pytest.mark.integration

HELLO = [{"role": "user", "content": "Name three colours."}]


def sync_client(network: Network) -> openai.OpenAI:
    return openai.OpenAI(base_url=network.url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture
def client(network: Network) -> Iterator[openai.OpenAI]:
    with sync_client(network) as client:
        yield client


def async_client(network: Network) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=network.url, api_key="unused", max_retries=0, timeout=60)


def test_models_are_listed(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_chat_non_streamed(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=24, temperature=0)
    assert answer.object == "chat.completion"
    assert answer.id.startswith("chatcmpl-")
    assert answer.model == MODEL
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > 0
    assert 0 < answer.usage.completion_tokens <= 24
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_streamed_usage_equals_non_streamed_usage(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=40, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            max_tokens=40,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    assert usage.completion_tokens == plain.usage.completion_tokens > 0
    assert usage.prompt_tokens == plain.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_is_never_exceeded_when_the_limit_falls_inside_a_character(
    client: openai.OpenAI, stream: bool
) -> None:
    # An emoji takes several byte tokens: llama-cpp-python checks max_tokens only once a token
    # completes a character, so at these limits it drew one or two more, and the client refused
    # the receipt (502 bad_receipt) of an answer it had already streamed.
    prompt = [{"role": "user", "content": "Write three emojis: 🙂🚀🎉"}]
    for limit in (7, 9):
        if stream:
            chunks = list(
                client.chat.completions.create(
                    model=MODEL,
                    messages=prompt,
                    max_tokens=limit,
                    temperature=0,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            usage = chunks[-1].usage
        else:
            usage = client.chat.completions.create(model=MODEL, messages=prompt, max_tokens=limit, temperature=0).usage
        assert usage is not None and usage.completion_tokens == limit


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_is_exact(client: openai.OpenAI, stream: bool) -> None:
    prompt = [{"role": "user", "content": "Write a long story about a dragon."}]
    if stream:
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=prompt,
                max_completion_tokens=7,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[-1].usage.completion_tokens == 7
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    else:
        answer = client.chat.completions.create(model=MODEL, messages=prompt, max_tokens=7)
        assert answer.usage.completion_tokens == 7
        assert answer.choices[0].finish_reason == "length"


def test_streamed_usage_matches_tokens_generated(client: openai.OpenAI, network: Network) -> None:
    """Without include_usage the stream carries no usage, yet the worker still metered it."""
    story = [{"role": "user", "content": "Write a long story about a dragon."}]
    # (greedy: no sampled end within 13 tokens, whatever the seed)
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=story, max_tokens=13, stream=True, temperature=0)
    )
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks)
    # the worker's log line for this request carries the counts it metered and signed
    deadline = time.monotonic() + 5
    workers = [node for name, node in network.nodes.items() if name.startswith("worker")]
    while not any(" + 13 completion tokens in " in node.log for node in workers):
        assert time.monotonic() < deadline, "no worker logged 13 completion tokens"
        time.sleep(0.05)


def test_seed_and_stop_are_honoured(client: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "Tell me a fun fact about the sea."}]
    first, second = (
        client.chat.completions.create(model=MODEL, messages=ask, max_tokens=30, temperature=1.0, top_p=0.9, seed=7)
        for _ in range(2)
    )
    assert first.choices[0].message.content == second.choices[0].message.content
    unstopped = client.chat.completions.create(model=MODEL, messages=ask, max_tokens=30, temperature=0)
    text = unstopped.choices[0].message.content
    assert text and " " in text
    word = text.split(" ")[1]
    stopped = client.chat.completions.create(model=MODEL, messages=ask, max_tokens=30, temperature=0, stop=[word])
    assert word not in stopped.choices[0].message.content
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens < unstopped.usage.completion_tokens


def test_text_completions(client: openai.OpenAI) -> None:
    answer = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert answer.object == "text_completion"
    assert answer.choices[0].text
    assert answer.usage.completion_tokens == 5
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="The capital of France is",
            max_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == answer.choices[0].text
    assert chunks[-1].usage.completion_tokens == 5


async def test_async_client_concurrent_requests_use_both_workers(network: Network) -> None:
    before = {name: network.worker_requests_done(name) for name in ("worker-1", "worker-2")}
    client = async_client(network)
    await _run_concurrently(client)
    await client.close()
    after = {name: network.worker_requests_done(name) for name in before}
    assert all(after[name] > before[name] for name in before), (before, after)
    assert sum(after.values()) - sum(before.values()) == 8


async def _run_concurrently(client: openai.AsyncOpenAI) -> None:
    async def plain() -> str:
        answer = await client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=16)
        return answer.choices[0].message.content or ""

    async def streamed() -> str:
        stream = await client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=16, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream])

    answers = await asyncio.gather(*(plain() if i % 2 else streamed() for i in range(8)))
    assert all(answers)


def test_invalid_requests_get_openai_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-imaginary", messages=HELLO)
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as n:
        client.chat.completions.create(model=MODEL, messages=HELLO, n=2)
    assert n.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as extra:
        client.chat.completions.create(model=MODEL, messages=HELLO, extra_body={"frobnicate": 1})
    assert "frobnicate" in extra.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=HELLO, temperature=5)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.BadRequestError) as options:
        client.chat.completions.create(model=MODEL, messages=HELLO, stream_options={"include_usage": True})
    assert options.value.body["param"] == "stream_options"
    assert "only allowed when 'stream' is enabled" in options.value.message
    with pytest.raises(openai.BadRequestError) as null:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": None}])  # type: ignore[misc,list-item]
    assert null.value.body["param"] == "messages[0].content"
    picture = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with pytest.raises(openai.BadRequestError) as image:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": [{"type": "text", "text": "What is this?"}, picture]}],  # type: ignore[list-item]
        )
    assert image.value.body["param"] == "messages[0].content[1].type"
    assert image.value.body["type"] == "invalid_request_error"


def test_text_content_parts_are_served(client: openai.OpenAI) -> None:
    parts = [{"type": "text", "text": "Name three"}, {"type": "text", "text": "colours."}]
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": parts},
        ],  # type: ignore[list-item,misc]
        max_tokens=3,
    )
    assert answer.usage is not None and answer.usage.completion_tokens == 3


def test_a_history_with_tool_calls_and_no_content_is_served(client: openai.OpenAI) -> None:
    # the model's chat template concatenates every message's content: a missing one failed it,
    # as an engine error counted against the workers, for anyone who sent such a history
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "Sunny, 21 °C."},
        ],  # type: ignore[list-item,misc]
        max_tokens=3,
    )
    assert answer.usage is not None and answer.usage.completion_tokens == 3


def test_raw_http_errors(network: Network) -> None:
    with httpx.Client(base_url=network.url, timeout=30) as http:
        malformed = http.post("/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
        assert malformed.status_code == 400
        assert malformed.json()["error"]["type"] == "invalid_request_error"
        big = http.post("/chat/completions", content=b"x" * (5 * 1024 * 1024))
        assert big.status_code == 413
        assert "exceeds" in big.json()["error"]["message"]
        assert http.get("/nowhere").status_code == 404
        not_allowed = http.get("/chat/completions")
        assert not_allowed.status_code == 405 and not_allowed.headers["allow"] == "POST"
        # digits that are not ASCII digits are a 400, not a crash
        assert http.get("/cocoon/receipts", params={"limit": "\u00b2"}).status_code == 400
        # the network still answers afterwards
        ok = http.post("/chat/completions", json={"model": MODEL, "messages": HELLO, "max_tokens": 3})
        assert ok.status_code == 200
        assert ok.json()["usage"]["completion_tokens"] == 3


def test_logs_and_files_of_proxy_and_workers_carry_no_content(network: Network) -> None:
    canary = "zebra-canary-4f9c1"
    with sync_client(network) as client:
        answer = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Repeat after me: {canary}"}],
            max_tokens=24,
            temperature=0,
        )
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"Say {canary}"}], max_tokens=24, stream=True
            )
        )
    text = answer.choices[0].message.content or ""
    assert len(text) > 10 and len(streamed) > 10
    for path in network.root.iterdir():
        if path.name.startswith(("proxy", "worker")):
            written = path.read_bytes()
            assert canary.encode() not in written, path.name
            assert text.strip().encode() not in written, path.name
            assert streamed.strip().encode() not in written, path.name


def test_receipts_are_kept_for_every_answer(client: openai.OpenAI, network: Network) -> None:
    answer = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6)
    with httpx.Client(base_url=network.url, timeout=30) as http:
        receipts = http.get("/cocoon/receipts", params={"limit": 5}).json()["data"]
        assert http.get("/cocoon/receipts", params={"limit": 0}).status_code == 400
    newest = receipts[0]
    assert newest["completion_tokens"] == answer.usage.completion_tokens
    assert newest["prompt_tokens"] == answer.usage.prompt_tokens
    assert newest["model"] == MODEL and len(newest["request_id"]) == 32
    assert newest["worker"] in _worker_keys(network)
    assert len(bytes.fromhex(newest["signed_record"])) > 64


def _worker_keys(network: Network) -> list[str]:
    return [public_bytes(load_identity(network.root / f"worker-{i}.key")).hex() for i in (1, 2)]


def test_what_the_engine_cannot_take_is_a_400_that_counts_against_no_worker(
    client: openai.OpenAI, network: Network
) -> None:
    # A prompt longer than the context window (2,048 tokens), logprobs the embedded engine does not
    # keep: the caller's to fix. Sent more often than it takes to suspend a worker (3 failures in a
    # row), on each of the two: as a 502 "engine_error", it got both suspended.
    def standing() -> list[tuple[str, int]]:
        with httpx.Client(base_url=network.url, timeout=30) as http:
            market = http.get("/market").json()
        return sorted((w["state"], w["errors"]) for m in market["models"] for w in m["workers"])

    before = standing()
    assert len(before) == 2 and all(state == "available" for state, _ in before)
    too_long = [{"role": "user", "content": "colour " * 5000}]
    for _ in range(4):
        with pytest.raises(openai.BadRequestError, match="context window"):
            client.chat.completions.create(model=MODEL, messages=too_long, max_tokens=3)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError, match="logprobs"):
            client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3, logprobs=True)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as caught:  # (the client's own check: keys are token ids)
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3, logit_bias={"abc": 1})  # type: ignore[arg-type,dict-item]
    assert caught.value.param == "logit_bias"  # type: ignore[attr-defined]
    answer = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,  # type: ignore[arg-type]
        max_tokens=3,
        parallel_tool_calls=False,  # (agent frameworks send it: every such request failed)
    )
    assert answer.choices[0].message.content
    assert standing() == before
