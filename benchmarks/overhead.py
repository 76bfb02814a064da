"""Overhead on the embedded model: what the network adds to SmolLM2-135M-Instruct on llama.cpp,
next to the usual ways of serving the same engine, all measured in the same run.

Five configurations, each with exactly one ``Llama`` instance of the same GGUF file
(``embedded_model_path()``), ``n_ctx`` 2048, one decoding thread, and as many threads for batch
(prompt) work as the engine's instances have (llama-cpp-python's default: the CPU count; read
from the engine and given to (b) explicitly):

- (a) engine: ``LlamaCppEngine(slots=1)`` called in this process, with the parameters a worker
  would hand it; its ``generate`` chunks are timed as they come. Concurrent requests wait for
  the one slot.
- (b) llama_cpp.server: llama-cpp-python's own OpenAI server (FastAPI, uvicorn, SSE) in its own
  process. It serves one instance and takes requests one at a time behind a lock; its
  ``interrupt_requests`` is off (by default a new request cuts the streamed one short), and its
  requests say ``repeat_penalty`` 1.0 (the server fills in 1.1 where ``Llama`` has 1.0).
- (c) nginx → (b): Debian's nginx as a reverse proxy, ``proxy_buffering off``, HTTP/1.1 and
  keep-alive to (b), one worker process. Its access log must show every request.
- (d) LiteLLM → (b): the LiteLLM proxy (``litellm[proxy]``, pinned, in a virtual environment of
  its own under ~/.cache/cocoon-bench), (b) as an OpenAI-compatible backend, one process, a
  master key, no database. Its access log must show every request.
- (e) Cocoon: our client → proxy → worker as separate processes (``tests.integration.network``)
  with attestation, sealing and payments (the local chain service) on; one worker of
  ``capacity`` 1, so one instance, like (b); of concurrent requests, one waits in the worker for
  the instance (its default ``queue`` of 1, so that it starts the moment the instance frees, as
  behind (b)'s lock) and the others in the proxy's queue (its ``queue_timeout`` raised so that
  they may). Settlement and registry polls run at their
  production intervals (5 s, 10 s), not the tests' 0.5 s.

Every request is a streamed chat completion with greedy decoding (temperature 0) and a fixed
``max_tokens``, and every configuration answers the same prompts, so all must produce the same
tokens: checked (the same text in the same number of content chunks). The HTTP configurations
are driven by a lean client on asyncio streams that keeps its loopback connections alive
between requests, as the ``openai`` client's pool does.

Each configuration answers one warm-up request. Then, per repeat: ``PROBES`` rounds in which
each configuration in turn (the order rotates) answers a short request (``PROBE_TOKENS``
tokens: for the time to first token, which is noisy here and needs many samples), then
``SINGLE`` such rounds of full answers, so that the machine's load, shared and changing, falls
on all alike (1 stream); then each configuration in turn answers ``STREAMS`` requests sent at
once, and again in the reverse order (4 streams: a drift within the repeat then falls on all
alike too). (b), (c) and (d) share one instance, and llama.cpp reuses the longest prefix
of the previous prompt: a short unmeasured request resets it whenever that instance would
otherwise see the same prompt twice in a row. Every measured request and batch comes after
``IDLE_BEFORE`` seconds of quiet, so that each meets its processes idle alike (back to back, (c)
met the server (b) had just used warm). No repeat starts that would likely end past
``BUDGET_S`` seconds after the scenario's start (the figures say how many ran).

Figures per configuration and stream count: time to first token (request sent → first content
chunk; with 1 stream over the short and the full answers; with 4 streams it includes the wait
for the one instance), inter-token latency (gaps between content chunks of full answers),
tokens/s per stream (a stream's tokens over its time from request to last token) and, with 4
streams, in aggregate (all tokens over the wall time). Ratios are to (a) in the same run, paired
by repeat: the median over repeats of (this configuration ÷ (a)) within the repeat, since the
machine's speed moves by more between repeats (a minute or more apart) than between
configurations taking turns within one. The
time to first token that (e) adds (the target) is the median over requests of (e)'s time to
first token minus its engine's in the worker for the same request (the worker's log: from
handing the request to its engine to the first chunk); with 4 streams, minus also the time the
one engine spent on the batch's other requests while this one waited for it (the worker's log
says when its engine took and finished each request), so that what is left is the network's,
the hand-over from one queued request to the next included. (e) − (a) (over the same prompts;
with 4 streams, the difference of the medians) is reported too, without a target. CPU seconds
per request of each process in a path are read from /proc, as is what (e)'s processes use while
the others are measured.

Targets: (e)'s tokens/s ≥ 97 % of (a)'s; (e) adds ≤ 5 ms to the time to first token at p50;
(e) no slower than (c) and (d) on any figure.

Run: .venv/bin/cocoon bench --only overhead   (``--quick``: shorter answers, fewer requests,
nothing installed). The full run installs what is missing, once: nginx with apt-get (as root),
LiteLLM with pip in its own environment; COCOON_BENCH_NO_INSTALL=1 prevents both.
COCOON_BENCH_THREADS_BATCH=N, an experiment, gives every instance N threads for batch work,
(e)'s worker included (``benchmarks/overhead_worker.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.cpu import tree_cpu_seconds
from benchmarks.harness import Result, Suite, format_value
from benchmarks.overhead_servers import (
    LITELLM_VERSION,
    HttpError,
    Service,
    Trace,
    close_idle_connections,
    delta_content,
    ensure_litellm,
    ensure_nginx,
    litellm,
    llama_server,
    nginx,
    stream_chat,
)
from benchmarks.overhead_worker import ExperimentNetwork, set_threads_batch, threads_batch
from cocoon.engine.base import Chunk, EngineRequest
from cocoon.engine.llama_cpp import LlamaCppEngine, embedded_model_path
from cocoon.openai.schemas import engine_params, parse_request
from tests.integration.network import MODEL, Chain, Network

N_CTX = 2048
THREADS = 1
CAPACITY = 1  # instances per configuration: (b) serves one
STREAMS = 4
MAX_TOKENS, QUICK_MAX_TOKENS = 48, 24
SINGLE, QUICK_SINGLE = 4, 1  # rounds of one request per configuration, per repeat
PROBES, QUICK_PROBES = 6, 2  # rounds of one short request (time to first token), per repeat
PROBE_TOKENS = 2
BUDGET_S, QUICK_BUDGET_S = 270.0, 60.0  # no repeat starts that would likely end past this
IDLE_BEFORE, QUICK_IDLE_BEFORE = 0.3, 0.05
"""Seconds of quiet before each measured request (or batch): each meets its processes idle, as at
low load. Back to back, a configuration met its processes as the one before left them, and
(c) came right after (b) on the same server, warm: 0.7 ms less to its first token than after a
pause, which 0.1 s of quiet did not undo and 0.3 s did (2026-11-27)."""
TTFT_ADDED_TARGET = 0.005
ENGINE_DONE = re.compile(r" done: .*engine's first chunk after ([\d.]+|n/a) ms.*engine busy ([\d.]+)–([\d.]+)")
RATE_TARGET = 0.97
LITELLM_INSTALL_TIMEOUT = 300.0
FAILURES = (OSError, RuntimeError, ValueError, TimeoutError)

# Open-ended, each opening differently (so that llama.cpp's reuse of the previous prompt's
# prefix covers only the chat template, the same for every configuration), and each answered
# with the whole MAX_TOKENS (greedy; "same tokens" in the results lists the lengths): then in a
# 4-stream batch a stream's tokens/s depends on its place in the one instance's queue only, not
# on which prompt got which place.
PROMPTS = [
    "Describe a walk through a busy market early in the morning.",
    "Explain how a bicycle works, step by step, to a curious child.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "List ten ideas for a weekend trip and say why each is worth it.",
    "Tell me about the history of the printing press.",
    "Give advice to someone learning to cook for the first time.",
    "Compare trains and planes for travelling across Europe.",
    "Summarize the water cycle for a school report.",
    "Imagine a city built entirely underwater and describe daily life there.",
    "Why do leaves change colour in autumn? Explain in detail.",
    "Suggest a plan for learning a new language in six months.",
    "What makes a good team leader? Give several qualities with examples.",
    "Outline the plot of a mystery novel set on a night train.",
    "Teach me the basics of how computers store numbers.",
    "Plan a healthy menu for one week, day by day.",
    "How does a rainbow form? Walk me through the physics.",
    "Invent a new board game and explain its rules.",
    "Recommend five habits that help people sleep better, with reasons.",
    "Create a packing list for a week of camping in the mountains.",
    "Discuss the pros and cons of working from home.",
    "Narrate a day in the life of a honeybee.",
    "Propose three ways a small town could reduce its traffic.",
    "Share some tips for keeping houseplants alive.",
    "Draft a friendly letter inviting neighbours to a street party.",
    "Explore what life might be like on a space station in the year 2100.",
    "Depict a quiet harbour at dawn, boat by boat, in rich detail.",
    "Argue for and against homework in primary schools.",
    "Choose a famous invention and explain how it changed daily life.",
    "Detail the steps to bake a loaf of bread at home.",
    "Sketch the life story of an old oak tree in a village square.",
    "Walk me through how a letter travels from sender to receiver.",
    "Devise names and a slogan for a new bakery, and explain each choice.",
    "Reflect on what makes a city pleasant to live in.",
    "Picture a robot learning to paint, and tell its story.",
    "Consider the role of bees in farming and explain it.",
    "Note the main differences between weather and climate.",
    "Guide a beginner through setting up a small vegetable garden.",
    "Answer a child who asks why the sky is blue.",
    "Break down how an election works in a democracy.",
    "Offer ideas for a birthday party on a small budget.",
    "Relate the legend of a lost city in the desert.",
]
RESET_PROMPT = "Say hi."

# llama_cpp.server fills in repeat_penalty 1.1 where Llama (and so our engine) has 1.0, and
# penalties apply before the greedy pick: requests to (b), (c) and (d) say 1.0.
SERVER_EXTRA = {"repeat_penalty": 1.0}


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def request_body(prompt: str, max_tokens: int, extra: dict[str, float] | None = None) -> bytes:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        **(extra or {}),
    }
    return json.dumps(body).encode()


@dataclass(frozen=True)
class EngineRun:
    """One request in (e)'s worker, from its log: monotonic seconds."""

    first: float | None  # from the engine taking the request to its first chunk
    start: float  # when the engine took it
    end: float  # when the engine finished it

    def within(self, sent: float, answered: float) -> bool:
        """Whether this run can be the one of a request sent and answered then (monotonic): a
        log line taken for another request's would pair the wrong engine timing with it."""
        return sent <= self.start <= self.end <= answered


def engine_waits(traces: list[Trace], runs: list[EngineRun]) -> None:
    """Give each trace of one (e) batch its engine's figures: ``engine_first``, and
    ``engine_wait``, the time the one engine spent on the batch's other requests while this
    one waited for it (from being sent to the engine taking it). What is left of the time to
    first token is what the network adds, the hand-overs between queued requests included.

    The worker has one engine, which takes requests one at a time in the order it finishes
    them (its log's order), so the n-th trace to get its first token is the n-th run."""
    offset = time.perf_counter() - time.monotonic()  # the same clock on Linux; no matter if not
    ordered = sorted(traces, key=lambda t: t.times[0] if t.times else float("inf"))
    spans = [(run.start + offset, run.end + offset) for run in runs]
    for trace, run, (start, _) in zip(ordered, runs, spans, strict=True):
        if run.first is None or start < trace.start:
            continue  # no chunk, or not this request's run: leave the trace without figures
        trace.engine_first = run.first
        trace.engine_wait = sum(max(0.0, min(end, start) - max(begin, trace.start)) for begin, end in spans)


@dataclass
class Config:
    key: str
    name: str
    processes: list[str]  # CPU meters of the processes in this configuration's path
    extra: dict[str, float] = field(default_factory=dict)  # fields added to every request body
    send: Callable[[bytes], Awaitable[Trace]] | None = None
    unavailable: str = ""
    note: str = ""
    sent: int = 0
    logged: bool | None = None  # (b), (c), (d), (e): its log shows exactly the requests sent through it
    answers: dict[tuple[int, int], tuple[str, int]] = field(default_factory=dict)  # (prompt, max) → answer
    single: list[dict[int, Trace]] = field(default_factory=list)  # per repeat: prompt → trace
    probes: list[dict[int, Trace]] = field(default_factory=list)  # per repeat: prompt → trace
    multi: list[list[Trace]] = field(default_factory=list)  # per repeat: both batches of 4 streams
    walls: list[float] = field(default_factory=list)  # 4 streams: per repeat, both batches' wall time
    busy_cpu: dict[str, list[float]] = field(default_factory=dict)  # meter → CPU seconds per repeat
    requests: list[int] = field(default_factory=list)  # measured, per repeat

    @property
    def available(self) -> bool:
        return self.send is not None and not self.unavailable

    @property
    def shares_server(self) -> bool:
        return self.key in "bcd"


class Meters:
    """CPU seconds of each process that some configuration has in its path."""

    def __init__(self) -> None:
        self.read: dict[str, Callable[[], float]] = {"bench process": time.process_time}
        self.idle_cpu: dict[str, float] = {}
        self.idle_time: dict[str, float] = {}
        self.load: list[float] = []

    def add(self, name: str, pid: int) -> None:
        self.read[name] = lambda: tree_cpu_seconds(pid)

    def snapshot(self) -> dict[str, float]:
        return {name: read() for name, read in self.read.items()}


async def engine_send(engine: LlamaCppEngine, body: bytes) -> Trace:
    params = engine_params(parse_request("chat", body))  # what a worker hands its engine
    trace = Trace(time.perf_counter())
    async for event in engine.generate(EngineRequest(kind="chat", params=params, stream=True)):
        if isinstance(event, Chunk) and (content := delta_content(event.payload)):
            trace.add(content, time.perf_counter())
    if not trace.times:
        raise RuntimeError("the engine answered no content")
    return trace


def http_send(url: str, api_key: str = "none") -> Callable[[bytes], Awaitable[Trace]]:
    async def send(body: bytes) -> Trace:
        return await stream_chat(url, body, api_key)

    return send


def start_network(root: Path) -> tuple[Chain, Network]:
    """(e), blocking: the chain service, then proxy, one worker and client with payments."""
    chain = Chain(root / "chain")
    try:
        production = {"registry_poll": 10.0, "settle_interval": 5.0}
        net = (ExperimentNetwork if threads_batch() else Network)(
            root / "net",
            workers=1,
            capacity=CAPACITY,
            chain=chain,
            proxy={"queue_timeout": 600.0, **production},
            worker={"n_ctx": N_CTX, "threads": THREADS, **production},
            client={"registry_poll": 10.0},
            wait=False,
        )
    except BaseException:
        chain.stop()
        raise
    try:
        net.wait_workers(1, timeout=180)
    except BaseException:
        net.stop()
        chain.stop()
        raise
    return chain, net


def run(suite: Suite) -> None:
    previous_home = os.environ.get("COCOON_HOME")
    with tempfile.TemporaryDirectory(prefix="cocoon-overhead-") as tmp:
        root = Path(tmp)
        os.environ["COCOON_HOME"] = str(root / "home")  # the children's data directory
        try:
            asyncio.run(Scenario(suite, root).run())
        finally:
            if previous_home is None:
                os.environ.pop("COCOON_HOME", None)
            else:
                os.environ["COCOON_HOME"] = previous_home


class Scenario:
    def __init__(self, suite: Suite, root: Path) -> None:
        self.suite = suite
        self.root = root
        self.max_tokens = QUICK_MAX_TOKENS if suite.quick else MAX_TOKENS
        self.single = QUICK_SINGLE if suite.quick else SINGLE
        self.probes = QUICK_PROBES if suite.quick else PROBES
        self.budget = QUICK_BUDGET_S if suite.quick else BUDGET_S
        self.idle_before = QUICK_IDLE_BEFORE if suite.quick else IDLE_BEFORE
        self.repeats_done = 0
        self.started = time.monotonic()
        self.configs = {
            "a": Config("a", "(a) engine", ["bench process"]),
            "b": Config("b", "(b) llama_cpp.server", ["llama_cpp.server"], SERVER_EXTRA),
            "c": Config("c", "(c) nginx → (b)", ["nginx", "llama_cpp.server"], SERVER_EXTRA),
            "d": Config("d", "(d) LiteLLM → (b)", ["LiteLLM", "llama_cpp.server"], SERVER_EXTRA),
            "e": Config("e", "(e) Cocoon", ["client", "proxy", "worker", "chain service"]),
        }
        self.meters = Meters()
        self.services: list[Service] = []
        self.network: tuple[Chain, Network] | None = None
        self.nginx_log: Path | None = None
        self.server_url = ""
        self.server_last: int | None = None  # the prompt (b)'s instance served last
        self.resets = 0
        self.threads_batch = 0

    async def run(self) -> None:
        suite, configs = self.suite, self.configs
        model_path = embedded_model_path()
        engine = LlamaCppEngine(model_path, slots=CAPACITY, n_ctx=N_CTX, threads=THREADS)
        # Installs first (they would disturb everything else); each is optional.
        nginx_binary = litellm_exe = None
        try:
            nginx_binary = ensure_nginx(install=not suite.quick, progress=suite.progress)
        except RuntimeError as exc:
            configs["c"].unavailable = str(exc)
        try:
            litellm_exe = ensure_litellm(
                install=not suite.quick, timeout=LITELLM_INSTALL_TIMEOUT, progress=suite.progress
            )
        except RuntimeError as exc:
            configs["d"].unavailable = str(exc)

        network_task: asyncio.Future[tuple[Chain, Network]] | None = None
        try:
            suite.progress("starting the network, the engine, llama_cpp.server, nginx, LiteLLM")
            network_task = asyncio.ensure_future(asyncio.to_thread(start_network, self.root))
            await engine.start()
            if experiment := threads_batch():
                set_threads_batch(engine, experiment)
            configs["a"].send = lambda body: engine_send(engine, body)
            self.threads_batch = engine._instances[0].n_threads_batch  # what (b) must have too
            server, self.server_url = llama_server(
                self.root, model_path, n_ctx=N_CTX, threads=THREADS, threads_batch=self.threads_batch
            )
            self.services.append(server)
            self.meters.add("llama_cpp.server", server.pid)
            litellm_service = None
            if litellm_exe is not None:
                litellm_service, litellm_url, litellm_key = litellm(self.root, litellm_exe, self.server_url)
                self.services.append(litellm_service)
            await server.wait_http(self.server_url + "/models", timeout=120)
            configs["b"].send = http_send(self.server_url)
            if nginx_binary is not None:
                try:
                    nginx_service, nginx_url, self.nginx_log = nginx(self.root, nginx_binary, self.server_url)
                    self.services.append(nginx_service)
                    await nginx_service.wait_http(nginx_url + "/models", timeout=20)
                    self.meters.add("nginx", nginx_service.pid)
                    configs["c"].send = http_send(nginx_url)
                except RuntimeError as exc:
                    configs["c"].unavailable = f"nginx did not start: {str(exc)[:300]}"
            if litellm_service is not None:
                try:
                    health = litellm_url.removesuffix("/v1") + "/health/liveliness"
                    await litellm_service.wait_http(health, timeout=120)
                    self.meters.add("LiteLLM", litellm_service.pid)
                    configs["d"].send = http_send(litellm_url, litellm_key)
                except RuntimeError as exc:
                    configs["d"].unavailable = f"LiteLLM did not start: {str(exc)[-300:]}"
            chain, net = self.network = await network_task
            for meter, node in (("client", "client"), ("proxy", "proxy"), ("worker", "worker-1")):
                self.meters.add(meter, net.nodes[node].process.pid)
            self.meters.add("chain service", chain.node.process.pid)
            configs["e"].send = http_send(net.url)
            suite.progress("all started")
            await self.measure()
            await self.in_path_notes()
        finally:
            close_idle_connections()
            for service in reversed(self.services):
                service.stop()
            if network_task is not None and self.network is None:
                with contextlib.suppress(BaseException):
                    self.network = await network_task
            if self.network is not None:
                self.network[1].stop()
                self.network[0].stop()
            await engine.aclose()
        self.report()

    # --- measuring ---------------------------------------------------------------------------

    async def reset_server(self, prompt: int) -> None:
        """Before (b)'s instance serves ``prompt``: if that was its last one too, a short other
        request, so that no configuration reuses what another just computed."""
        if self.server_last != prompt:
            return
        with contextlib.suppress(HttpError):  # a one-token answer may be the end of the text
            await stream_chat(self.server_url, request_body(RESET_PROMPT, 1, SERVER_EXTRA))
        self.resets += 1
        self.server_last = None

    def fail(self, config: Config, exc: Exception, when: str) -> None:
        if config.key in "abe":
            raise exc
        config.unavailable = f"failed {when}: {str(exc)[:300]}"
        self.suite.progress(f"{config.name} {config.unavailable}")

    def account(self, config: Config, repeat: int, before: dict[str, float], elapsed: float, count: int) -> None:
        after = self.meters.snapshot()
        self.meters.load.append(os.getloadavg()[0])
        while len(config.requests) <= repeat:
            config.requests.append(0)
        config.requests[repeat] += count
        for name, value in after.items():
            used = value - before[name]
            if name in config.processes:
                runs = config.busy_cpu.setdefault(name, [])
                while len(runs) <= repeat:
                    runs.append(0.0)
                runs[repeat] += used
            elif name != "bench process":
                self.meters.idle_cpu[name] = self.meters.idle_cpu.get(name, 0.0) + used
                self.meters.idle_time[name] = self.meters.idle_time.get(name, 0.0) + elapsed

    def engine_runs(self) -> list[EngineRun]:
        """From (e)'s worker log, per request done, in the order the engine finished them: when
        its engine took it and finished it (the worker's monotonic clock, the same machine's as
        ours), and seconds from the one to its first chunk (None for an answer without chunks).
        The log holds no content."""
        assert self.network is not None
        found = ENGINE_DONE.findall(self.network[1].nodes["worker-1"].log)
        return [EngineRun(None if ms == "n/a" else float(ms) / 1e3, float(a), float(b)) for ms, a, b in found]

    async def wait_engine_runs(self, count: int) -> list[EngineRun]:
        """``engine_runs`` once it has ``count`` of them (the worker logs a request just after
        its last frame leaves: a moment, at most), or as many as there are after 2 s."""
        deadline = time.monotonic() + 2.0
        while len(runs := self.engine_runs()) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        return runs

    async def one(self, config: Config, repeat: int, prompt: int, max_tokens: int) -> Trace | None:
        assert config.send is not None
        if config.shares_server:
            await self.reset_server(prompt)
        timed = config.key == "e" and self.network is not None and repeat >= 0
        # the worker logs one line per request it finished, so this request's is line number
        # `sent` (every earlier request of (e), warm-up and 4-stream batches included), even if an
        # earlier line came late
        done = config.sent
        if repeat >= 0:
            await asyncio.sleep(self.idle_before)
        before, started = self.meters.snapshot(), time.monotonic()
        try:
            trace = await config.send(request_body(PROMPTS[prompt], max_tokens, config.extra))
        except FAILURES as exc:
            self.fail(config, exc, "while measured")
            return None
        if timed and len(runs := await self.wait_engine_runs(done + 1)) > done:
            if runs[done].within(started, time.monotonic()):  # that line is this request's
                trace.engine_first = runs[done].first
        if config.shares_server:
            self.server_last = prompt
        config.sent += 1
        config.answers[prompt, max_tokens] = (trace.text, trace.tokens)
        if repeat >= 0:
            self.account(config, repeat, before, time.monotonic() - started, 1)
        return trace

    async def measure(self) -> None:
        suite, configs = self.suite, self.configs
        for config in configs.values():  # warm-up, and the first prompt of the token check
            if config.available:
                await self.one(config, -1, 0, self.max_tokens)
        suite.progress("warmed up")
        live = [c for c in configs.values() if c.available]
        per_repeat = self.probes + self.single + STREAMS
        for repeat in range(suite.repeats):
            began = time.monotonic()
            prompts = [1 + (repeat * per_repeat + i) % (len(PROMPTS) - 1) for i in range(per_repeat)]
            probes, singles, multi = (
                prompts[: self.probes],
                prompts[self.probes : self.probes + self.single],
                prompts[self.probes + self.single :],
            )
            for config in live:
                config.probes.append({})
                config.single.append({})
            # 1 stream, the configurations taking turns: short answers for the time to first
            # token, then full ones
            for kind, chosen, tokens in (("probes", probes, PROBE_TOKENS), ("single", singles, self.max_tokens)):
                for round_ in range(len(chosen)):
                    shift = repeat * len(chosen) + round_
                    for config in live[shift % len(live) :] + live[: shift % len(live)]:
                        if not config.available:
                            continue
                        # every configuration gets each prompt once, in a round of its own
                        prompt = chosen[(round_ + live.index(config)) % len(chosen)]
                        if (trace := await self.one(config, repeat, prompt, tokens)) is not None:
                            getattr(config, kind)[repeat][prompt] = trace
            # 4 streams: each configuration in turn, then again in the reverse order, so that the
            # machine's drift within the repeat falls on all of them alike
            order = live[repeat % len(live) :] + live[: repeat % len(live)]
            for config in order + order[::-1]:
                if config.available:
                    await self.streams(config, repeat, multi)
            self.repeats_done = repeat + 1
            done = [c for c in live if c.available]
            suite.progress(
                f"repeat {repeat + 1}/{suite.repeats}: tokens/s, 1 stream / {STREAMS} streams aggregate: "
                + ", ".join(
                    f"{c.key} {statistics.median(t.rate for t in c.single[repeat].values()):.1f}"
                    f" / {sum(t.tokens for t in c.multi[repeat]) / c.walls[repeat]:.1f}"
                    for c in done
                )
            )
            took = time.monotonic() - began
            if repeat + 1 < suite.repeats and time.monotonic() - self.started + took > self.budget:
                suite.progress(f"stopping after {repeat + 1} repeats: another would end past {self.budget:.0f} s")
                break

    async def streams(self, config: Config, repeat: int, prompts: list[int]) -> None:
        assert config.send is not None
        if config.shares_server:
            # sent in an order of their own, so that the instance's last prompt (the one that
            # finished last) is not the next one's first; if it still is, reset
            shift = "bcd".index(config.key)
            prompts = prompts[shift:] + prompts[:shift]
            await self.reset_server(prompts[0])
        await asyncio.sleep(self.idle_before)
        before, started = self.meters.snapshot(), time.monotonic()
        bodies = [request_body(PROMPTS[p], self.max_tokens, config.extra) for p in prompts]
        start = time.perf_counter()
        try:
            traces = await asyncio.gather(*(config.send(body) for body in bodies))
        except FAILURES as exc:
            self.fail(config, exc, "while measured")
            return
        if config.shares_server:
            self.server_last = max(zip(prompts, traces, strict=True), key=lambda pt: pt[1].end)[0]
        if len(config.multi) == repeat:
            config.multi.append([])
            config.walls.append(0.0)
        config.walls[repeat] += max(t.end for t in traces) - start
        config.multi[repeat] += traces
        if config.key == "e" and self.network is not None:
            runs = (await self.wait_engine_runs(config.sent + len(traces)))[config.sent :]
            if len(runs) == len(traces):
                engine_waits(traces, runs)
        config.sent += len(traces)
        for prompt, trace in zip(prompts, traces, strict=True):
            config.answers[prompt, self.max_tokens] = (trace.text, trace.tokens)
        self.account(config, repeat, before, time.monotonic() - started, len(traces))

    async def in_path_notes(self) -> None:
        """Evidence that the baselines were in the path, and that (e) did the work."""
        configs = self.configs
        c, d, e = configs["c"], configs["d"], configs["e"]
        if c.available and self.nginx_log is not None:
            log = await asyncio.to_thread(self.nginx_log.read_text)
            lines = [ln for ln in log.splitlines() if "POST /v1/chat/completions" in ln]
            proxied = sum(1 for ln in lines if "upstream=127.0.0.1:" in ln and '" 200 ' in ln)
            c.logged = proxied == c.sent == len(lines)
            c.note = f"nginx access log: {proxied} of {c.sent} requests, 200, proxied to (b)"
            if not c.logged:
                c.note += f" — NOT WHAT WAS SENT ({len(lines)} logged)"
        for service in self.services:
            if service.name == "litellm" and d.available:
                seen = service.log().count('"POST /v1/chat/completions HTTP/1.1" 200')
                d.logged = seen == d.sent
                d.note = f"LiteLLM {LITELLM_VERSION} access log: {seen} of {d.sent} requests, 200"
                if not d.logged:
                    d.note += " — NOT WHAT WAS SENT"
            if service.name == "llama_cpp.server":
                seen = service.log().count('"POST /v1/chat/completions HTTP/1.1" 200')
                sent = sum(configs[k].sent for k in "bcd" if configs[k].available)
                configs["b"].logged = seen == sent + self.resets
                configs["b"].note = (
                    f"its access log: {seen} requests {'=' if configs['b'].logged else '≠, NOT WHAT WAS SENT:'} "
                    f"{sent} through (b), (c), (d) + {self.resets} resets; "
                    f"n_threads_batch {self.threads_batch}, as the engine's"
                    + (" (COCOON_BENCH_THREADS_BATCH)" if threads_batch() else "")
                )
        if self.network is not None:
            net = self.network[1]
            done = net.worker_requests_done("worker-1")
            receipts = ""
            with contextlib.suppress(httpx.HTTPError, ValueError, AttributeError):
                async with httpx.AsyncClient(timeout=5) as http:
                    answer = (await http.get(net.url + "/cocoon/receipts", params={"limit": 1000})).json()
                items = answer.get("data") or []
                paid = sum(1 for r in items if r.get("cost_nanoton"))
                receipts = f", {len(items)} worker-signed receipts at the client, {paid} with a cost"
            e.logged = done == e.sent
            e.note = f"worker log: {done} of {e.sent} requests done{receipts}; attestation, sealing, payments on"

    # --- figures -----------------------------------------------------------------------------

    def report(self) -> None:
        suite, configs = self.suite, self.configs
        a, e = configs["a"], configs["e"]
        for config in configs.values():
            if not config.available:
                suite.record(
                    f"{config.name}: time to first token, 1 stream",
                    "s",
                    [],
                    note=f"not available: {config.unavailable}",
                )
        measured = [c for c in configs.values() if c.available and c.single]
        values: dict[tuple[str, str], Result] = {}  # (configuration, figure) → its figure

        def figure(
            config: Config, name: str, unit: str, runs: list[float], samples: list[float] | None = None, note: str = ""
        ) -> None:
            baseline = f"{a.name}: {name}" if config is not a else ""
            result = suite.record(
                f"{config.name}: {name}", unit, runs, samples=samples, baseline=baseline, note=note, paired=True
            )
            if config is e and unit == "tokens/s":
                result.target = f"≥ {RATE_TARGET:.2f} × (a)"
                result.met = result.ratio is not None and result.ratio >= RATE_TARGET
            values[config.key, name] = result

        for n in (1, STREAMS):
            streams = f"{n} stream" + ("s" if n > 1 else "")
            for config in measured:
                repeats = [list(r.values()) for r in config.single] if n == 1 else config.multi
                traces = [t for r in repeats for t in r]
                # 1 stream: the short answers' first tokens too
                firsts = (
                    [[*p.values(), *r.values()] for p, r in zip(config.probes, config.single, strict=True)]
                    if n == 1
                    else repeats
                )
                ttft = [statistics.median(t.ttft for t in r) for r in firsts]
                samples = [t.ttft for r in firsts for t in r]
                note = config.note if n == 1 else ""
                figure(config, f"time to first token, {streams}", "s", ttft, samples=samples, note=note)
                itl = [statistics.median(g for t in r for g in t.gaps) for r in repeats]
                samples = [g for t in traces for g in t.gaps]
                figure(config, f"inter-token latency, {streams}", "s", itl, samples=samples)
                rate = [statistics.median(t.rate for t in r) for r in repeats]
                figure(config, f"tokens/s per stream, {streams}", "tokens/s", rate)
                if n > 1:
                    total = [sum(t.tokens for t in r) / wall for r, wall in zip(repeats, config.walls, strict=True)]
                    figure(config, f"tokens/s aggregate, {streams}", "tokens/s", total)
        if a in measured and e in measured:
            self.added_ttft()
            self.compare(values)
            self.paired_against_nginx()
        self.verify_tokens()
        self.verify_paths()
        self.cpu_report()

    def verify_paths(self) -> None:
        """Every request each HTTP baseline and (e) were sent is in its own log: they really were
        in the path (their notes say what the logs showed)."""
        checked = [c for c in self.configs.values() if c.available and c.key in "bcde"]
        shown = [c for c in checked if c.logged]
        self.suite.record(
            "requests in the logs of (b), (c), (d), (e): configurations",
            "",
            [float(len(shown))],
            target=f"all {len(checked)}",
            met=len(shown) == len(checked),
            note="; ".join(f"({c.key}) {c.note.split(';')[0]}" for c in checked if not c.logged)
            or "each log shows exactly the requests sent through it (the notes of the time-to-first-token rows)",
        )

    def added_ttft(self) -> None:
        """What (e) adds to the time to first token. 1 stream: against its own engine in the
        same request (the target), and against (a) on the same prompt within each repeat;
        4 streams: against its own engine in the same request, less its wait for the engine
        (the target), and against (a), by repeat."""
        a, e = self.configs["a"], self.configs["e"]
        target = f"≤ {TTFT_ADDED_TARGET * 1e3:.0f} ms at p50"
        own: list[list[float]] = []  # per repeat: caller's TTFT − the engine's, same request
        engines: list[list[float]] = []  # per repeat: the engine's TTFT in the worker ÷ (a)'s, same prompt
        paired: list[list[float]] = []  # per repeat: (e)'s TTFT − (a)'s, same prompt
        for r in range(len(e.single)):
            own.append([])
            engines.append([])
            paired.append([])
            for ours, base in ((e.probes[r], a.probes[r]), (e.single[r], a.single[r])):
                for p, trace in ours.items():
                    if p in base:
                        paired[-1].append(trace.ttft - base[p].ttft)
                    if trace.engine_first is not None:
                        own[-1].append(trace.ttft - trace.engine_first)
                        if p in base:
                            engines[-1].append(trace.engine_first / base[p].ttft)

        def added(streams: str, per_repeat: list[list[float]], measured: int, note: str) -> None:
            """The target figure: the median over repeats of each repeat's median."""
            runs = [statistics.median(d) for d in per_repeat if d]
            paired = sum(len(d) for d in per_repeat)
            note += f"; {paired} of {measured} requests paired with their engine's run in the worker's log"
            self.suite.record(
                f"(e) − its engine, same request: time to first token added, {streams}",
                "s",
                runs,
                samples=[x for d in per_repeat for x in d],
                target=target,
                met=statistics.median(runs) <= TTFT_ADDED_TARGET if runs else None,
                note=note,
            )

        added(
            "1 stream",
            own,
            sum(len(e.probes[r]) + len(e.single[r]) for r in range(len(e.single))),
            "the caller's time to first token minus the engine's in the worker for the same request "
            "(from handing it the request to its first chunk, the worker's log; one machine, one clock): "
            "everything the network does, without llama.cpp's own variation between runs",
        )
        runs = [statistics.median(d) for d in engines if d]
        self.suite.record(
            "(e)'s engine in the worker ÷ (a): time to first token, 1 stream",
            "x",
            runs,
            note="paired by prompt within each repeat: whether llama.cpp itself runs slower inside the worker "
            "than in (a), which the figure above would not show",
        )
        runs = [statistics.median(d) for d in paired if d]
        self.suite.record(
            "(e) − (a): time to first token added, 1 stream",
            "s",
            runs,
            samples=[x for d in paired for x in d],
            note="paired by prompt within each repeat: the same prompt through (a) and (e) seconds apart, so "
            "llama.cpp's own variation between runs of a prompt is in it",
        )
        own = [
            [
                t.ttft - t.engine_wait - t.engine_first
                for t in batch
                if t.engine_first is not None and t.engine_wait is not None
            ]
            for batch in e.multi
        ]
        added(
            f"{STREAMS} streams",
            own,
            sum(len(batch) for batch in e.multi),
            "per request, the caller's time to first token minus the time the worker's one engine spent on the "
            "batch's other requests while it waited, minus its engine's own time to first token (the worker's log): "
            "everything the network does, the hand-over from one queued request to the next included",
        )
        runs = [
            statistics.median(t.ttft for t in ours) - statistics.median(t.ttft for t in theirs)
            for theirs, ours in zip(a.multi, e.multi, strict=True)
        ]
        self.suite.record(
            f"(e) − (a): time to first token added, {STREAMS} streams",
            "s",
            runs,
            note="difference of the medians per repeat; includes the wait for the one instance, so mostly the other "
            "answers' generation time, which moves by more between repeats than the network adds",
        )

    def compare(self, values: dict[tuple[str, str], Result]) -> None:
        """(e) against (c) and (d) on every figure: lower is better for latencies, higher for
        rates. Paired by repeat, as the ratios to (a) are: (e) is slower where the median over
        repeats of (e) ÷ (c) within the repeat is on the wrong side of 1."""
        configs = self.configs
        others = [configs[k] for k in "cd" if configs[k].available and configs[k].single]
        if not others:
            self.suite.record("(e) slower than (c), (d): figures", "", [], note="neither (c) nor (d) was available")
            return
        slower = []
        names = [name for key, name in values if key == "e"]
        for name in names:
            ours = values["e", name]
            for other in others:
                theirs = values[other.key, name]
                if len(ours.runs) == len(theirs.runs) and all(theirs.runs):
                    ratio = statistics.median(o / t for o, t in zip(ours.runs, theirs.runs, strict=True))
                else:
                    ratio = ours.value / theirs.value
                rate = name.startswith("tokens/s")
                if (ratio < 1) if rate else (ratio > 1):
                    slower.append(
                        f"{name}: {format_value(ours.value, ours.unit)} vs ({other.key}) "
                        f"{format_value(theirs.value, theirs.unit)} ({(ratio - 1) * 100:+.1f} % paired by repeat)"
                    )
        missing = [f"({k}) not available" for k in "cd" if configs[k] not in others]
        unproven = [f"({k.key}) not shown in the path by its log" for k in (configs["b"], *others) if not k.logged]
        self.suite.record(
            "(e) slower than (c), (d): figures",
            "",
            [float(len(slower))],
            target=f"0 of {len(names) * len(others)}",
            # nginx is the baseline the target names; LiteLLM only where it installs
            met=not slower and configs["c"] in others and not unproven,
            note="; ".join(slower + missing + unproven) or "none: (e) is as fast or faster on every figure",
        )

    def paired_against_nginx(self) -> None:
        """(e) − (c) on the 1-stream time to first token, paired by prompt within each repeat: what
        (e) adds beyond nginx and llama.cpp's own server, without the jumps of the verdict's
        medians over prompts of different lengths (a few milliseconds apart). Without a target:
        the verdict above stands as the issue asks."""
        c, e = self.configs["c"], self.configs["e"]
        if not (c.available and c.single and e.single):
            return
        paired: list[list[float]] = []
        theirs_by_repeat = [{**p, **s} for p, s in zip(c.probes, c.single, strict=True)]
        ours_by_repeat = [{**p, **s} for p, s in zip(e.probes, e.single, strict=True)]
        for theirs, ours in zip(theirs_by_repeat, ours_by_repeat, strict=False):  # (repeats both finished)
            paired.append([ours[k].ttft - theirs[k].ttft for k in ours.keys() & theirs.keys()])
        if not any(paired):
            return
        self.suite.record(
            "(e) − (c): time to first token, 1 stream, paired by prompt",
            "s",
            [statistics.median(d) for d in paired if d],
            samples=[x for d in paired for x in d],
            note="the same prompt through nginx → llama_cpp.server and through the network within each repeat: "
            "the verdict's figure without the medians' jumps between prompts; llama.cpp's own variation between "
            "two runs of a prompt is in it",
        )

    def verify_tokens(self) -> None:
        """Greedy decoding: every configuration must have answered each prompt with the same
        text in the same number of content chunks (tokens)."""
        measured = [c for c in self.configs.values() if c.available and c.answers]
        prompts = sorted(set.intersection(*(set(c.answers) for c in measured))) if measured else []
        mismatched = []
        counts = set()
        for key in prompts:
            groups: dict[tuple[str, int], str] = {}
            for config in measured:
                answer = config.answers[key]
                groups[answer] = groups.get(answer, "") + config.key
                counts.add(answer[1])
            if len(groups) > 1:
                (first, _), *others = groups
                at = min(first_difference(first, text) for text, _ in others)
                detail = " ≠ ".join(
                    f"{keys} ({tokens} tokens, …{text[max(0, at - 10) : at + 15]!r})"
                    for (text, tokens), keys in groups.items()
                )
                mismatched.append(f"prompt {key[0]} (max_tokens {key[1]}): {detail}")
        shown = ", ".join(str(c) for c in sorted(counts))
        note = f"{len(prompts)} prompts × {len(measured)} configurations, {shown} tokens each"
        if mismatched:
            note = "; ".join(mismatched[:4])
        self.suite.record(
            "same tokens in every configuration: prompts",
            "",
            [float(len(prompts) - len(mismatched))],
            target=f"all {len(prompts)}",
            met=not mismatched,
            note=note,
        )

    def cpu_report(self) -> None:
        """CPU seconds per request of each process in a configuration's path; and what (e)'s
        processes burn while they wait (registry polls, settlement)."""
        meters = self.meters
        for config in self.configs.values():
            if not config.available or not config.requests:
                continue
            for name, used in config.busy_cpu.items():
                runs = [cpu / count for cpu, count in zip(used, config.requests, strict=True) if count]
                what = "engine and its caller, in-process" if name == "bench process" else name
                self.suite.record(f"{config.name}: CPU per request, {what}", "s", runs)
        processes = [n for n in self.configs["e"].processes if meters.idle_time.get(n)]
        if processes:
            shares = {n: meters.idle_cpu[n] / meters.idle_time[n] * 100 for n in processes}
            self.suite.record(
                "(e) idle: CPU, % of one core",
                "",
                [round(sum(shares.values()), 2)],
                note=", ".join(f"{n} {v:.1f} %" for n, v in shares.items()),
            )
        if meters.load:
            self.suite.record(
                "machine load (1-minute average) while measured",
                "",
                [round(statistics.median(meters.load), 2)],
                note=f"{os.cpu_count()} cores; min {min(meters.load):.1f}, max {max(meters.load):.1f}; "
                f"per configuration and repeat: {self.probes} answers of {PROBE_TOKENS} tokens and {self.single} "
                f"of {self.max_tokens} alone, {STREAMS} of {self.max_tokens} at once; "
                f"{self.repeats_done} of {self.suite.repeats} repeats",
            )
