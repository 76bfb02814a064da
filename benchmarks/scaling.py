"""Scaling and memory: throughput with one and two proxy processes, and resident memory of the
proxy and the workers after 100 requests compared with after 10,000 (at most 10 % growth).

Real processes on loopback (``tests.integration.network``): two proxies, two workers on the
synthetic engine (``engine = "benchmark"``: it answers at once, so the network's own cost is
what is measured) that serve both proxies, and three clients: clients 1 and 3 use proxy 1,
client 2 uses proxy 2. Requests are short and not streamed (``max_tokens`` 4), sent over
keep-alive HTTP/1.1 connections, 32 per client, by a load generator written on asyncio
streams: httpx's AsyncClient spends about 5 ms of CPU per request here, more than the client,
proxy and worker together, and on two cores it would mostly measure itself.

Throughput, each run a fixed time, all answers over the wall time, the three alternating:
- 1 proxy, 1 client: client 1 → proxy 1;
- 1 proxy, 2 clients: clients 1 and 3 → proxy 1;
- 2 proxies, 2 clients: client 1 → proxy 1 and client 2 → proxy 2, the figure compared with
  the one before, so that both have as many client processes (a client costs more CPU per
  request than a proxy, and one client alone is the first limit). One client configured with
  both proxies would not spread its load: it sends every request to the proxy with the fewest
  failures and the lowest latency.

Each worker has ``capacity`` 64: a worker announces its whole capacity to every proxy it serves,
so with 32 slots the two proxies together overfill it, it answers "worker at capacity", and
requests fail with "every candidate worker failed" once both workers have refused.

Memory: RSS of every process after the first 100 requests (through proxy 1), then after
10,000 requests in all through proxy 1 (1,000 with ``--quick``).

Run: .venv/bin/cocoon bench --only scaling   (``--quick`` for a smoke run)
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.cpu import cpu_seconds
from benchmarks.harness import Suite, rss_mib
from cocoon.keys import load_or_create_identity, public_bytes
from tests.integration.network import MODEL, Network, Node, free_port, toml_value

CONCURRENCY = 32  # connections per client
WORKERS = 2
CAPACITY = 2 * CONCURRENCY  # per worker: room for both clients at once (see the docstring)
WARMUP = 100
MAX_TOKENS = 4
GROWTH_TARGET = 1.10


@dataclass
class Load:
    """What one load run measured."""

    done: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed else float("nan")


def request_bytes(url: str) -> tuple[str, int, bytes]:
    parsed = httpx.URL(url)
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": MAX_TOKENS}
    ).encode()
    assert parsed.host and parsed.port
    head = (
        f"POST {parsed.path}/chat/completions HTTP/1.1\r\nHost: {parsed.host}:{parsed.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return parsed.host, parsed.port, head.encode() + body


async def drive(url: str, *, requests: int | None = None, seconds: float | None = None) -> Load:
    """Closed-loop load on one client over ``CONCURRENCY`` keep-alive connections: either
    ``requests`` answers in all, or as many as fit in ``seconds`` (requests already sent are
    awaited). Every answer must be a 200 with a JSON body."""
    host, port, request = request_bytes(url)
    load = Load()
    budget = requests
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + seconds if seconds is not None else None

    async def connection() -> None:
        nonlocal budget
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while not load.failures:
                if budget is not None:
                    if budget <= 0:
                        break
                    budget -= 1
                if deadline is not None and loop.time() >= deadline:
                    break
                sent = loop.time()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                load.latencies.append(loop.time() - sent)
                status = head.split(b" ", 2)[1]
                if status != b"200" or not body.startswith(b"{"):
                    load.failures.append(f"HTTP {status.decode()}: {body[:300]!r}")
                    break
                load.done += 1
        finally:
            writer.close()

    await asyncio.wait_for(asyncio.gather(*(connection() for _ in range(CONCURRENCY))), timeout=300)
    load.elapsed = loop.time() - start
    if load.failures:
        raise RuntimeError(f"{len(load.failures)} request(s) through {url} failed; first: {load.failures[0]}")
    return load


async def drive_all(urls: list[str], seconds: float) -> list[Load]:
    """``drive`` each client at once, for ``seconds``; the first failure once all have ended."""
    results = await asyncio.gather(*(drive(url, seconds=seconds) for url in urls), return_exceptions=True)
    loads = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        loads.append(result)
    return loads


def identity(path: Path) -> str:
    return public_bytes(load_or_create_identity(path)).hex()


def write_config(path: Path, tables: dict[str, dict[str, Any]]) -> Path:
    path.write_text(
        "\n".join(
            f"[{table}]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in values.items()) + "\n"
            for table, values in tables.items()
        )
    )
    return path


class Bench:
    """The network: proxy 1 (``Network``'s own, with client 1), then proxy 2 with client 2, and
    client 3, a second client of proxy 1. The workers serve both proxies."""

    def __init__(
        self,
        root: Path,
        *,
        workers: int = WORKERS,
        capacity: int = CAPACITY,
        worker: dict[str, Any] | None = None,
        proxy_2: dict[str, Any] | None = None,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.workers = workers
        pins = [
            {"address": f"127.0.0.1:{free_port()}", "public_key": identity(root / name)}
            for name in ("proxy.key", "proxy-2.key")
        ]
        client_keys = {name: identity(root / f"{name}.key") for name in ("client", "client-2", "client-3")}
        self.net = Network(
            root,
            workers=workers,
            capacity=capacity,
            proxy={"listen": pins[0]["address"], "client_keys": [client_keys["client"], client_keys["client-3"]]},
            worker={"engine": "benchmark", "proxies": pins, "reconnect_max": 1.0, **(worker or {})},
            client={"proxy": pins[0]},
            wait=False,
        )
        self.urls = {"client": self.net.url}
        nodes = self.net.nodes
        proxy_2 = {
            "listen": pins[1]["address"],
            "key_file": str(root / "proxy-2.key"),
            "worker_keys": self.net.worker_keys,
            "client_keys": [client_keys["client-2"]],
            "models": [MODEL],
            **(proxy_2 or {}),
        }
        config = write_config(root / "proxy-2.toml", {"proxy": proxy_2})
        nodes["proxy-2"] = Node("proxy-2", ["proxy", "--config", str(config)], root)
        for name, pin in (("client-2", pins[1]), ("client-3", pins[0])):
            port = free_port()
            table = {"listen": f"127.0.0.1:{port}", "key_file": str(root / f"{name}.key"), "proxy": pin}
            config = write_config(root / f"{name}.toml", {"client": table})
            nodes[name] = Node(name, ["client", "--config", str(config)], root)
            self.urls[name] = f"http://127.0.0.1:{port}/v1"

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until each client lists both workers (so both proxies have them)."""
        deadline = time.monotonic() + timeout
        for url in self.urls.values():
            last: Any = None
            while True:
                for node in self.net.nodes.values():
                    if not node.alive():
                        raise RuntimeError(f"{node.name} exited early:\n{node.log[-3000:]}")
                try:
                    last = httpx.get(url + "/models", timeout=2).json()
                    if any(m["id"] == MODEL and m["workers"] == self.workers for m in last.get("data", [])):
                        break
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"network not ready at {url}: {last}")
                time.sleep(0.1)

    def cpu_seconds(self) -> float:
        """CPU time of every node so far, and of this process (the load)."""
        return sum(cpu_seconds(node.process.pid) for node in self.net.nodes.values()) + cpu_seconds(os.getpid())

    def rss(self) -> dict[str, float]:
        return {name: rss_mib(node.process.pid) for name, node in self.net.nodes.items()}

    def worker_requests(self) -> dict[str, int]:
        return {f"worker-{i}": self.net.worker_requests_done(f"worker-{i}") for i in range(1, self.workers + 1)}

    def stop(self) -> None:
        self.net.stop()


def run(suite: Suite) -> None:
    quick = suite.quick
    total_target = 1_000 if quick else 10_000
    seconds = 1.5 if quick else 4.0
    previous_home = os.environ.get("COCOON_HOME")
    with tempfile.TemporaryDirectory(prefix="cocoon-scaling-") as name:
        root = Path(name)
        os.environ["COCOON_HOME"] = str(root / "home")  # the children's data directory
        try:
            bench = Bench(root / "net")
            try:
                measure(suite, bench, total_target, seconds)
            finally:
                bench.stop()
        finally:
            if previous_home is None:
                os.environ.pop("COCOON_HOME", None)
            else:
                os.environ["COCOON_HOME"] = previous_home


# what each throughput figure drives at once: the clients (client 3 is proxy 1's second client)
MODES = {
    "1 proxy, 1 client": ("client",),
    "1 proxy, 2 clients": ("client", "client-3"),
    "2 proxies, 2 clients": ("client", "client-2"),
}
THROUGH_PROXY_1 = ("client", "client-3")


@dataclass
class Figures:
    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # the median of each run
    samples: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # CPU seconds per answer, all processes


def measure(suite: Suite, bench: Bench, total_target: int, seconds: float) -> None:
    started = time.monotonic()
    bench.wait_ready()
    processes = ", ".join(bench.net.nodes)
    suite.progress(f"network up in {time.monotonic() - started:.1f} s: {processes}")
    urls = bench.urls

    # warm-up: the first requests, then the memory every process starts from
    counts = dict.fromkeys(urls, 0)
    counts["client"] += asyncio.run(drive(urls["client"], requests=WARMUP)).done
    early = bench.rss()
    suite.progress(f"RSS after {WARMUP} requests: " + ", ".join(f"{k} {v:.1f} MiB" for k, v in early.items()))

    figures = {mode: Figures() for mode in MODES}
    proxy_2_share = []
    for repeat in range(suite.repeats):
        line = []
        for mode, clients in MODES.items():  # alternating, so that drift hits every mode alike
            cpu_before = bench.cpu_seconds()
            loads = asyncio.run(drive_all([urls[c] for c in clients], seconds))
            cpu = bench.cpu_seconds() - cpu_before
            done = sum(load.done for load in loads)
            for client, load in zip(clients, loads, strict=True):
                counts[client] += load.done
            figure = figures[mode]
            figure.rates.append(done / max(load.elapsed for load in loads))
            figure.cpu.append(cpu / done)
            latencies = [x for load in loads for x in load.latencies]
            figure.latencies.append(statistics.median(latencies))
            figure.samples += latencies
            if "client-2" in clients:
                proxy_2_share.append(loads[clients.index("client-2")].done / done)
            line.append(f"{mode} {figure.rates[-1]:.0f} ({figure.cpu[-1] * 1e3:.2f} ms CPU each)")
        suite.progress(f"repeat {repeat + 1}, requests/s: " + "; ".join(line))

    def paired(mode: str, base: str) -> str:
        """The ratio within each repeat (the modes alternate, so these pairs share the noise)."""
        ratios = [a / b for a, b in zip(figures[mode].rates, figures[base].rates, strict=True)]
        return "per-repeat ratios " + ", ".join(f"{r:.2f}" for r in ratios)

    one, shared, two = MODES
    per_run = f"{seconds:g} s runs, {CONCURRENCY} connections per client, max_tokens {MAX_TOKENS}, not streamed"
    suite.record(
        f"throughput, {one}", "requests/s", figures[one].rates,
        note=f"client 1 → proxy 1 → {WORKERS} workers; {per_run}",
    )  # fmt: skip
    suite.record(
        f"throughput, {shared}", "requests/s", figures[shared].rates, baseline=f"throughput, {one}",
        note=f"clients 1 and 3 → proxy 1, at once; {paired(shared, one)}",
    )  # fmt: skip
    share = statistics.median(proxy_2_share) * 100
    suite.record(
        f"throughput, {two}", "requests/s", figures[two].rates, baseline=f"throughput, {shared}",
        note=f"client 1 → proxy 1 and client 2 → proxy 2, at once; proxy 2 took {share:.0f} %; "
        f"{paired(two, shared)}; {os.cpu_count()} cores for 7 processes and the load generator",
    )  # fmt: skip
    for mode, figure in figures.items():
        suite.record(
            f"CPU per request, {mode}", "s", figure.cpu, baseline=f"CPU per request, {one}" if mode != one else "",
            note="CPU time of every node and the load generator / answers",
        )  # fmt: skip
    for mode, figure in figures.items():
        in_flight = len(MODES[mode]) * CONCURRENCY
        suite.record(
            f"latency, {mode}", "s", figure.latencies, samples=figure.samples,
            baseline=f"latency, {one}" if mode != one else "", note=f"{in_flight} in flight",
        )  # fmt: skip

    # memory: fill up to the total through proxy 1, then compare
    through_proxy_1 = sum(counts[c] for c in THROUGH_PROXY_1)
    if through_proxy_1 < total_target:
        filled = asyncio.run(drive(urls["client"], requests=total_target - through_proxy_1))
        counts["client"] += filled.done
        through_proxy_1 += filled.done
        suite.progress(f"{filled.done} more requests at {filled.rate:.0f} requests/s")
    late = bench.rss()
    served = bench.worker_requests()
    suite.progress("RSS after the load: " + ", ".join(f"{k} {v:.1f} MiB" for k, v in late.items()))
    suite.progress("requests done per worker: " + ", ".join(f"{k} {v}" for k, v in served.items()))

    for name in ("proxy", *served, "client"):
        label = {"proxy": "proxy 1", "client": "client 1"}.get(name, name)
        suite.record(f"RSS {label} after {WARMUP} requests", "MiB", [early[name]])
        growth = late[name] / early[name]
        checked = name != "client"  # the target is the proxy's and the workers'
        count = served[name] if name in served else (through_proxy_1 if name == "proxy" else counts["client"])
        suite.record(
            f"RSS {label} after {total_target:,} requests",
            "MiB",
            [late[name]],
            baseline=f"RSS {label} after {WARMUP} requests",
            target=f"≤ {GROWTH_TARGET:.2f} × after {WARMUP}" if checked else "",
            met=growth <= GROWTH_TARGET if checked else None,
            note=f"it handled {count:,} requests; {late[name] - early[name]:+.1f} MiB",
        )
