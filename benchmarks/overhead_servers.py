"""The baselines of the overhead scenario (``benchmarks/overhead.py``) and what measures them: a
lean streaming HTTP client, llama-cpp-python's own OpenAI server, nginx and LiteLLM in front of
it, and CPU accounting from /proc."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.integration.network import MODEL, free_port

LITELLM_VERSION = "1.106.12"
"""LiteLLM, pinned. 1.107.0 was a compromised release (withdrawn from PyPI); from 1.108 on, the
``proxy`` extra needs ``litellm-proxy``, a package that PyPI does not have."""

INSTALL_OPT_OUT = "COCOON_BENCH_NO_INSTALL"  # set to 1: never install nginx or LiteLLM


# --- one streamed answer, timed ------------------------------------------------------------------


@dataclass
class Trace:
    """When each content-bearing chunk of one streamed answer arrived (perf_counter seconds)."""

    start: float
    times: list[float] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    engine_first: float | None = None  # (e): seconds from the worker handing it to its engine to the first chunk
    engine_wait: float | None = None  # (e), several streams: its engine busy with others while it waited

    def add(self, content: str, now: float) -> None:
        self.times.append(now)
        self.parts.append(content)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def tokens(self) -> int:
        return len(self.times)

    @property
    def ttft(self) -> float:
        return self.times[0] - self.start

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:], strict=False)]

    @property
    def end(self) -> float:
        return self.times[-1]

    @property
    def rate(self) -> float:
        """Tokens per second as the caller saw them: from sending the request to the last token."""
        return self.tokens / (self.end - self.start)


def delta_content(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    delta = choices[0].get("delta") or {}
    return delta.get("content") or ""


class HttpError(RuntimeError):
    pass


KEEPALIVE_EXPIRY = 5.0  # seconds an idle connection is kept: httpx's default (the openai client's pool)


@dataclass
class _Idle:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    since: float


_idle: dict[tuple[str, int], list[_Idle]] = {}


def _take_idle(address: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """The most recently used idle connection to ``address`` still open and not expired, if any
    (those the server has closed meanwhile, or kept too long, are closed here and dropped)."""
    pool = _idle.get(address, [])
    now = time.monotonic()
    while pool:
        idle = pool.pop()
        if now - idle.since < KEEPALIVE_EXPIRY and not idle.reader.at_eof() and not idle.writer.is_closing():
            return idle.reader, idle.writer
        idle.writer.close()
    return None


def close_idle_connections() -> None:
    """Close every idle connection the lean client keeps (at the end of a scenario)."""
    for pool in _idle.values():
        for idle in pool:
            idle.writer.close()
    _idle.clear()


async def stream_chat(url: str, body: bytes, api_key: str = "none", timeout: float = 300.0) -> Trace:
    """POST a streaming chat request to ``url`` (…/v1) and time each content chunk.

    Written on asyncio streams rather than httpx: httpx's AsyncClient costs milliseconds of CPU
    per request on these two cores, and would be measured with every configuration that has an
    HTTP hop. It keeps connections alive between requests as the ``openai`` client's pool does
    (httpx: idle ones for up to 5 s; one that the server has closed meanwhile is not used, and a
    request that a reused connection closes on before any answer is sent again on a new one, as
    httpx does), so a configuration's time to first token is not its HTTP server's accept."""
    parsed = httpx.URL(url)
    host, port = parsed.host, parsed.port or 80
    head = (
        f"POST {parsed.path.rstrip('/')}/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nAccept: text/event-stream\r\nAuthorization: Bearer {api_key}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    trace = Trace(time.perf_counter())
    async with asyncio.timeout(timeout):
        reused = _take_idle((host, port))
        reader, writer = reused or await asyncio.open_connection(host, port)
        writer.write(head + body)
        try:
            status_line = await reader.readline()
        except ConnectionError:
            if not reused:
                raise
            status_line = b""
        if not status_line and reused:  # closed by the server as it went idle: never seen there
            writer.close()
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(head + body)
            status_line = await reader.readline()
        keep = False
        try:
            keep = await _read_answer(url, reader, status_line, trace)
            return trace
        finally:
            if keep:
                _idle.setdefault((host, port), []).append(_Idle(reader, writer, time.monotonic()))
            else:
                writer.close()


async def _read_answer(url: str, reader: asyncio.StreamReader, status_line: bytes, trace: Trace) -> bool:
    """Read one streamed answer into ``trace``; whether the connection may carry another."""
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
    if status != 200:
        rest = await reader.read(2000)
        raise HttpError(f"{url}: HTTP {status}: {rest[:300]!r}")
    pending = b""
    done = False
    async for data in _body(reader, headers):
        now = time.perf_counter()
        pending += data
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.strip()
            if not line.startswith(b"data:") or done:
                continue  # comments (pings), event names, blank separators
            payload = line[5:].strip()
            if payload == b"[DONE]":
                done = True
                continue
            chunk = json.loads(payload)
            if "error" in chunk:
                raise HttpError(f"{url}: error event: {str(chunk['error'])[:300]}")
            if content := delta_content(chunk):
                trace.add(content, now)
    if not trace.times:
        raise HttpError(f"{url}: the answer had no content")
    framed = "chunked" in headers.get("transfer-encoding", "").lower() or "content-length" in headers
    return framed and headers.get("connection", "").lower() != "close" and not reader.at_eof()


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> Any:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailers, if any, up to the blank line that ends the body
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            yield data
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        while data := await reader.read(65536):
            yield data


# --- processes ---------------------------------------------------------------------------------


class Service:
    """A child process with its log in a file, stopped with SIGTERM (then SIGKILL)."""

    def __init__(
        self, name: str, args: list[str], log: Path, env: dict[str, str] | None = None, unset: tuple[str, ...] = ()
    ) -> None:
        self.name = name
        self.log_path = log
        child_env = {k: v for k, v in os.environ.items() if k not in unset} | {"PYTHONUNBUFFERED": "1"} | (env or {})
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    async def wait_http(self, url: str, timeout: float) -> None:
        """Until ``url`` answers 200, or fail with the log's tail."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as http:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.log()[-2000:]}")
                try:
                    if (await http.get(url)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not answer {url} in {timeout:.0f} s:\n{self.log()[-2000:]}")
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def llama_server(root: Path, model_path: Path, *, n_ctx: int, threads: int, threads_batch: int) -> tuple[Service, str]:
    """(b): ``python -m llama_cpp.server`` with the engine's settings, given explicitly. One
    ``Llama`` instance; the server serializes requests on a lock. ``interrupt_requests`` is off:
    by default a new request cuts the answer being streamed short. ``logits_all`` and
    ``use_mlock`` are set to ``Llama``'s defaults (the server's own defaults differ)."""
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        *("--model", str(model_path), "--model_alias", MODEL),
        *("--n_ctx", str(n_ctx), "--n_threads", str(threads), "--n_threads_batch", str(threads_batch)),
        *("--logits_all", "False", "--use_mlock", "False", "--interrupt_requests", "False", "--verbose", "False"),
        *("--host", "127.0.0.1", "--port", str(port)),
    ]
    return Service("llama_cpp.server", args, root / "llama-server.log"), f"http://127.0.0.1:{port}/v1"


def find_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def ensure_nginx(install: bool, progress: Any) -> str:
    """The nginx binary, installed with apt-get (as root, within 90 s) if missing and allowed;
    otherwise raises ``RuntimeError`` saying why not."""
    if found := find_nginx():
        return found
    if not install or os.environ.get(INSTALL_OPT_OUT) == "1":
        raise RuntimeError("nginx is not installed (apt-get install nginx; a full run as root installs it)")
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError("nginx is not installed and this is not root with apt-get")
    progress("nginx missing: apt-get install -y nginx (once)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "nginx"]
    deadline = time.monotonic() + 90
    for attempt in range(2):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=deadline - time.monotonic())
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError("apt-get install nginx took over 90 s") from exc
        if done.returncode == 0 and (found := find_nginx()):
            return found
        if attempt == 0:  # stale or missing package lists
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=60)
    last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
    raise RuntimeError(f"apt-get install nginx failed: {last[0][:200]}")


def nginx(root: Path, binary: str, upstream: str) -> tuple[Service, str, Path]:
    """(c): nginx as a reverse proxy in front of (b), streaming (``proxy_buffering off``), one
    worker process, keep-alive connections to (b). Its access log names the upstream."""
    up = httpx.URL(upstream)
    port = free_port()
    prefix = root / "nginx"
    prefix.mkdir()
    access = prefix / "access.log"
    temp = "\n".join(
        f"  {kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""{"user root;" if os.geteuid() == 0 else ""}
daemon off;
master_process on;
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 256; }}
http {{
  log_format bench '$remote_addr "$request" $status $body_bytes_sent upstream=$upstream_addr time=$request_time';
  access_log {access} bench;
{temp}
  upstream llama {{ server {up.host}:{up.port}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://llama;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_cache off;
      proxy_read_timeout 600s;
    }}
  }}
}}
"""
    )
    args = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    return Service("nginx", args, prefix / "stdout.log"), f"http://127.0.0.1:{port}/v1", access


def litellm_venv() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "cocoon-bench" / f"litellm-{LITELLM_VERSION}"


def ensure_litellm(install: bool, timeout: float, progress: Any) -> Path:
    """The ``litellm`` command of a separate virtual environment (never the project's: LiteLLM
    pins versions that conflict with ours), created on first use; raises ``RuntimeError`` with
    the reason when it is not there and cannot be made."""
    venv = litellm_venv()
    exe = venv / "bin" / "litellm"
    marker = venv / ".installed"
    if marker.exists() and exe.exists():
        return exe
    if os.environ.get(INSTALL_OPT_OUT) == "1":
        raise RuntimeError(f"LiteLLM is not installed in {venv} ({INSTALL_OPT_OUT}=1)")
    if not install:
        raise RuntimeError(f"LiteLLM is not installed in {venv} (a full run without --quick installs it)")
    progress(f"installing litellm[proxy]=={LITELLM_VERSION} into {venv} (once, a few minutes)")
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(venv, ignore_errors=True)
            raise RuntimeError(f"installing LiteLLM took over {timeout:.0f} s") from exc
        if done.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.startswith("ERROR")]
            raise RuntimeError(f"installing LiteLLM failed: {(lines or ['?'])[-1][:200]}")
    if not exe.exists():
        raise RuntimeError("LiteLLM installed without its litellm command")
    marker.write_text(LITELLM_VERSION + "\n")
    return exe


def litellm(root: Path, exe: Path, upstream: str) -> tuple[Service, str, str]:
    """(d): the LiteLLM proxy, one process, with (b) as an OpenAI-compatible backend. A master
    key (LiteLLM refuses to start without one), no database, no cost-map download (there is no
    network here), access log on. Returns the service, its URL and its key."""
    port = free_port()
    key = "sk-" + secrets.token_hex(16)
    config = root / "litellm.yaml"
    config.write_text(
        f"""model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: {upstream}
      api_key: none
litellm_settings:
  drop_params: true
  telemetry: false
general_settings:
  master_key: {key}
"""
    )
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "NO_DOCS": "True",
        "DISABLE_SCHEMA_UPDATE": "True",
    }
    # LITELLM_LOG would also set uvicorn's level, and a level above INFO drops the access log
    unset = (
        "LITELLM_LOG",
        "DATABASE_URL",
        "LITELLM_MASTER_KEY",
        "REDIS_HOST",
        "REDIS_URL",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
    )
    args = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    service = Service("litellm", args, root / "litellm.log", env=env, unset=unset)
    return service, f"http://127.0.0.1:{port}/v1", key
