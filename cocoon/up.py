"""``cocoon up``: a whole local network on loopback, watched over until Ctrl-C.

Starts one proxy, N workers on the embedded model and one client as child processes, each with
its own key (mode 0600) pinned in the others' configs, shows their start-up (model loading
included) as progress bars, proves the network answers with a first real chat request, prints
how to use it, and on SIGINT or SIGTERM stops every child it started. Children also get
SIGTERM from the kernel if ``up`` itself dies (PR_SET_PDEATHSIG), so none is left behind.
"""

from __future__ import annotations

import asyncio
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

from cocoon.config import TON, data_dir
from cocoon.engine.llama_cpp import EMBEDDED_MODEL_NAME
from cocoon.keys import load_or_create_identity, public_bytes
from cocoon.process import die_with_parent
from cocoon.status import read_status
from cocoon.up_chain import LocalChain, earned, prepare_chain, wallet_key

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


class Child:
    def __init__(self, name: str, args: list[str], state: Path) -> None:
        self.name = name
        self.status_path = state / f"{name}.status.json"
        self.status_path.unlink(missing_ok=True)
        self.log_path = state / "logs" / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        command = [sys.executable, "-m", "cocoon", *args, "--status-file", str(self.status_path)]
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent
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


def chain_config(state: Path, chain: LocalChain | None, name: str, role: str) -> str:
    """The chain settings of one node (empty without a chain)."""
    if chain is None:
        return ""
    lines = [
        'chain = "sandbox"',
        f"chain_url = {json.dumps(chain.url)}",
        f"root = {json.dumps(chain.root)}",
        f"wallet_key = {json.dumps(str(wallet_key(state, name)))}",
        f"payments_db = {json.dumps(str(state / 'payments' / f'{name}.db'))}",
        "registry_poll = 2.0",
    ]
    if role == "proxy":
        lines += ["settle_interval = 2.0", f"worker_deposit = {10 * TON}", "settle_on_exit = true"]
    elif role == "client":
        lines += [f"deposit = {10 * TON}"]
    return "\n".join(lines) + "\n"


def write_config(
    state: Path, *, proxy_port: int, client_port: int, workers: int, chain: LocalChain | None = None
) -> Path:
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
{chain_config(state, chain, "proxy", "proxy")}
[worker]
model = {json.dumps(EMBEDDED_MODEL_NAME)}
engine = "llama_cpp"
proxies = [{{ address = "127.0.0.1:{proxy_port}", public_key = "{proxy_key}" }}]
{chain_config(state, chain, "worker-1", "worker")}
[client]
listen = "127.0.0.1:{client_port}"
key_file = {json.dumps(str(state / "keys" / "client.key"))}
proxy = {{ address = "127.0.0.1:{proxy_port}", public_key = "{proxy_key}" }}
{chain_config(state, chain, "client", "client")}"""
    )
    return config


def stop_on_signals() -> dict[signal.Signals, Any]:
    """Raise ``_Stop`` at the first SIGINT or SIGTERM and ignore the ones after it, so that a
    second Ctrl-C (or a supervisor's signal on top of the terminal's) cannot cut the shutdown
    the first one began; the handlers it replaced, for the caller to put back."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        raise _Stop

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    return previous


def run_up(
    *, port: int, workers: int, capacity: int, state_dir: Path | None, once: bool, prompt: str, chain: bool = True
) -> int:
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
    proxy_port = _free_port()

    previous = stop_on_signals()
    children: list[Child] = []
    try:
        local_chain = _start_chain(console, children, state, proxy_port, workers) if chain else None
        config = write_config(state, proxy_port=proxy_port, client_port=port, workers=workers, chain=local_chain)
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
                        *(
                            [
                                "--wallet-key",
                                str(wallet_key(state, f"worker-{i}")),
                                "--payments-db",
                                str(state / "payments" / f"worker-{i}.db"),
                            ]
                            if local_chain
                            else []
                        ),
                    ],
                    state,
                )
            )
        children.append(Child("client", ["client", "--config", str(config)], state))
        url = _wait_ready(console, [c for c in children if c.name != "chain"], workers)
        console.print(f"[green]✓[/] network up: 1 proxy, {workers} workers, client at [bold]{url}[/]")
        console.print(
            "[bold yellow]! attestation is SIMULATED:[/] every node runs on the simulated TEE and accepts "
            "simulated evidence (development policy). Real deployments run in TDX or SEV-SNP with a production policy."
        )
        _first_request(console, url, prompt)
        if local_chain is not None:
            _print_payments(console, url, state, workers)
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
        # the chain last: the others settle on it as they stop
        for group in ([c for c in children if c.name != "chain"], [c for c in children if c.name == "chain"]):
            for child in reversed(group):
                child.stop()
            deadline = time.monotonic() + STOP_GRACE
            for child in reversed(group):
                child.wait(deadline)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if children:
            console.print(f"stopped {len(children)} processes; logs are in {state / 'logs'}")


def _start_chain(console: Console, children: list[Child], state: Path, proxy_port: int, workers: int) -> LocalChain:
    """Start the local chain and prepare its registry and wallets for this network."""
    chain = Child("chain", ["chain", "serve", "--state", str(state / "chain" / "sandbox-state.json"), "--port", "0"],
                  state)  # fmt: skip
    children.append(chain)
    deadline = time.monotonic() + 60
    with console.status("starting the local chain (TON sandbox)…"):
        while not (url := chain.status().get("url", "")):
            if chain.process.poll() is not None or time.monotonic() > deadline:
                raise UpError(f"the local chain did not start:\n{chain.log_tail()}")
            time.sleep(0.1)
    from cocoon.attest.model_hash import model_hash
    from cocoon.engine.llama_cpp import embedded_model_path

    with console.status("preparing the registry and wallets…"):
        proxy_key = public_bytes(load_or_create_identity(state / "keys" / "proxy.key"))
        local = asyncio.run(
            prepare_chain(
                url,
                state,
                proxy_key=proxy_key,
                proxy_endpoint=f"127.0.0.1:{proxy_port}",
                model_hash=model_hash(embedded_model_path(), cache=data_dir() / "model-hashes.json"),
                model=EMBEDDED_MODEL_NAME,
                nodes=["proxy", "client", *(f"worker-{i}" for i in range(1, workers + 1))],
            )
        )
    console.print(f"[green]✓[/] local chain at {url}: registry {local.root}")
    return local


def _print_payments(console: Console, url: str, state: Path, workers: int) -> None:
    """What the first request cost and what each worker has earned so far."""
    try:
        receipts = httpx.get(url + "/cocoon/receipts?limit=1", timeout=5).json().get("data", [])
    except (httpx.HTTPError, ValueError):
        receipts = []
    if receipts:
        cost = int(receipts[0].get("cost_nanoton", 0))
        console.print(f"[bold]cost:[/] {cost} nanoTON ({cost / TON:.9f} TON), paid with a signed voucher")
    time.sleep(0.5)  # the proxy's payout voucher reaches the worker just after the answer
    for i in range(1, workers + 1):
        amount = earned(state / "payments" / f"worker-{i}.db")
        console.print(f"  worker-{i} has earned {amount} nanoTON in payout vouchers")


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
