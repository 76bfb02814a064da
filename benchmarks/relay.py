"""Relay ceiling: how many streamed tokens per second one proxy process delivers to clients,
and the inter-token latency it adds at half that load.

Run: ``cocoon bench --only relay`` (or ``.venv/bin/python -m benchmarks.relay``).

The network is real: a proxy, one worker on the synthetic ``BenchmarkEngine`` (unpaced: it
makes tokens as fast as its event loop runs) and a client, as separate processes on loopback
(``tests/integration/network.py``), every hop over TLS and every answer chunk sealed end to end
by the worker and opened by the client. A load generator in this process sends batches of
1, 8, 64 and 256 streamed chat requests at once to the client's OpenAI API and counts the SSE
events (one answer token each) as they arrive. It is a lean HTTP/1.1 reader on asyncio rather
than ``httpx``, which costs about ten times more per read and would take the shared cores from
the network it measures. Each read is timed by the kernel, as it received the bytes
(``SO_TIMESTAMPNS`` on Linux), not as the load generator got round to reading them: it shares
the 2 cores too, and its own waits for a CPU are not the network's latency (a read that takes
several packets carries the time of the last, which can only lengthen the gap before it).

The worker seals the tokens its engine made together as one answer chunk (one frame to relay);
the client still writes one SSE event per token. The synthetic engine pushes its tokens into the
worker (``stream_into``), all streams on one clock: unpaced, ``READY_RUN`` tokens of every
stream each turn of the worker's event loop, so frames carry several tokens; paced, one step (a
millisecond or so after the last) pushes each stream's tokens that came due since.

Measured per batch, from the first request sent to the last event received (each batch is
``BATCH_TOKENS`` tokens split between its streams; every one of its tokens crosses the proxy
exactly once inside that span, whatever any process buffers on the way):

- **delivered tokens/s**: tokens received by the callers per wall second. The load generator,
  the client and the worker share the 2 cores with the proxy and each costs more per token than
  the proxy, so this is the whole network's ceiling on this machine, not the proxy's.
- **tokens per proxy CPU-second** ("per core"): the batch's tokens divided by the CPU time the
  proxy process used meanwhile (its threads' time on a CPU, to the nanosecond:
  ``benchmarks/cpu.py``): what one proxy process on one fully used core delivers, the figure
  the 50,000 tokens/s target is about. The proxy is never the bottleneck here, so this is a
  lower bound: a saturated proxy reads more frames per system call and does better.
- **inter-token latency** (ITL): the gaps between consecutive events of one stream as its caller
  receives them, pooled (p50/p90/p99; the value is the median over repeats of each batch's p99).
  Unpaced, it mostly shows how the streams share the machine.

Half load: the worker is restarted with its engine paced (``bench_tokens_per_second``) so that
64 streams ask for half the delivered ceiling measured at 64 streams (the proxy's own per-core
ceiling is far above what this machine can offer it). Before it, the same at 1/32 and 1/8 of the
ceiling (``SWEEP``), to show how the figure grows with the load. The streams start spread over
half a second, as independent callers would, and gaps count from half a second after the last
start until the first stream ends, while every stream runs; "delivered" is the rate in that
window, the load the latency was measured at. A stream that fails fails the target (it is in
none of the figures).
**Added inter-token latency** = the caller's gap minus the pacing interval: the engine
schedules each stream's tokens on a fixed grid, so a token held up anywhere on the way shows as
a gap above the interval (and the next one as a gap below it). Target: p99 ≤ 2 ms. The same is
measured with 1 stream at that pacing (low load), where nothing is queued anywhere. The note
gives each process's share of the batch spent runnable but waiting for a CPU (``schedstat``):
on 2 shared cores, a token crosses four single-threaded processes, each of which may wait for a
core, and those waits add up in the tail whatever each process does.

Baselines in the same run: the synthetic engine's own rate in-process (no network, no sealing,
64 streams on one event loop), and its own gaps in-process at the half-load pacing (its steps,
and the noise floor of the machine's scheduler and timers, which the network's figure includes
too), both with its tokens pushed as into a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from benchmarks.cpu import cpu_seconds, runqueue_seconds
from benchmarks.harness import Suite, percentile

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.integration.network import MODEL, Network, Node, toml_value  # noqa: E402

LEVELS = (1, 8, 64, 256)
HALF_LOAD_STREAMS = 64
SWEEP = (1 / 32, 1 / 8)  # lighter paced loads measured before half load, as fractions of the ceiling
ANSWER_TOKENS = 400  # per request in the engine-alone baseline
BATCH_TOKENS = 40_000  # tokens per measured batch, split between its streams
MIN_STREAM_TOKENS = 80  # so that every stream has gaps to measure
PACED_SECONDS = 3.0  # measured length of a paced stream at half load
STAGGER = 0.5  # paced streams start spread over this many seconds, as independent callers would
SETTLE = 0.5  # and their gaps count from this long after the last one started
TARGET_TOKENS_PER_CORE = 50_000.0
TARGET_ADDED_ITL = 0.002
T = TypeVar("T")
PATTERN = b"data: {"  # one SSE event per answer chunk (the [DONE] marker does not match)
SO_TIMESTAMPNS = 35  # Linux (every architecture): each read's kernel receive time, a struct timespec
READ_SIZE = 256 * 1024


@contextlib.contextmanager
def isolated_home() -> Iterator[Path]:
    """A temporary ``COCOON_HOME`` (keys, state) for the processes started inside."""
    with tempfile.TemporaryDirectory(prefix="cocoon-bench-") as tmp:
        old = os.environ.get("COCOON_HOME")
        os.environ["COCOON_HOME"] = str(Path(tmp, "home"))
        try:
            yield Path(tmp)
        finally:
            if old is None:
                os.environ.pop("COCOON_HOME", None)
            else:
                os.environ["COCOON_HOME"] = old


def bench_worker(**extra: Any) -> dict[str, Any]:
    return {"engine": "benchmark", "capacity": 1024, "n_ctx": 65536, **extra}


BENCH_PROXY = {"client_streams": 0, "max_queue": 4096}


@dataclass
class Batch:
    """What one batch of concurrent streamed requests saw, from the first request sent to the
    last chunk received. Every token of the batch passes the proxy exactly once inside that
    span, so the proxy's CPU time over it is its cost for exactly these tokens, whatever any
    process buffered on the way."""

    seconds: float = 0.0
    tokens: int = 0
    errors: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # process name → CPU seconds in the batch
    waits: dict[str, float] = field(default_factory=dict)  # process name → seconds waiting for a CPU
    gaps: list[float] = field(default_factory=list)  # between consecutive chunks of one stream
    gap_times: list[float] = field(default_factory=list)  # when each of ``gaps`` ended
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (time, events) of each measured read
    window: float = 0.0  # paced: seconds from the settle point until the first stream ended
    window_tokens: int = 0  # and the tokens received in them, while every stream ran

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")

    @property
    def window_rate(self) -> float:
        """Tokens/s while every stream of a paced batch ran (after the ramp-up, before the
        first one ended): the load its inter-token latency was measured at."""
        return self.window_tokens / self.window if self.window > 0 else float("nan")

    def per_cpu(self, name: str) -> float:
        used = self.cpu.get(name, 0.0)
        return self.tokens / used if used > 0 else float("nan")

    def share(self, name: str) -> float:
        return self.cpu.get(name, 0.0) / self.seconds if self.seconds else float("nan")

    def shares(self) -> str:
        return ", ".join(f"{name} {self.share(name) * 100:.0f} %" for name in self.cpu)

    def waiting(self) -> str:
        """How much of the batch each process spent runnable but without a CPU."""
        return ", ".join(f"{name} {wait / self.seconds * 100:.0f} %" for name, wait in self.waits.items())


def chat_body(max_tokens: int, *, stream: bool) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count for me."}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


class _SSECounter:
    """One streamed HTTP request with ``Connection: close``: counts the SSE events of the answer
    as they arrive and notes when each read came. A lean reader on a bare socket, so that the
    load generator takes less of the shared cores than the network it measures (``httpx`` costs
    about ten times more per read), and so that each read carries the kernel's receive time."""

    def __init__(self, request: bytes, batch: Batch, measure_from: float) -> None:
        self.request = request
        self.batch = batch
        self.measure_from = measure_from
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.head = b""
        self.status = 0
        self.carry = b""
        self.received = 0
        self.last: float | None = None  # when the last event was read (perf_counter)
        self.last_stamp = 0.0  # and received (the kernel's clock, or perf_counter without it)
        self.stamped = False  # whether the kernel times the reads

    async def run(self, host: str, port: int) -> None:
        """Send the request and count the answer until the server closes the connection."""
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # (not Linux: the reads are timed as they are read)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.stamped = True
        try:
            await self.loop.sock_connect(sock, (host, port))
            await self.loop.sock_sendall(sock, self.request)
            self.loop.add_reader(sock.fileno(), self._readable, sock)
            try:
                await self.done
            finally:
                self.loop.remove_reader(sock.fileno())
        finally:
            sock.close()

    def _readable(self, sock: socket.socket) -> None:
        # One read a call: the loop calls again while the socket has more (level-triggered), and
        # a second read would mostly find nothing, at the cost of a system call and an exception
        if self.done.done():
            return
        try:
            data, ancillary, _, _ = sock.recvmsg(READ_SIZE, socket.CMSG_SPACE(16))
        except BlockingIOError:
            return
        except OSError:
            data, ancillary = b"", []
        now = time.perf_counter()
        if not data:
            self.done.set_result(None)
            return
        stamp = now
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                seconds, nanoseconds = struct.unpack("qq", value[:16])
                stamp = seconds + nanoseconds * 1e-9
        self.data_received(data, now, stamp)

    def data_received(self, data: bytes, now: float, stamp: float) -> None:
        """``data`` read at ``now`` (perf_counter), received at ``stamp``: the gaps are between
        receive times, the windows of the batch in read times."""
        if not self.status:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            self.status = int(head.split(b" ", 2)[1])
        data = self.carry + data
        count = data.count(PATTERN)
        self.carry = data[-(len(PATTERN) - 1) :]
        if not count:
            return
        self.received += count
        batch = self.batch
        if self.last is not None and self.last >= self.measure_from:
            batch.gaps.append(max(0.0, stamp - self.last_stamp))
            batch.gap_times.append(now)
        if now >= self.measure_from:
            batch.gaps.extend([0.0] * (count - 1))
            batch.gap_times.extend([now] * (count - 1))
            batch.arrivals.append((now, count))
        self.last = now
        self.last_stamp = stamp


async def stream_batch(
    url: str, streams: int, tokens: int, pids: dict[str, int], *, stagger: float = 0.0, settle: float = 0.0
) -> Batch:
    """``streams`` streamed requests of ``tokens`` tokens each, started together (or spread
    evenly over ``stagger`` seconds); count the chunks, and the gaps between consecutive chunks
    of a stream as the callers receive them, leaving out gaps that begin in the first
    ``settle`` seconds (the ramp-up, when requests are being sealed and routed) and, with a
    ``settle`` time, those that end after the first stream has ended (the ramp-down, with fewer
    streams at once)."""
    batch = Batch()
    ends: list[float] = []  # when each stream that succeeded received its last event
    parsed = httpx.URL(url)
    host, port = parsed.host, parsed.port or 80
    payload = json.dumps(chat_body(tokens, stream=True)).encode()
    request = (
        f"POST {parsed.path}/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode() + payload

    async def one(index: int, measure_from: float) -> None:
        if stagger:
            await asyncio.sleep(stagger * index / streams)
        try:
            counter = _SSECounter(request, batch, measure_from)
            await asyncio.wait_for(counter.run(host, port), 120.0)
        except (OSError, TimeoutError):
            batch.errors += 1
            return
        batch.tokens += counter.received
        if counter.status != 200 or counter.received != tokens:
            batch.errors += 1
        elif counter.last is not None:
            ends.append(counter.last)

    every = {**pids, "load generator": os.getpid()}
    before = {name: cpu_seconds(pid) for name, pid in every.items()}
    waited = {name: runqueue_seconds(pid) for name, pid in every.items()}
    started = time.perf_counter()
    await asyncio.gather(*(one(i, started + settle) for i in range(streams)))
    batch.seconds = time.perf_counter() - started
    batch.cpu = {name: cpu_seconds(pid) - before[name] for name, pid in every.items()}
    batch.waits = {name: runqueue_seconds(pid) - waited[name] for name, pid in every.items()}
    if settle and ends:
        measure_from, until = started + settle, min(ends)
        kept = [(gap, at) for gap, at in zip(batch.gaps, batch.gap_times, strict=True) if at <= until]
        batch.gaps = [gap for gap, _ in kept]
        batch.gap_times = [at for _, at in kept]
        batch.window = until - measure_from
        batch.window_tokens = sum(count for at, count in batch.arrivals if at <= until)
    return batch


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on the event loop the nodes use (uvloop where installed, as in
    ``cocoon/run.py``): the load generator then costs the shared cores less, and the engine's
    in-process baselines see the same timers as the worker. Times are taken with
    ``time.perf_counter``, since uvloop's ``loop.time()`` counts whole milliseconds."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def pids_of(net: Network) -> dict[str, int]:
    return {name: node.process.pid for name, node in net.nodes.items() if node.alive()}


# --- baselines in-process -------------------------------------------------------------------


class _TimingSink:
    """Takes a pushing engine's chunks as a worker would, timing each push (the chunks of one
    push arrive together: gaps of zero after the first, as the load generator counts them)."""

    backed_up = False

    def __init__(self, gaps: list[float] | None = None) -> None:
        self.tokens = 0
        self.gaps = gaps
        self.last = 0.0

    def send(self, chunks: list[bytes]) -> bool:
        self.tokens += len(chunks)
        if self.gaps is not None:
            now = time.perf_counter()
            if self.last:
                self.gaps.append(now - self.last)
            self.gaps.extend([0.0] * (len(chunks) - 1))
            self.last = now
        return True


async def engine_rate(streams: int, seconds: float) -> float:
    """Tokens/s the synthetic engine generates by itself, ``streams`` at once, unpaced, pushed
    as the worker takes streamed answers."""
    from cocoon.engine.base import EngineRequest
    from cocoon.engine.synthetic import BenchmarkEngine

    engine = BenchmarkEngine(max_tokens=ANSWER_TOKENS)
    end = time.perf_counter() + seconds
    sinks = [_TimingSink() for _ in range(streams)]

    async def one(sink: _TimingSink) -> None:
        request = EngineRequest("chat", chat_body(ANSWER_TOKENS, stream=True), True)
        while time.perf_counter() < end:
            await engine.stream_into(request, sink)

    started = time.perf_counter()
    await asyncio.gather(*(one(sink) for sink in sinks))
    return sum(sink.tokens for sink in sinks) / (time.perf_counter() - started)


async def engine_gaps(streams: int, tokens_per_second: float, seconds: float) -> list[float]:
    """Gaps between consecutive tokens of the paced engine in-process (its own jitter)."""
    from cocoon.engine.base import EngineRequest
    from cocoon.engine.synthetic import BenchmarkEngine

    engine = BenchmarkEngine(tokens_per_second=tokens_per_second, max_tokens=100_000)
    tokens = max(2, int(seconds * tokens_per_second))
    gaps: list[float] = []
    request = EngineRequest("chat", chat_body(tokens, stream=True), True)
    await asyncio.gather(*(engine.stream_into(request, _TimingSink(gaps)) for _ in range(streams)))
    return gaps


# --- the scenario ----------------------------------------------------------------------------


def run(suite: Suite) -> None:
    quick = suite.quick
    levels = (1, 64) if quick else LEVELS
    batch_tokens = 4_000 if quick else BATCH_TOKENS
    repeats = suite.repeats

    engine_runs = [run_loop(engine_rate(HALF_LOAD_STREAMS, 0.5 if quick else 1.0)) for _ in range(repeats)]
    suite.record("engine alone, in-process (baseline)", "tokens/s", engine_runs,
                 note=f"{HALF_LOAD_STREAMS} streams on one event loop, no network")  # fmt: skip

    with isolated_home() as tmp:
        suite.progress("starting proxy, worker (benchmark engine) and client")
        net = Network(tmp / "net", workers=1, proxy=BENCH_PROXY, worker=bench_worker())
        try:
            pids = pids_of(net)
            run_loop(stream_batch(net.url, 8, 50, pids))  # warm up: connections, caches
            ceiling = 0.0
            for streams in levels:
                tokens = max(MIN_STREAM_TOKENS, batch_tokens // streams)
                batches = []
                for _ in range(repeats):
                    batch = run_loop(stream_batch(net.url, streams, tokens, pids))
                    batches.append(batch)
                    suite.progress(
                        f"{streams} × {tokens} tokens: {batch.rate:,.0f} tokens/s, "
                        f"{batch.per_cpu('proxy'):,.0f} per proxy CPU-second, {batch.errors} errors; "
                        f"CPU {batch.shares()}"
                    )
                rates = [b.rate for b in batches]
                per_core = [b.per_cpu("proxy") for b in batches]
                failed = sum(b.errors for b in batches)
                if streams == HALF_LOAD_STREAMS:
                    ceiling = statistics.median(rates)
                name = f"{streams} stream{'s' if streams > 1 else ''}"
                suite.record(f"{name}: delivered", "tokens/s", rates,
                             note=f"CPU use: {batches[len(batches) // 2].shares()}; {failures(failed)}")  # fmt: skip
                suite.record(f"{name}: per proxy CPU-second", "tokens/s", per_core,
                             baseline="engine alone, in-process (baseline)",
                             target=f"≥ {TARGET_TOKENS_PER_CORE:,.0f} tokens/s per core",
                             met=statistics.median(per_core) >= TARGET_TOKENS_PER_CORE and not failed)  # fmt: skip
                suite.record(f"{name}: inter-token latency (p99 per run)", "s",
                             [percentile(b.gaps, 0.99) for b in batches],
                             samples=[g for b in batches for g in b.gaps])  # fmt: skip

            # Lighter loads first (the curve below half load), then half load and low load.
            seconds = 1.5 if quick else PACED_SECONDS
            for fraction in () if quick else SWEEP:
                pace = max(0.1, round(ceiling * fraction / HALF_LOAD_STREAMS, 1))
                suite.progress(
                    f"{HALF_LOAD_STREAMS} streams at 1/{round(1 / fraction)} of the ceiling: {pace:.1f} tokens/s each"
                )
                pids = restart_worker(net, tmp / "net", bench_worker(bench_tokens_per_second=pace))
                paced(
                    suite,
                    net.url,
                    pids,
                    f"{HALF_LOAD_STREAMS} streams at 1/{round(1 / fraction)} load",
                    HALF_LOAD_STREAMS,
                    pace,
                    seconds,
                    repeats,
                )

            # Half load: pace the engine so that the streams ask for half the ceiling.
            pace = max(0.1, round(ceiling / 2 / HALF_LOAD_STREAMS, 1))
            interval = 1.0 / pace
            suite.progress(f"half load: {HALF_LOAD_STREAMS} streams at {pace:.1f} tokens/s each")
            pids = restart_worker(net, tmp / "net", bench_worker(bench_tokens_per_second=pace))
            base = run_loop(engine_gaps(HALF_LOAD_STREAMS, pace, seconds))
            suite.record("half load: engine alone, in-process: ITL minus interval (baseline)", "s",
                         [percentile(base, 0.99) - interval], samples=[g - interval for g in base],
                         note=f"{HALF_LOAD_STREAMS} streams on the nodes' event loop, pacing interval "
                         f"{interval * 1e3:.2f} ms")  # fmt: skip
            paced(suite, net.url, pids, "half load", HALF_LOAD_STREAMS, pace, seconds, repeats, target=True)
            paced(suite, net.url, pids, "low load, 1 stream", 1, pace, seconds, repeats)
        finally:
            net.stop()


def paced(
    suite: Suite,
    url: str,
    pids: dict[str, int],
    label: str,
    streams: int,
    pace: float,
    seconds: float,
    repeats: int,
    *,
    target: bool = False,
) -> None:
    """``streams`` streams of the paced engine, started over ``STAGGER`` seconds: the added
    inter-token latency (the caller's gaps minus the pacing interval) once they all run."""
    interval = 1.0 / pace
    tokens = max(20, int(pace * (STAGGER + SETTLE + seconds)))
    added_runs: list[float] = []
    added: list[float] = []
    rates = []
    per_core = []
    batches: list[Batch] = []
    for _ in range(repeats):
        batch = run_loop(stream_batch(url, streams, tokens, pids, stagger=STAGGER, settle=STAGGER + SETTLE))
        extra = [g - interval for g in batch.gaps]
        added.extend(extra)
        added_runs.append(percentile(extra, 0.99))
        rates.append(batch.window_rate)
        per_core.append(batch.per_cpu("proxy"))
        suite.progress(
            f"{label}: {batch.window_rate:,.0f} tokens/s, p99 added {added_runs[-1] * 1e3:.2f} ms, "
            f"{batch.errors} errors; CPU {batch.shares()}; waiting for a CPU {batch.waiting()}"
        )
        batches.append(batch)
    if streams > 1:
        suite.record(f"{label}: delivered", "tokens/s", rates,
                     note=f"while all {streams} streams ran, paced at {pace:.1f} tokens/s "
                     f"({streams * pace:,.0f} offered); {statistics.median(per_core):,.0f} per proxy CPU-second "
                     "over the whole batch")  # fmt: skip
    failed = sum(b.errors for b in batches)
    suite.record(f"{label}: added inter-token latency (p99 per run)", "s", added_runs, samples=added,
                 target="p99 ≤ 2 ms" if target else "",
                 met=statistics.median(added_runs) <= TARGET_ADDED_ITL and not failed if target else None,
                 note=f"caller's ITL minus the {interval * 1e3:.2f} ms pacing interval; {failures(failed)}; "
                 f"CPU: {batches[len(batches) // 2].shares()}; "
                 f"waiting for a CPU: {batches[len(batches) // 2].waiting()}")  # fmt: skip


def failures(failed: int) -> str:
    """A batch's failed streams, for its notes: a stream that failed is in none of the figures
    (its tokens are not delivered, its gaps not measured), so any failure fails the target."""
    return "no stream failed" if not failed else f"{failed} STREAMS FAILED, left out of these figures"


def restart_worker(net: Network, root: Path, worker: dict[str, Any]) -> dict[str, int]:
    """Replace the worker by one with other settings (its own config file and name); the
    network's process ids once it has joined, after a few warm-up requests."""
    old = next(name for name in net.nodes if name.startswith("worker-"))
    net.nodes[old].stop()
    del net.nodes[old]
    name = f"worker-{int(old.split('-')[1]) + 1}"
    text = net.config.read_text()
    head, _, rest = text.partition("[worker]\n")
    table, _, tail = rest.partition("\n[")
    lines = [line for line in table.splitlines() if line.split(" = ")[0] not in worker]
    lines += [f"{key} = {toml_value(value)}" for key, value in worker.items()]
    config = root / f"{name}.toml"
    config.write_text(head + "[worker]\n" + "\n".join(lines) + "\n\n[" + tail)
    node = Node(name, ["worker", "--config", str(config), "--name", name,
                       "--key-file", str(root / f"{name}.key")], root)  # fmt: skip
    net.nodes[name] = node
    deadline = time.monotonic() + 60
    while not (node.status.get("proxies") and node.status.get("state") == "ready"):
        if not node.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the paced worker did not start:\n{node.log[-3000:]}")
        time.sleep(0.05)
    net.wait_workers(1)
    pids = pids_of(net)
    run_loop(stream_batch(net.url, 8, 5, pids))  # the client relists and connects
    return pids


if __name__ == "__main__":
    out = Suite(Path("bench-results"), repeats=int(os.environ.get("REPEATS", "3")), quick=bool(os.environ.get("QUICK")))
    out.scenario = "relay"
    run(out)
    print(out.markdown())
