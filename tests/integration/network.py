"""Start real Cocoon processes on loopback for integration tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from cocoon.attest.model_hash import model_hash
from cocoon.chain.contracts import TON, RootParams
from cocoon.engine.llama_cpp import EMBEDDED_MODEL_NAME, embedded_model_path
from cocoon.keys import load_or_create_identity, public_bytes
from cocoon.status import read_status
from cocoon.up_chain import UP_PARAMS, prepare_chain

MODEL = EMBEDDED_MODEL_NAME


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stream_until(url: str, deadline: float, **extra: Any) -> int:
    """Streamed chat requests one after another until ``deadline`` (monotonic); each must be
    answered whole (a 200, the final ``[DONE]``, no error event). How many were answered."""
    answered = 0
    with httpx.Client(base_url=url, timeout=30) as http:
        while time.monotonic() < deadline:
            messages = [{"role": "user", "content": "Say hi."}]
            body = {"model": MODEL, "messages": messages, "max_tokens": 8, "stream": True, **extra}
            with http.stream("POST", "/chat/completions", json=body) as answer:
                assert answer.status_code == 200, answer.read()
                text = "".join(answer.iter_text())
            assert "[DONE]" in text and '"error"' not in text, text[-300:]
            answered += 1
    return answered


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


class Node:
    def __init__(
        self, name: str, args: list[str], root: Path, env: dict[str, str] | None = None, module: str = "cocoon"
    ) -> None:
        self.name = name
        self.status_path = root / f"{name}.status.json"
        self.status_path.unlink(missing_ok=True)
        self.log_path = root / f"{name}.log"
        self.killed = False
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", module, *args, "--status-file", str(self.status_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
            )

    @property
    def status(self) -> dict[str, Any]:
        return read_status(self.status_path)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, *texts: str, timeout: float = 5.0) -> str:
        """Wait until one of ``texts`` appears in the log (a node logs after it acts)."""
        deadline = time.monotonic() + timeout
        while not any(text in (log := self.log) for text in texts):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} never logged any of {texts}")
            time.sleep(0.05)
        return log

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.killed = sig in (signal.SIGKILL, signal.SIGTERM)
        if self.alive():
            self.process.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Network:
    """A proxy, workers and a client as separate processes, configured through one TOML file."""

    def __init__(
        self,
        root: Path,
        *,
        workers: int = 2,
        capacity: int = 2,
        proxy: dict[str, Any] | None = None,
        worker: dict[str, Any] | None = None,
        client: dict[str, Any] | None = None,
        wait: bool = True,
        proxy_module: str = "cocoon",
        client_module: str = "cocoon",
        chain: Chain | None = None,
        chain_params: RootParams | None = None,
        pin_proxy: bool = True,
    ) -> None:
        self.proxy_module = proxy_module
        self.client_module = client_module
        self.chain = chain
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.proxy_port = free_port()
        self.client_port = free_port()
        self.proxy_key = public_bytes(load_or_create_identity(root / "proxy.key")).hex()
        self.worker_keys = [public_bytes(load_or_create_identity(root / f"worker-{i}.key")).hex() for i in range(1, 9)]
        client_key = public_bytes(load_or_create_identity(root / "client.key")).hex()
        pin = {"address": f"127.0.0.1:{self.proxy_port}", "public_key": self.proxy_key}
        paying: dict[str, dict[str, Any]] = {"proxy": {}, "worker": {}, "client": {}}
        if chain is not None:
            names = ["proxy", "client", *(f"worker-{i}" for i in range(1, workers + 1))]
            self.root_address = chain.prepare(root, bytes.fromhex(self.proxy_key), self.proxy_port, names, chain_params)
            for role in paying:
                paying[role] = chain.settings(root, role, self.root_address)
        tables = {
            "proxy": {
                "listen": f"127.0.0.1:{self.proxy_port}",
                "key_file": str(root / "proxy.key"),
                "worker_keys": self.worker_keys,
                "client_keys": [client_key],
                "models": [MODEL],
                **paying["proxy"],
                **(proxy or {}),
            },
            "worker": {
                "model": MODEL,
                "proxies": [pin],
                "capacity": capacity,
                "threads": 1,
                **paying["worker"],
                **(worker or {}),
            },
            "client": {
                "listen": f"127.0.0.1:{self.client_port}",
                "key_file": str(root / "client.key"),
                **({"proxy": pin} if pin_proxy else {}),
                **paying["client"],
                **(client or {}),
            },
        }
        self.config = root / "network.toml"
        self.config.write_text(
            "\n".join(
                f"[{table}]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in values.items()) + "\n"
                for table, values in tables.items()
            )
        )
        self.nodes: dict[str, Node] = {}
        self.start_proxy()
        for i in range(1, workers + 1):
            self.start_worker(i)
        self.start_client()
        self.url = f"http://127.0.0.1:{self.client_port}/v1"
        if wait:
            self.wait_workers(workers)

    def start_proxy(self) -> Node:
        env = {"COCOON_TEST_RECORD": str(self.root / "proxy.record")}
        node = Node("proxy", ["proxy", "--config", str(self.config)], self.root, env=env, module=self.proxy_module)
        self.nodes["proxy"] = node
        return node

    def start_client(self) -> Node:
        node = Node("client", ["client", "--config", str(self.config)], self.root, module=self.client_module)
        self.nodes["client"] = node
        return node

    def start_worker(self, i: int, extra: Iterable[str] = (), fault: str = "") -> Node:
        """Start worker ``i``; with ``fault``, as the fault-injecting test double."""
        name = f"worker-{i}"
        if self.chain is not None:
            extra = [*extra, "--wallet-key", str(self.root / "keys" / f"{name}-wallet.key")]
            extra = [*extra, "--payments-db", str(self.root / f"{name}-payments.db")]
        node = Node(
            name,
            [
                "worker",
                "--config",
                str(self.config),
                "--name",
                name,
                "--key-file",
                str(self.root / f"{name}.key"),
                *extra,
            ],
            self.root,
            env={"COCOON_TEST_FAULT": fault} if fault else None,
            module="tests.integration.faulty_worker" if fault else "cocoon",
        )
        self.nodes[name] = node
        return node

    def wait_workers(self, count: int, timeout: float = 120.0) -> None:
        """Wait until the client lists ``count`` live workers for the model."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            for node in self.nodes.values():
                if not node.alive() and not node.killed:
                    raise RuntimeError(f"{node.name} exited early:\n{node.log[-3000:]}")
            try:
                last = httpx.get(self.url + "/models", timeout=2).json()
                if any(m["id"] == MODEL and m["workers"] == count for m in last.get("data", [])):
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"network not ready: {last}")

    def worker_requests_done(self, name: str) -> int:
        return self.nodes[name].log.count(" done: ")

    def stop(self) -> None:
        for node in reversed(list(self.nodes.values())):
            node.stop()


class Chain:
    """The local chain service (``cocoon chain serve``, a real Node process running the real
    contracts) and, per network, a registry prepared as ``cocoon up`` prepares it."""

    def __init__(self, root: Path, params: RootParams = UP_PARAMS) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.params = params
        self.node = Node("chain", ["chain", "serve", "--state", str(root / "chain.json"), "--port", "0"], root)
        deadline = time.monotonic() + 60
        while not (url := self.node.status.get("url", "")):
            if not self.node.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the chain did not start:\n{self.node.log}")
            time.sleep(0.05)
        self.url: str = url

    def prepare(
        self, root: Path, proxy_key: bytes, proxy_port: int, nodes: list[str], params: RootParams | None = None
    ) -> str:
        local = asyncio.run(
            prepare_chain(
                self.url,
                root,
                proxy_key=proxy_key,
                proxy_endpoint=f"127.0.0.1:{proxy_port}",
                model_hash=model_hash(embedded_model_path(), cache=root.parent / "model-hashes.json"),
                model=MODEL,
                nodes=nodes,
                params=params or self.params,
            )
        )
        return local.root

    def settings(self, root: Path, role: str, registry: str) -> dict[str, Any]:
        values: dict[str, Any] = {
            "chain": "sandbox",
            "chain_url": self.url,
            "root": registry,
            "wallet_key": str(root / "keys" / f"{role}-wallet.key"),
            "payments_db": str(root / f"{role}-payments.db"),
            "registry_poll": 0.5,
        }
        if role == "proxy":
            values |= {"settle_interval": 0.5, "worker_deposit": 10 * TON, "redeem_threshold": TON}
        elif role == "worker":
            values |= {"settle_interval": 0.5}
        elif role == "client":
            values |= {"deposit": 10 * TON}
        return values

    def stop(self) -> None:
        self.node.stop()
