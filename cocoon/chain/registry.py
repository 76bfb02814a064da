"""The registry (root contract): read it whole, follow its version, change it as its owner."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from pytoniq_core import Address, Cell, HashMap

from cocoon.attest.policy import Policy, RolePolicy
from cocoon.chain import contracts as c
from cocoon.chain.errors import ChainError
from cocoon.chain.ledger import Ledger, StackItem
from cocoon.chain.wallet import Transfer, Wallet

log = logging.getLogger("cocoon.chain")

ROOT_MESSAGE_VALUE = c.TON // 20  # attached to each change; the unused part comes back


@dataclass(frozen=True)
class RegistryState:
    """Everything the root contract holds, at one config version."""

    address: str
    version: int
    owner: str
    params: c.RootParams
    proxy_images: frozenset[bytes] = frozenset()
    worker_images: frozenset[bytes] = frozenset()
    models: dict[bytes, str] = field(default_factory=dict)  # model hash → name
    proxies: dict[bytes, str] = field(default_factory=dict)  # proxy public key → endpoint

    def to_json(self) -> dict[str, Any]:
        p = self.params
        return {
            "address": self.address,
            "version": self.version,
            "owner": self.owner,
            "params": {
                "price_per_token": p.price_per_token,
                "prompt_mult": p.prompt_mult,
                "cached_mult": p.cached_mult,
                "completion_mult": p.completion_mult,
                "reasoning_mult": p.reasoning_mult,
                "commission_bps": p.commission_bps,
                "min_client_stake": p.min_client_stake,
                "close_delay": p.close_delay,
            },
            "proxy_images": sorted(h.hex() for h in self.proxy_images),
            "worker_images": sorted(h.hex() for h in self.worker_images),
            "models": {h.hex(): name for h, name in sorted(self.models.items())},
            "proxies": {k.hex(): endpoint for k, endpoint in sorted(self.proxies.items())},
        }


def policy_from_registry(base: Policy, state: RegistryState) -> Policy:
    """``base`` (its mode, TEEs and TCB levels) with the registry's images and models: the
    registry replaces the policy file's lists."""
    models = sorted(h.hex() for h in state.models)
    return Policy(
        mode=base.mode,
        tees=base.tees,
        tcb_statuses=base.tcb_statuses,
        proxy=RolePolicy(image_hashes=sorted(h.hex() for h in state.proxy_images), model_hashes="*"),
        worker=RolePolicy(image_hashes=sorted(h.hex() for h in state.worker_images), model_hashes=models),
        max_cache_seconds=base.max_cache_seconds,
    )


def _int(item: StackItem) -> int:
    if not isinstance(item, int):
        raise ValueError(f"expected an integer on the stack, got {type(item).__name__}")
    return item


def _dict(item: StackItem, value: Callable[[Any], Any]) -> dict[int, Any]:
    if item is None:
        return {}
    if not isinstance(item, Cell):
        raise ValueError("expected a dictionary cell on the stack")
    parsed = HashMap.parse(item.begin_parse(), 256, None, value)
    return cast(dict[int, Any], parsed or {})


def _key(value: int) -> bytes:
    return value.to_bytes(32, "big")


MAX_ENTRIES = 256  # per list read from a registry (the root contract keeps at most 32)


async def read_registry(ledger: Ledger, root: Address) -> RegistryState:
    """The registry as the chain shows it; ``ChainError`` when what is there is not a registry's
    data (it is input from the network: a node must refuse it, not fail on it)."""
    try:
        return await _read_registry(ledger, root)
    except (ValueError, TypeError, OverflowError, KeyError, IndexError, AttributeError) as exc:
        raise ChainError("malformed", f"the registry's data does not read as one ({type(exc).__name__})") from exc


async def _read_registry(ledger: Ledger, root: Address) -> RegistryState:
    version = _int((await ledger.run_get_method(root, "get_version"))[0])
    owner_stack = await ledger.run_get_method(root, "get_owner")
    raw_params = [_int(x) for x in await ledger.run_get_method(root, "get_params")]
    images = {}
    for role in (c.ROLE_PROXY, c.ROLE_WORKER):
        stack = await ledger.run_get_method(root, "get_images", [role])
        images[role] = frozenset(_key(k) for k in _dict(stack[0], lambda s: s.load_bit()))
    models = _dict((await ledger.run_get_method(root, "get_models"))[0], lambda s: s.load_ref())
    proxies = _dict((await ledger.run_get_method(root, "get_proxies"))[0], lambda s: s.load_ref())
    owner: Any = owner_stack[0]  # a slice holding the owner's address
    if max(len(images[c.ROLE_PROXY]), len(images[c.ROLE_WORKER]), len(models), len(proxies)) > MAX_ENTRIES:
        raise ValueError("too many entries")
    return RegistryState(
        address=str(root.to_str(is_user_friendly=False)),
        version=version,
        owner=str(owner.load_address().to_str(is_user_friendly=False)) if owner is not None else "",
        params=c.RootParams(*raw_params),
        proxy_images=images[c.ROLE_PROXY],
        worker_images=images[c.ROLE_WORKER],
        models={_key(k): c.read_text(v) for k, v in models.items()},
        proxies={_key(k): c.read_text(v) for k, v in proxies.items()},
    )


async def registry_version(ledger: Ledger, root: Address) -> int:
    return _int((await ledger.run_get_method(root, "get_version"))[0])


class RegistryWatcher:
    """Polls the root's config version and calls ``on_change`` with the new state."""

    def __init__(
        self,
        ledger: Ledger,
        root: Address,
        on_change: Callable[[RegistryState], Awaitable[None] | None],
        interval: float = 10.0,
    ) -> None:
        self.ledger = ledger
        self.root = root
        self.on_change = on_change
        self.interval = interval
        self.state: RegistryState | None = None

    async def load(self) -> RegistryState:
        self.state = await read_registry(self.ledger, self.root)
        return self.state

    async def poll_once(self) -> bool:
        """Read the version; on a change, the whole registry. True when it changed."""
        version = await registry_version(self.ledger, self.root)
        if self.state is not None and version == self.state.version:
            return False
        state = await read_registry(self.ledger, self.root)
        log.info("registry %s is at version %d", state.address, state.version)
        result = self.on_change(state)
        if result is not None:
            await result
        self.state = state  # once applied: a change that failed to apply is tried at the next poll
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll_once()
            except Exception as exc:  # noqa: BLE001 - the chain may be away for a while: keep polling
                log.warning("cannot read the registry: %s", exc)


class RegistryAdmin:
    """The owner's changes to the registry, each one message from the owner's wallet."""

    def __init__(self, wallet: Wallet, root: Address) -> None:
        self.wallet = wallet
        self.root = root

    @classmethod
    async def deploy(cls, wallet: Wallet, params: c.RootParams, nonce: int = 0) -> RegistryAdmin:
        init = c.root_init(wallet.address, params, nonce)
        root = c.address_of(init)
        await wallet.send([Transfer(root, ROOT_MESSAGE_VALUE, None, init, bounce=False)])
        return cls(wallet, root)

    async def _send(self, body: Cell) -> None:
        await self.wallet.send([Transfer(self.root, ROOT_MESSAGE_VALUE, body)])

    async def add_image(self, role: int, image_hash: bytes) -> None:
        await self._send(c.add_image(role, image_hash))

    async def remove_image(self, role: int, image_hash: bytes) -> None:
        await self._send(c.remove_image(role, image_hash))

    async def set_model(self, model_hash: bytes, name: str) -> None:
        await self._send(c.set_model(model_hash, name))

    async def remove_model(self, model_hash: bytes) -> None:
        await self._send(c.remove_model(model_hash))

    async def set_proxy(self, public_key: bytes, endpoint: str) -> None:
        await self._send(c.set_proxy(public_key, endpoint))

    async def remove_proxy(self, public_key: bytes) -> None:
        await self._send(c.remove_proxy(public_key))

    async def set_params(self, params: c.RootParams) -> None:
        await self._send(c.set_params(params))
