"""The relay hot path in the running network, on the synthetic benchmark engine: chunks passed
straight through (not via the relay task, nor the client's request task) arrive whole and in
order under load and to a caller that reads slowly, chunks the worker sealed together reach the
caller as one SSE event per token, a bad chunk amid a stream ends it with an error, and the
inter-token and idle timeouts still measure silence, not the length of a stream."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from benchmarks.overhead import ENGINE_DONE
from tests.integration.network import MODEL, Network

pytestmark = pytest.mark.integration

MESSAGES: Any = [{"role": "user", "content": "Count for me."}]


def test_many_fast_streams_arrive_whole_and_in_order(tmp_path: Path) -> None:
    net = Network(tmp_path, workers=1, capacity=64, worker={"engine": "benchmark"}, proxy={"client_streams": 0})
    try:

        async def one(api: openai.AsyncOpenAI, tokens: int) -> str:
            stream = await api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=tokens, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        async def load() -> list[str]:
            async with openai.AsyncOpenAI(base_url=net.url, api_key="unused", max_retries=0, timeout=60) as api:
                return await asyncio.gather(*(one(api, 150 + i) for i in range(24)))

        # every chunk is sealed in sequence: a lost, repeated or reordered one fails the request
        for i, text in enumerate(asyncio.run(load())):
            assert text == "".join(f" w{j % 64}" for j in range(150 + i))
    finally:
        net.stop()


@pytest.mark.parametrize(
    "timeouts",
    [{"proxy": {"inter_token_timeout": 0.5}}, {"client": {"idle_timeout": 0.5}}],
    ids=["proxy's inter-token timeout", "client's idle timeout"],
)
def test_a_stream_longer_than_the_timeout_on_silence_is_not_cut(tmp_path: Path, timeouts: dict[str, Any]) -> None:
    """Chunks pass the proxy's relay task and the client's request task by (each from its
    connection's read loop): their waits for the end must not count as silence."""
    net = Network(tmp_path, workers=1, worker={"engine": "benchmark", "bench_tokens_per_second": 25.0}, **timeouts)
    try:
        with openai.OpenAI(base_url=net.url, api_key="unused", max_retries=0, timeout=30) as api:
            chunks = list(api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=40, stream=True))
        # 1.6 s of answer: three times the timeout, never half a second silent
        assert [c.choices[0].delta.content for c in chunks if c.choices] == [f" w{j}" for j in range(40)]
        assert chunks[-1].choices[0].finish_reason == "length"
        assert "timed out" not in net.nodes["proxy"].log
    finally:
        net.stop()


def test_coalesced_chunks_reach_the_caller_as_one_event_per_token(tmp_path: Path) -> None:
    net = Network(tmp_path, workers=1, worker={"engine": "benchmark"}, proxy={"client_streams": 0})
    try:
        body = {
            "model": MODEL,
            "messages": MESSAGES,
            "max_tokens": 100,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with httpx.Client(timeout=30) as http:
            with http.stream("POST", net.url + "/chat/completions", json=body) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                raw = response.read()
            events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]
            assert events[-1] == b"[DONE]"
            chunks = [json.loads(e) for e in events[:-1]]
            *answer, usage = chunks
            assert [c["choices"][0]["delta"]["content"] for c in answer] == [f" w{j % 64}" for j in range(100)]
            assert all(c["id"] == usage["id"] and c["model"] == MODEL and c["usage"] is None for c in answer)
            assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 100
            plain = {"model": MODEL, "messages": MESSAGES, "max_tokens": 100}
            whole = http.post(net.url + "/chat/completions", json=plain)
            assert whole.status_code == 200, whole.text
            assert whole.json()["choices"][0]["message"]["content"] == "".join(f" w{j % 64}" for j in range(100))
        # the unpaced engine outpaces the network: the worker sealed several tokens per chunk
        done = r"100 completion tokens in [\d.]+ s, engine's first chunk after [\d.]+ ms, (\d+) sealed chunks"
        sealed = [int(n) for n in re.findall(done, net.nodes["worker-1"].log)]
        assert sealed and sealed[0] < 50
        # the overhead benchmark reads when the engine took and finished each request
        runs = ENGINE_DONE.findall(net.nodes["worker-1"].log)
        assert len(runs) >= 2 and all(float(start) < float(end) for _, start, end in runs)
    finally:
        net.stop()


def test_a_caller_that_reads_slowly_gets_every_event_in_order(tmp_path: Path) -> None:
    """A caller that stops reading backs the client's writes up: a write pushed from the read
    loop then waits for it, and what comes meanwhile waits behind it, in order."""
    tokens = 40_000  # some 7 MB of events: more than the sockets' buffers hold
    net = Network(
        tmp_path, workers=1, worker={"engine": "benchmark", "n_ctx": tokens + 100}, proxy={"client_streams": 0}
    )
    try:
        body = json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": tokens, "stream": True}).encode()
        url = httpx.URL(net.url)
        with socket.create_connection((url.host, url.port), timeout=60) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(
                f"POST {url.path}/chat/completions HTTP/1.1\r\nHost: {url.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            received = [sock.recv(1024)]
            time.sleep(2)  # the answer backs up meanwhile
            while data := sock.recv(1 << 20):
                received.append(data)
        head, _, raw = b"".join(received).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        events = re.findall(rb'"content":"([^"]*)"', raw)  # (chunked encoding may split an event: not these)
        assert [e.decode() for e in events] == [f" w{j % 64}" for j in range(tokens)]
        assert raw.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    finally:
        net.stop()


def test_an_invalid_chunk_amid_a_stream_ends_it_with_an_error(tmp_path: Path) -> None:
    net = Network(tmp_path, workers=0, worker={"engine": "benchmark", "bench_tokens_per_second": 50.0})
    try:
        net.start_worker(1, fault="invalid_chunk")
        net.wait_workers(1)
        with openai.OpenAI(base_url=net.url, api_key="unused", max_retries=0, timeout=30) as api:
            stream = api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20, stream=True)
            texts = []
            with pytest.raises(openai.APIError) as failed:
                for chunk in stream:
                    texts.append(chunk.choices[0].delta.content)
        assert texts == [" w0", " w1"] and failed.value.code == "protocol_error"
        assert "invalid chunk" in failed.value.message
    finally:
        net.stop()
