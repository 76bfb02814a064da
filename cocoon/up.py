"""``cocoon up``: a whole local network on loopback, watched over until Ctrl-C.

Starts one proxy, N workers on the embedded model and one client as child processes, each with
its own key (mode 0600) pinned in the others' configs, shows their start-up (model loading
included) as progress bars, proves the network answers with a first real chat request, prints
how to use it, and on SIGINT or SIGTERM stops every child it started. Children also get
SIGTERM from the kernel if ``up`` itself dies (PR_SET_PDEATHSIG), so none is left behind.
"""

from __future__ import annotations

import ctypes
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import IO, Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

from cocoon.config import data_dir
from cocoon.engine.llama_cpp import EMBEDDED_MODEL_NAME
from cocoon.keys import load_or_create_identity, public_bytes
from cocoon.status import read_status

START_TIMEOUT = 300.0
STOP_GRACE = 5.0


class UpError(Exception):
    """``up`` could not bring the network up; one line for the user."""


class _Stop(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Child:
    def __init__(self, name: str, args: list[str], state: Path) -> None:
        self.name = name
        self.status_path = state / f"{name}.status.json"
        self.status_path.unlink(missing_ok=True)
        self.log_path = state / "logs" / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        command = [sys.executable, "-m", "cocoon", *args, "--status-file", str(self.status_path)]
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )

    def status(self) -> dict[str, Any]:
        return read_status(self.status_path)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, deadline: float) -> None:
        try:
            self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def write_config(state: Path, *, proxy_port: int, client_port: int, workers: int) -> Path:
    proxy_key = public_bytes(load_or_create_identity(state / "keys" / "proxy.key")).hex()
    worker_keys = [
        public_bytes(load_or_create_identity(state / "keys" / f"worker-{i}.key")).hex() for i in range(1, workers + 1)
    ]
    client_key = public_bytes(load_or_create_identity(state / "keys" / "client.key")).hex()
    config = state / "network.toml"
    config.write_text(
        f"""# Written by `cocoon up`: a local network on loopback.
[proxy]
listen = "127.0.0.1:{proxy_port}"
key_file = {json.dumps(str(state / "keys" / "proxy.key"))}
worker_keys = {json.dumps(worker_keys)}
client_keys = {json.dumps([client_key])}
models = [{json.dumps(EMBEDDED_MODEL_NAME)}]

[worker]
model = {json.dumps(EMBEDDED_MODEL_NAME)}
engine = "llama_cpp"
proxies = [{{ address = "127.0.0.1:{proxy_port}", public_key = "{proxy_key}" }}]

[client]
listen = "127.0.0.1:{client_port}"
key_file = {json.dumps(str(state / "keys" / "client.key"))}
proxy = {{ address = "127.0.0.1:{proxy_port}", public_key = "{proxy_key}" }}
"""
    )
    return config


def run_up(*, port: int, workers: int, capacity: int, state_dir: Path | None, once: bool, prompt: str) -> int:
    console = Console(stderr=False, highlight=False)
    if workers < 1 or capacity < 1:
        raise UpError("--workers and --capacity must be at least 1")
    state = state_dir or data_dir() / "up"
    (state / "logs").mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    if port == 0:
        port = _free_port()
    elif not _port_is_free(port):
        raise UpError(f"port {port} is in use; pick another with --port (0 = any free port)")
    config = write_config(state, proxy_port=_free_port(), client_port=port, workers=workers)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    children: list[Child] = []
    try:
        children.append(Child("proxy", ["proxy", "--config", str(config)], state))
        for i in range(1, workers + 1):
            key = state / "keys" / f"worker-{i}.key"
            children.append(
                Child(
                    f"worker-{i}",
                    [
                        "worker",
                        "--config",
                        str(config),
                        "--name",
                        f"worker-{i}",
                        "--key-file",
                        str(key),
                        "--capacity",
                        str(capacity),
                    ],
                    state,
                )
            )
        children.append(Child("client", ["client", "--config", str(config)], state))
        url = _wait_ready(console, children, workers)
        console.print(f"[green]✓[/] network up: 1 proxy, {workers} workers, client at [bold]{url}[/]")
        console.print(
            "[bold yellow]! attestation is SIMULATED:[/] every node runs on the simulated TEE and accepts "
            "simulated evidence (development policy). Real deployments run in TDX or SEV-SNP with a production policy."
        )
        _first_request(console, url, prompt)
        _print_usage(console, url)
        if once:
            return 0
        console.print("Serving. Press Ctrl-C to stop every process.")
        while True:
            for child in children:
                if child.process.poll() is not None:
                    console.print(f"[red]{child.name} exited ({child.process.returncode}); stopping[/]")
                    console.print(child.log_tail())
                    return 1
            time.sleep(0.5)
    except _Stop:
        console.print("\nstopping…")
        return 0
    finally:
        # Signals during shutdown must not interrupt it.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        for child in reversed(children):
            child.stop()
        deadline = time.monotonic() + STOP_GRACE
        for child in reversed(children):
            child.wait(deadline)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if children:
            console.print(f"stopped {len(children)} processes; logs are in {state / 'logs'}")


def _wait_ready(console: Console, children: list[Child], workers: int) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[what]}"),
        console=console,
    ) as progress:
        tasks = {c.name: progress.add_task(c.name, total=1, what="starting") for c in children}
        url = ""
        while time.monotonic() < deadline:
            for child in children:
                if child.process.poll() is not None:
                    raise UpError(f"{child.name} exited during start-up:\n{child.log_tail()}")
                status = child.status()
                state = status.get("state")
                if state == "loading":
                    total = max(1, int(status.get("total") or 1))
                    progress.update(
                        tasks[child.name],
                        total=total,
                        completed=int(status.get("done") or 0),
                        what=status.get("what", ""),
                    )
                elif state == "ready":
                    what = "ready"
                    if child.name.startswith("worker") and not status.get("proxies"):
                        what = "model loaded; connecting to the proxy"
                    else:
                        progress.update(tasks[child.name], total=1, completed=1)
                    progress.update(tasks[child.name], what=what)
                    if child.name == "client":
                        url = status.get("url", "")
            if url and _network_serves(url, workers):
                for task in tasks.values():
                    progress.update(task, total=1, completed=1, what="ready")
                return url
            time.sleep(0.1)
    raise UpError(
        f"the network did not come up within {START_TIMEOUT:.0f} s; see the logs in {children[0].log_path.parent}"
    )


def _network_serves(url: str, workers: int) -> bool:
    try:
        models = httpx.get(url + "/models", timeout=2).json().get("data", [])
    except (httpx.HTTPError, ValueError):
        return False
    return any(m.get("id") == EMBEDDED_MODEL_NAME and m.get("workers", 0) >= workers for m in models)


def _first_request(console: Console, url: str, prompt: str) -> None:
    console.print(f"[bold]first request[/] (client → proxy → worker): {prompt}")
    body = {
        "model": EMBEDDED_MODEL_NAME,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 64,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    usage: dict[str, Any] = {}
    console.print("[bold]answer:[/] ", end="")
    try:
        with httpx.stream("POST", url + "/chat/completions", json=body, timeout=120) as response:
            if response.status_code != 200:
                response.read()
                raise UpError(f"the first request failed with HTTP {response.status_code}: {response.text}")
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise UpError(f"the first request failed: {chunk['error'].get('message')}")
                for choice in chunk.get("choices", []):
                    console.print((choice.get("delta") or {}).get("content") or "", end="", markup=False)
                usage = chunk.get("usage") or usage
    except httpx.HTTPError as exc:
        raise UpError(f"the first request failed: {exc}") from exc
    console.print()
    console.print(
        f"[dim]{usage.get('prompt_tokens', '?')} prompt tokens, "
        f"{usage.get('completion_tokens', '?')} completion tokens[/]"
    )


def _print_usage(console: Console, url: str) -> None:
    console.print(f"\n[bold]OpenAI base URL:[/] {url}\n")
    console.print("[bold]curl:[/]")
    console.print(
        f"curl -s {url}/chat/completions -H 'Content-Type: application/json' "
        f'-d \'{{"model": "{EMBEDDED_MODEL_NAME}", "messages": [{{"role": "user", "content": "Hello!"}}]}}\'',
        markup=False,
        soft_wrap=True,
    )
    console.print("\n[bold]Python[/] (pip install openai):")
    console.print(
        "from openai import OpenAI\n"
        f'client = OpenAI(base_url="{url}", api_key="unused")\n'
        f'stream = client.chat.completions.create(model="{EMBEDDED_MODEL_NAME}",\n'
        '    messages=[{"role": "user", "content": "Hello!"}], stream=True)\n'
        "for chunk in stream:\n"
        '    print(chunk.choices[0].delta.content or "", end="", flush=True)\n',
        markup=False,
        soft_wrap=True,
    )
