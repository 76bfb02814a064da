"""Failures of real processes: saturation, disconnects, killed and frozen workers, a stalling
engine, a restarted proxy, and peers that break the protocol."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest

from cocoon.channel.connect import HandshakeFailed, dial
from cocoon.channel.verify import PinnedKeyVerifier
from cocoon.keys import load_or_create_identity
from tests.integration.network import MODEL, Network, Node, free_port

pytestmark = pytest.mark.integration

LONG = [{"role": "user", "content": "Write a very long story about a dragon and a knight."}]
# the embedded model's end tokens (<|endoftext|>, <|im_end|>) never sampled: an answer that must
# take long runs to its max_tokens, whatever its sampling seed (a fresh one per request)
NO_END = {"0": -100.0, "2": -100.0}


def client_of(network: Network, **options: float) -> openai.OpenAI:
    return openai.OpenAI(base_url=network.url, api_key="unused", max_retries=0, **options)  # type: ignore[arg-type]


@pytest.fixture
def single_slot(tmp_path: Path) -> Iterator[Network]:
    """One worker with one slot and no queue, and a proxy that does not queue: the second request
    is 429. (With the worker's default queue of one, the second request waits there for the slot,
    up to the worker's 5 s queue timeout: a 429 only where the first answer takes longer.)"""
    net = Network(tmp_path, workers=1, capacity=1, proxy={"queue_timeout": 0.0}, worker={"queue": 0})
    try:
        yield net
    finally:
        net.stop()


def test_saturated_network_answers_429(single_slot: Network) -> None:
    with client_of(single_slot) as client:
        stream = client.chat.completions.create(
            model=MODEL, messages=LONG, max_tokens=400, stream=True, logit_bias=NO_END
        )
        next(iter(stream))  # the only slot is now busy
        with pytest.raises(openai.RateLimitError) as excinfo:
            client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=5)
        assert excinfo.value.status_code == 429
        assert excinfo.value.response.headers["retry-after"] == "1"
        stream.close()


def test_disconnecting_caller_frees_the_worker_slot(single_slot: Network) -> None:
    with client_of(single_slot, timeout=30) as client:
        stream = client.chat.completions.create(
            model=MODEL, messages=LONG, max_tokens=1500, stream=True, logit_bias=NO_END
        )
        received = [chunk for _, chunk in zip(range(3), stream, strict=False)]
        assert len(received) == 3
        stream.close()  # the caller goes away mid-stream
        single_slot.nodes["worker-1"].wait_for_log("cancelled by the proxy")
        answer = client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=4)
        assert answer.usage.completion_tokens == 4
    assert "+1500 tokens" not in single_slot.nodes["proxy"].log


def test_disconnect_of_non_streamed_request_cancels_it(single_slot: Network) -> None:
    body = {"model": MODEL, "messages": LONG, "max_tokens": 1500, "logit_bias": NO_END}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(single_slot.url + "/chat/completions", json=body, timeout=1.0)
    single_slot.nodes["worker-1"].wait_for_log("cancelled by the proxy")
    with client_of(single_slot) as client:
        assert client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=3).usage.completion_tokens == 3


def test_killed_worker_leaves_the_other_serving(tmp_path: Path) -> None:
    net = Network(tmp_path, workers=2, capacity=2)
    try:
        net.nodes["worker-1"].kill()
        with client_of(net, timeout=30) as client:
            for _ in range(4):
                answer = client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=4)
                assert answer.usage.completion_tokens == 4
        assert net.worker_requests_done("worker-2") >= 4
        # the only remaining worker dies: requests fail fast with 503
        net.nodes["worker-2"].kill()
        with client_of(net, timeout=30) as client:
            started = time.monotonic()
            with pytest.raises(openai.InternalServerError) as excinfo:
                client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=4)
            assert excinfo.value.status_code == 503
            assert time.monotonic() - started < 2.0
        # a worker that comes back is used again
        net.start_worker(1)
        net.wait_workers(1)
        with client_of(net, timeout=30) as client:
            assert client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=2).usage.completion_tokens == 2
    finally:
        net.stop()


def test_frozen_worker_is_detected_by_heartbeats(tmp_path: Path) -> None:
    net = Network(tmp_path, workers=1, capacity=1, proxy={"heartbeat_interval": 0.3, "dead_after": 1.5})
    try:
        net.nodes["worker-1"].kill(signal.SIGSTOP)
        net.nodes["proxy"].wait_for_log("dead peer", timeout=10)
        with client_of(net, timeout=10) as client, pytest.raises(openai.InternalServerError) as excinfo:
            client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=2)
        assert excinfo.value.status_code == 503
        net.nodes["worker-1"].kill(signal.SIGCONT)
        net.wait_workers(1, timeout=30)  # it redials once it runs again
    finally:
        net.stop()


def test_worker_and_client_reconnect_after_proxy_restart(tmp_path: Path) -> None:
    net = Network(tmp_path, workers=1, capacity=1, worker={"reconnect_max": 1.0})
    try:
        net.nodes["proxy"].kill()
        time.sleep(1.0)
        net.start_proxy()
        net.wait_workers(1, timeout=30)
        with client_of(net, timeout=30) as client:
            assert client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=2).usage.completion_tokens == 2
        assert "redialing" in net.nodes["worker-1"].log
    finally:
        net.stop()


class StallingEngineServer(ThreadingHTTPServer):
    """Test double: an OpenAI-compatible engine that lists a model, then never answers."""

    daemon_threads = True

    def __init__(self) -> None:
        release = self.release = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"data": [{"id": "stall"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                release.wait(30)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def test_stalling_engine_gives_504(tmp_path: Path) -> None:
    # A streamed answer is given up after idle_timeout of silence; a non-streamed one, which comes
    # whole once made, only at the request's deadline.
    server = StallingEngineServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    net = Network(
        tmp_path,
        workers=1,
        worker={"engine": "openai_http", "engine_url": url},
        client={"idle_timeout": 1.5, "request_timeout": 5.0},
    )
    try:
        with client_of(net, timeout=30) as client:
            for stream, at_least, at_most in ((True, 1.4, 4.5), (False, 4.9, 10.0)):
                started = time.monotonic()
                with pytest.raises(openai.InternalServerError) as excinfo:
                    answer = client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=2, stream=stream)
                    for _ in answer if stream else ():  # type: ignore[union-attr]
                        pass
                assert excinfo.value.status_code == 504
                assert at_least <= time.monotonic() - started < at_most
    finally:
        server.release.set()
        net.stop()
        server.shutdown()
        server.server_close()


def test_request_longer_than_request_timeout_gives_504(tmp_path: Path) -> None:
    net = Network(tmp_path, workers=1, capacity=1, client={"request_timeout": 6.0, "idle_timeout": 30.0})
    try:
        with client_of(net, timeout=30) as client:
            stream = client.chat.completions.create(
                model=MODEL, messages=LONG, max_tokens=2000, stream=True, logit_bias=NO_END
            )
            with pytest.raises(openai.APIError) as excinfo:
                for _ in stream:
                    pass
            assert "took too long" in str(excinfo.value.message)
            # the stream was cancelled, so the single slot is free again
            assert client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=2).usage.completion_tokens == 2
    finally:
        net.stop()


def test_peers_that_break_the_protocol_are_cut_off(network: Network) -> None:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    # an oversized frame header right after TLS: the proxy closes this connection
    with socket.create_connection(("127.0.0.1", network.proxy_port)) as raw, tls.wrap_socket(raw) as conn:
        conn.settimeout(5)
        conn.recv(4096)  # the challenge
        conn.sendall(struct.pack(">IB", 2**31, 1))
        while conn.recv(4096):
            pass
    # garbage that is not msgpack
    with socket.create_connection(("127.0.0.1", network.proxy_port)) as raw, tls.wrap_socket(raw) as conn:
        conn.settimeout(5)
        conn.recv(4096)
        conn.sendall(struct.pack(">IB", 5, 1) + b"\xc1\xc1\xc1\xc1")
        while conn.recv(4096):
            pass
    network.nodes["proxy"].wait_for_log("exceeds the limit")
    network.nodes["proxy"].wait_for_log("undecodable message", "invalid message")
    assert network.nodes["proxy"].alive()
    with client_of(network, timeout=30) as client:
        assert client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=2).usage.completion_tokens == 2


def test_unpinned_keys_are_rejected(network: Network, tmp_path: Path) -> None:
    stranger = load_or_create_identity(tmp_path / "stranger.key")
    right_proxy = PinnedKeyVerifier({"proxy": [bytes.fromhex(network.proxy_key)]})

    async def attempts() -> None:
        with pytest.raises(HandshakeFailed, match="not pinned"):
            await dial("127.0.0.1", network.proxy_port, key=stranger, role="worker", verifier=right_proxy)
        wrong_proxy = PinnedKeyVerifier({"proxy": [bytes(32)]})
        with pytest.raises(HandshakeFailed, match="listener rejected"):
            await dial("127.0.0.1", network.proxy_port, key=stranger, role="worker", verifier=wrong_proxy)

    asyncio.run(attempts())
    network.nodes["proxy"].wait_for_log("is not pinned here")


def test_one_worker_serves_several_proxies(tmp_path: Path) -> None:
    first = Network(tmp_path / "a", workers=0)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "worker-1.key").write_bytes((tmp_path / "a" / "worker-1.key").read_bytes())
    (tmp_path / "b" / "worker-1.key").chmod(0o600)
    second = Network(tmp_path / "b", workers=0)  # its proxy pins the same worker key
    try:
        pins = [f"127.0.0.1:{net.proxy_port}={net.proxy_key}" for net in (first, second)]
        first.start_worker(1, ["--proxy", pins[0], "--proxy", pins[1]])
        first.wait_workers(1)
        second.wait_workers(1)
        for net in (first, second):
            with client_of(net, timeout=30) as client:
                assert (
                    client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=2).usage.completion_tokens
                    == 2
                )
        assert first.worker_requests_done("worker-1") == 2
    finally:
        first.stop()
        second.stop()


def test_client_price_cap_keeps_it_off_dearer_workers(tmp_path: Path) -> None:
    net = Network(tmp_path, workers=1, worker={"price_coefficient": 2.0}, client={"max_price": 1.5})
    try:
        with client_of(net, timeout=30) as client, pytest.raises(openai.InternalServerError) as excinfo:
            client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=2)
        assert excinfo.value.status_code == 503
        assert "price cap" in str(excinfo.value.message)
    finally:
        net.stop()


def test_per_client_limits_at_the_proxy(tmp_path: Path) -> None:
    # one request per 4 s: far longer than a short answer takes even on a loaded machine, so the
    # bucket cannot refill between an accepted request and the next one
    limits = {"client_streams": 1, "client_rate": 0.25, "max_tokens_cap": 50}
    net = Network(tmp_path, workers=1, capacity=2, proxy=limits)
    try:
        with client_of(net, timeout=30) as client:
            with pytest.raises(openai.BadRequestError, match="max_tokens above 50"):  # refused before the bucket
                client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=60)
            stream = client.chat.completions.create(
                model=MODEL, messages=LONG, max_tokens=40, stream=True, logit_bias=NO_END
            )
            next(iter(stream))
            with pytest.raises(openai.RateLimitError, match=r"too many concurrent requests|rate limit"):
                client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=2)
            stream.close()
            deadline = time.monotonic() + 20
            while True:  # the stream's slot comes free and the bucket refills; refusals cost nothing
                try:
                    answer = client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=2)
                    break
                except openai.RateLimitError:
                    assert time.monotonic() < deadline, "the limits never let a request through again"
                    time.sleep(0.25)
            assert answer.usage is not None and answer.usage.completion_tokens == 2
            with pytest.raises(openai.RateLimitError, match="rate limit"):
                client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=2)
    finally:
        net.stop()


def test_killing_one_of_two_proxies_loses_no_request_that_had_not_started(tmp_path: Path) -> None:
    # requests wait in the proxies' queues for the one worker each: long enough on a loaded machine
    # (the default 5 s turned some into 429s there, which is not what this test is about)
    queue = {"queue_timeout": 30.0}
    first = Network(tmp_path / "a", workers=1, capacity=2, proxy=queue)
    (tmp_path / "b").mkdir()
    shutil.copy2(tmp_path / "a" / "client.key", tmp_path / "b" / "client.key")  # both proxies pin this client
    second = Network(tmp_path / "b", workers=1, capacity=2, proxy=queue)
    port = free_port()
    config = tmp_path / "client.toml"
    pins = [f'{{ address = "127.0.0.1:{net.proxy_port}", public_key = "{net.proxy_key}" }}' for net in (first, second)]
    config.write_text(f'[client]\nlisten = "127.0.0.1:{port}"\nproxy = {pins[0]}\nproxies = [{pins[1]}]\n')
    client = Node(
        "two-proxy-client",
        ["client", "--config", str(config), "--key-file", str(tmp_path / "a" / "client.key")],
        tmp_path,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 30
        while True:  # both proxies connected
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url.removesuffix("/v1") + "/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline
            time.sleep(0.1)

        async def load() -> list[int]:
            async with openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60) as api:

                async def one(i: int) -> int:
                    await asyncio.sleep(0.05 * i)
                    answer = await api.chat.completions.create(model=MODEL, messages=LONG, max_tokens=40)
                    return answer.usage.completion_tokens

                async def kill_first_proxy() -> None:
                    await asyncio.sleep(0.3)
                    first.nodes["proxy"].kill()

                results = await asyncio.gather(*(one(i) for i in range(10)), kill_first_proxy())
                return [r for r in results if r is not None]

        completed = asyncio.run(load())
        assert len(completed) == 10 and all(c == 40 for c in completed)  # none lost
        assert "trying another proxy" in client.log or second.worker_requests_done("worker-1") == 10
    finally:
        client.stop()
        first.stop()
        second.stop()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_two_hundred_concurrent_streams_complete_or_get_429(tmp_path: Path) -> None:
    net = Network(tmp_path, workers=2, capacity=2, proxy={"queue_timeout": 20.0, "max_queue": 100})
    try:
        body = {"model": MODEL, "messages": LONG, "max_tokens": 3, "stream": True}

        async def one(http: httpx.AsyncClient) -> str:
            async with http.stream("POST", net.url + "/chat/completions", json=body) as response:
                if response.status_code == 429:
                    assert response.headers["retry-after"]
                    return "429"
                assert response.status_code == 200
                lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
                assert lines[-1] == "data: [DONE]", lines[-2:]
                return "ok"

        async def burst(count: int) -> list[str]:
            limits = httpx.Limits(max_connections=count)
            async with httpx.AsyncClient(timeout=120, limits=limits) as http:
                async with asyncio.timeout(180):  # none hangs
                    return list(await asyncio.gather(*(one(http) for _ in range(count))))

        asyncio.run(burst(8))  # warm up
        pid = net.nodes["proxy"].process.pid
        before = _rss_kib(pid)
        outcomes = asyncio.run(burst(200))
        assert set(outcomes) <= {"ok", "429"} and outcomes.count("ok") >= 50  # 64 per client at most
        time.sleep(1.0)
        after = _rss_kib(pid)
        assert after <= before * 1.10 + 4096, (before, after)  # back to its level (10 %, plus 4 MiB of slack)
    finally:
        net.stop()


@pytest.mark.parametrize(
    ("fault", "refused", "says"),
    [
        ("full", openai.RateLimitError, "at capacity"),  # kept busy by other proxies: a 429
        # a request no worker can open (garbage, or sealed for a stale key): anyone can send one,
        # and were it a worker failure, any client could get honest workers suspended
        ("seal_error", openai.APIStatusError, ""),
    ],
)
def test_a_worker_that_refuses_through_no_fault_of_its_own_keeps_its_standing(
    tmp_path: Path, fault: str, refused: type[openai.APIStatusError], says: str
) -> None:
    net = Network(tmp_path, workers=0, proxy={"queue_timeout": 1.0})  # (a full worker is waited for that long)
    try:
        net.start_worker(1, fault=fault)
        net.wait_workers(1)
        with client_of(net, timeout=30) as client:
            for _ in range(4):  # more than it takes to suspend a failing worker
                with pytest.raises(refused) as excinfo:
                    client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=2)
                assert says in str(excinfo.value.message)
        (listed,) = httpx.get(net.url + "/market", timeout=10).json()["models"][0]["workers"]
        assert listed["state"] == "available" and listed["errors"] == 0
    finally:
        net.stop()


def test_a_worker_that_never_answers_is_given_up_at_the_proxys_first_token_timeout(tmp_path: Path) -> None:
    # the client would wait 120 s (its idle_timeout): the proxy's limit ends the wait, and the
    # worker's standing shows it
    net = Network(tmp_path, workers=0, proxy={"first_token_timeout": 1.0})
    try:
        net.start_worker(1, fault="silent")
        net.wait_workers(1)
        with client_of(net, timeout=60) as client:
            started = time.monotonic()
            with pytest.raises(openai.InternalServerError) as excinfo:
                client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=2, stream=True)
            assert excinfo.value.status_code == 504  # its only candidate timed out
            assert time.monotonic() - started < 10
        net.nodes["proxy"].wait_for_log("timed out waiting for its first chunk")
        (listed,) = httpx.get(net.url + "/market", timeout=10).json()["models"][0]["workers"]
        assert listed["timeouts"] == 1
    finally:
        net.stop()


def test_a_whole_answer_may_take_longer_than_the_first_token_timeout(tmp_path: Path) -> None:
    # A non-streamed answer arrives as one chunk: the wait for it is its whole generation.
    net = Network(tmp_path, workers=0, proxy={"first_token_timeout": 1.0})
    try:
        net.start_worker(1, fault="slow:0.4")  # 0.4 s per token of the whole answer
        net.wait_workers(1)
        with client_of(net, timeout=60) as client:
            answer = client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=6)
            assert answer.usage is not None and answer.usage.completion_tokens >= 3  # over 1 s
    finally:
        net.stop()


def test_an_unknown_error_code_from_a_worker_is_a_502_and_counts_against_it(tmp_path: Path) -> None:
    # the worker fails after its first chunk (no retry then) with a code no version knows
    net = Network(tmp_path, workers=0)
    try:
        net.start_worker(1, fault="unknown_code")
        net.wait_workers(1)
        with client_of(net, timeout=30) as client:
            with pytest.raises(openai.InternalServerError) as whole:
                client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=5)
            assert whole.value.status_code == 502 and whole.value.code == "protocol_error"
            assert "from_a_newer_worker" in whole.value.message
            stream = client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=5, stream=True)
            with pytest.raises(openai.APIError) as streamed:
                for _ in stream:
                    pass
            assert streamed.value.code == "protocol_error"
        (listed,) = httpx.get(net.url + "/market", timeout=10).json()["models"][0]["workers"]
        assert listed["errors"] == 2
    finally:
        net.stop()
