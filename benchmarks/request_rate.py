"""Request rate: short non-streamed requests through the whole network, with payments on.

Run: ``cocoon bench --only rate`` (or ``.venv/bin/python -m benchmarks.request_rate``).

A proxy, one worker on the synthetic ``BenchmarkEngine`` and a client run as separate
processes on loopback; with payments on, the local chain service (the real contracts in the
TON sandbox) holds the registry and the payment channels, so every request is billed as in
production: the proxy checks the worker-signed usage record, charges the client's channel and
credits the worker's in its SQLite books, signs the worker a payout voucher, and checks and
stores the client's voucher for the answer (the worker and the client each check, sign and
store their side too). A load generator in this process keeps ``CALLERS`` callers busy, each
sending one short chat request (a few prompt tokens, ``ANSWER_TOKENS`` answer tokens, not
streamed) after the other on a kept-alive HTTP connection to the client's OpenAI API.

Measured over a timed window after a warm-up:

- **requests/s**: answers received per wall second. On 2 shared cores the client (which
  seals every request and verifies and pays for every answer) and the worker take most of
  the CPU, so this is the whole network's rate here, not the proxy's.
- **requests per proxy CPU-second** ("per core"): the same answers divided by the CPU time the
  proxy process used in the window (its threads' time on a CPU, to the nanosecond:
  ``benchmarks/cpu.py``): what one proxy process on one fully used core sustains. Target: ≥ 1,000 with payments on.

Baseline in the same run: the same network and load with payments off (no chain), so the
ratio is what payments cost the proxy. The paying nodes poll the registry and settle at the
default intervals (10 s and 5 s), not the half-second ones of the integration tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.cpu import cpu_seconds
from benchmarks.harness import Suite, percentile
from benchmarks.relay import BENCH_PROXY, bench_worker, chat_body, isolated_home, pids_of
from tests.integration.network import MODEL, Chain, Network

# the defaults of ``cocoon.config`` for the background chain work (the test settings poll and
# settle every half second, which would bill the chain's HTTP polling to every request)
PRODUCTION_POLLING = {"registry_poll": 10.0}
CALLERS = 32
ANSWER_TOKENS = 4
TARGET_PER_CORE = 1_000.0
# the benchmark engine's model hash (``cocoon.run.worker_model_hash``): the registry must allow it
BENCH_MODEL_HASH = hashlib.sha256(b"cocoon benchmark engine").digest()


class BenchChain(Chain):
    """The local chain service, with registries that allow the benchmark engine's model."""

    def prepare(self, root: Path, proxy_key: bytes, proxy_port: int, nodes: list[str], params: Any = None) -> str:
        from cocoon.up_chain import prepare_chain

        local = asyncio.run(
            prepare_chain(
                self.url,
                root,
                proxy_key=proxy_key,
                proxy_endpoint=f"127.0.0.1:{proxy_port}",
                model_hash=BENCH_MODEL_HASH,
                model=MODEL,
                nodes=nodes,
                params=params or self.params,
            )
        )
        return local.root


class Window:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.requests = 0
        self.errors = 0
        self.latencies: list[float] = []
        self.cpu: dict[str, float] = {}

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def per_cpu(self, name: str) -> float:
        used = self.cpu.get(name, 0.0)
        return self.requests / used if used > 0 else float("nan")

    def shares(self) -> str:
        return ", ".join(f"{name} {used / self.seconds * 100:.0f} %" for name, used in self.cpu.items())


async def request_load(url: str, callers: int, *, warmup: float, duration: float, pids: dict[str, int]) -> Window:
    """``callers`` callers, each sending requests one after the other on its own kept-alive
    connection; the answers completed in the last ``duration`` seconds count."""
    import httpx  # only for parsing the URL

    parsed = httpx.URL(url)
    host, port = parsed.host, parsed.port or 80
    payload = json.dumps(chat_body(ANSWER_TOKENS, stream=False)).encode()
    request = (
        f"POST {parsed.path}/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    window = Window(duration)
    loop = asyncio.get_running_loop()
    begin = loop.time() + warmup
    end = begin + duration

    async def caller() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while loop.time() < end:
                sent = loop.time()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
                now = loop.time()
                ok = head.startswith(b"HTTP/1.1 200") and b'"usage"' in body
                if begin <= now < end:
                    if ok:
                        window.requests += 1
                        window.latencies.append(now - sent)
                    else:
                        window.errors += 1
                if not ok:
                    await asyncio.sleep(0.01)
        finally:
            writer.close()

    tasks = [asyncio.create_task(caller()) for _ in range(callers)]
    await asyncio.sleep(max(0.0, begin - loop.time()))
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    before["load generator"] = time.process_time()
    await asyncio.sleep(max(0.0, end - loop.time()))
    window.cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    window.cpu["load generator"] = time.process_time() - before["load generator"]
    await asyncio.gather(*tasks)
    return window


def measure(suite: Suite, net: Network, label: str, *, paid: bool) -> None:
    warmup, duration = (0.5, 1.5) if suite.quick else (1.0, 3.0)
    pids = pids_of(net)
    asyncio.run(request_load(net.url, 4, warmup=0.0, duration=0.5, pids=pids))  # connections, caches
    windows = []
    for _ in range(suite.repeats):
        window = asyncio.run(request_load(net.url, CALLERS, warmup=warmup, duration=duration, pids=pids))
        windows.append(window)
        suite.progress(
            f"{label}: {window.rate:,.0f} requests/s, {window.per_cpu('proxy'):,.0f} per proxy CPU-second, "
            f"{window.errors} errors; CPU {window.shares()}"
        )
    per_core = [w.per_cpu("proxy") for w in windows]
    failed = sum(w.errors for w in windows)
    base = "payments off (baseline)" if paid else ""
    # a failed request counts in none of the figures below: any failure fails the target
    suite.record(f"{label}: failed requests", "", [float(w.errors) for w in windows],
                 target="none", met=failed == 0,
                 note="answers that were not a 200 with usage, left out of the rate and the latency")  # fmt: skip
    suite.record(
        f"{label}: requests/s",
        "requests/s",
        [w.rate for w in windows],
        baseline=f"{base}: requests/s" if base else "",
        note=f"{CALLERS} callers; CPU use: {windows[len(windows) // 2].shares()}",
    )
    suite.record(
        f"{label}: per proxy CPU-second",
        "requests/s",
        per_core,
        baseline=f"{base}: per proxy CPU-second" if base else "",
        target=f"≥ {TARGET_PER_CORE:,.0f} requests/s per core" if paid else "",
        met=statistics.median(per_core) >= TARGET_PER_CORE and failed == 0 if paid else None,
    )
    suite.record(
        f"{label}: request latency (p99 per run)",
        "s",
        [percentile(w.latencies, 0.99) for w in windows],
        samples=[s for w in windows for s in w.latencies],
        note=f"{CALLERS} callers at once, each waiting for its answer before the next request",
    )


def run(suite: Suite) -> None:
    with isolated_home() as tmp:
        suite.progress("payments off: starting proxy, worker (benchmark engine) and client")
        net = Network(tmp / "plain", workers=1, proxy=BENCH_PROXY, worker=bench_worker())
        try:
            measure(suite, net, "payments off (baseline)", paid=False)
        finally:
            net.stop()
        suite.progress("payments on: starting the local chain and a paying network")
        chain = BenchChain(tmp / "chain")
        try:
            net = Network(
                tmp / "paid",
                workers=1,
                proxy={**BENCH_PROXY, **PRODUCTION_POLLING, "settle_interval": 5.0},
                worker=bench_worker(**PRODUCTION_POLLING, settle_interval=5.0),
                client=PRODUCTION_POLLING,
                chain=chain,
            )
            try:
                measure(suite, net, "payments on", paid=True)
            finally:
                net.stop()
        finally:
            chain.stop()


if __name__ == "__main__":
    out = Suite(Path("bench-results"), repeats=int(os.environ.get("REPEATS", "3")), quick=bool(os.environ.get("QUICK")))
    out.scenario = "rate"
    run(out)
    print(out.markdown())
