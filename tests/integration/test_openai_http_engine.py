"""A worker driving a real OpenAI-compatible engine server: ``python -m llama_cpp.server``
with the embedded model, on loopback."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from cocoon.engine.llama_cpp import embedded_model_path
from tests.integration.network import MODEL, Network, free_port

pytestmark = pytest.mark.integration

ASK = [{"role": "user", "content": "Write a long story about a dragon."}]


@pytest.fixture(scope="module")
def engine_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("engine") / "llama_cpp_server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_model_path())),
                *("--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(url + "/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "llama_cpp.server did not start"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def http_network(engine_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    net = Network(
        Path(tmp_path_factory.mktemp("httpnet")),
        workers=1,
        capacity=2,
        worker={"engine": "openai_http", "engine_url": engine_server},
    )
    try:
        yield net
    finally:
        net.stop()


def test_non_streamed_usage_comes_from_the_engine(http_network: Network, engine_server: str) -> None:
    direct = httpx.post(
        engine_server + "/chat/completions", json={"messages": ASK, "max_tokens": 20}, timeout=60
    ).json()
    with openai.OpenAI(base_url=http_network.url, api_key="unused", max_retries=0) as client:
        answer = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=20, temperature=0)
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.prompt_tokens == direct["usage"]["prompt_tokens"]  # the chat template counted
    assert answer.usage.completion_tokens == 20
    assert "openai_http" in http_network.nodes["proxy"].log


def test_stream_from_an_engine_without_stream_usage_is_metered(http_network: Network) -> None:
    """llama_cpp.server sends no usage in streams: the worker meters with its tokenizer."""
    with openai.OpenAI(base_url=http_network.url, api_key="unused", max_retries=0) as client:
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=ASK,
                max_tokens=20,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens == 20
    assert usage.prompt_tokens > 0


def test_text_completion_through_the_engine(http_network: Network) -> None:
    with openai.OpenAI(base_url=http_network.url, api_key="unused", max_retries=0) as client:
        answer = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0)
        chunks = list(
            client.completions.create(
                model=MODEL,
                prompt="Once upon a time",
                max_tokens=6,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert answer.usage.completion_tokens == 6
    assert "".join(c.choices[0].text for c in chunks if c.choices) == answer.choices[0].text
    assert chunks[-1].usage.completion_tokens == 6
