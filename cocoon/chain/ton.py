"""The ``ton`` backend: the real TON network through liteservers, with ``pytoniq``.

The global config (liteservers) is ``mainnet``, ``testnet`` (fetched from ton.org) or a file.
Messages are the same signed externals the sandbox runs in tests; this module only moves them.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from pytoniq import LiteBalancer
from pytoniq_core import Address

from cocoon.chain.errors import ChainError, GetMethodError
from cocoon.chain.ledger import AccountInfo, StackItem, Transaction, raw

NETWORKS = {
    "mainnet": "https://ton.org/global.config.json",
    "testnet": "https://ton.org/testnet-global.config.json",
}
MAX_CONFIG = 1024 * 1024


def load_global_config(source: str) -> dict[str, Any]:
    """The liteserver config of ``source``: a network name or a JSON file (blocking: called in a
    thread by ``TonLedger``)."""
    if source in NETWORKS:
        text = _fetch(source, NETWORKS[source])
    else:
        path = Path(source)
        try:
            if path.stat().st_size > MAX_CONFIG:
                raise ChainError("config", f"{path} is larger than {MAX_CONFIG} bytes")
            text = path.read_text()
        except OSError as exc:
            raise ChainError("config", f"cannot read the TON config {path}: {exc.strerror}") from exc
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise ChainError("config", f"the TON config {source} is not JSON") from exc
    if not isinstance(config, dict) or not isinstance(config.get("liteservers"), list) or not config["liteservers"]:
        raise ChainError("config", f"the TON config {source} lists no liteservers")
    return config


def _fetch(source: str, url: str) -> str:
    """The config at ``url``, read up to ``MAX_CONFIG`` bytes."""
    import httpx

    body = bytearray()
    try:
        with httpx.stream("GET", url, timeout=30.0) as response:
            response.raise_for_status()
            for part in response.iter_bytes():
                body += part
                if len(body) > MAX_CONFIG:
                    raise ChainError("config", f"the {source} config is larger than {MAX_CONFIG} bytes")
    except httpx.HTTPError as exc:
        raise ChainError("unreachable", f"cannot fetch the {source} config: {exc}") from exc
    return body.decode("utf-8", errors="replace")


class TonLedger:
    name = "ton"

    def __init__(self, source: str, trust_level: int = 2) -> None:
        self.source = source
        self.trust_level = trust_level
        self._client: Any = None

    async def _connected(self) -> Any:
        if self._client is None:
            # (fetched from ton.org for a network name: not in the event loop)
            config = await asyncio.to_thread(load_global_config, self.source)
            client = LiteBalancer.from_config(config, trust_level=self.trust_level)
            try:
                await client.start_up()
            except Exception as exc:
                raise ChainError("unreachable", f"no liteserver of {self.source} answers: {exc}") from exc
            self._client = client
        return self._client

    async def send_external(self, boc: bytes) -> list[Transaction]:
        client = await self._connected()
        try:
            await client.raw_send_message(boc)
        except Exception as exc:
            raise ChainError("rejected", f"the liteserver refused the message: {exc}") from exc
        return []

    async def run_get_method(
        self, address: Address, method: str, stack: list[StackItem] | None = None
    ) -> list[StackItem]:
        client = await self._connected()
        try:
            result: list[StackItem] = await client.run_get_method(address, method, stack or [])
        except Exception as exc:
            code = getattr(exc, "exit_code", None)
            if isinstance(code, int):
                raise GetMethodError(method, code) from exc
            raise ChainError("failed", f"get-method {method} on {raw(address)} failed: {exc}") from exc
        return result

    async def account(self, address: Address) -> AccountInfo:
        client = await self._connected()
        try:
            account, _ = await client.raw_get_account_state(address)
        except Exception as exc:
            raise ChainError("failed", f"cannot read the account {raw(address)}: {exc}") from exc
        if account is None:
            return AccountInfo(raw(address), "nonexist", 0)
        state = account.storage.state
        status = {"account_active": "active", "account_frozen": "frozen"}.get(state.type_, "uninit")
        code = state.state_init.code if status == "active" and state.state_init is not None else None
        return AccountInfo(
            raw(address), status, int(account.storage.balance.grams), bytes(code.hash) if code is not None else None
        )

    async def chain_time(self) -> int:
        return int(time.time())

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close_all()
            self._client = None
