"""The local chain of ``cocoon up``: a registry that allows its own simulated images and the
embedded model, and funded wallets for every node. Idempotent across restarts of ``up``."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from cocoon.attest.sim import SimMeasurements
from cocoon.chain import contracts as c
from cocoon.chain.access import parse_address
from cocoon.chain.ledger import raw
from cocoon.chain.registry import RegistryAdmin, read_registry
from cocoon.chain.sandbox import SandboxLedger
from cocoon.chain.wallet import Wallet
from cocoon.keys import load_or_create_identity

# The demo network's prices: 1000 nanoTON per token, prompt ×1, cached ×0.5, completion and
# reasoning ×2; the proxy keeps 10 %. A client locks 1 TON as stake.
UP_PARAMS = c.RootParams(
    price_per_token=1000,
    prompt_mult=10000,
    cached_mult=5000,
    completion_mult=20000,
    reasoning_mult=20000,
    commission_bps=1000,
    min_client_stake=c.TON,
    close_delay=3600,
)
OWNER_FUNDS = 1000 * c.TON
NODE_FUNDS = 100 * c.TON


@dataclass(frozen=True)
class LocalChain:
    url: str
    root: str


def wallet_key(state: Path, name: str) -> Path:
    return state / "keys" / f"{name}-wallet.key"


async def _fund(ledger: SandboxLedger, wallet: Wallet, amount: int) -> None:
    if await wallet.balance() < amount // 2:
        await ledger.faucet(wallet.address, amount)


async def prepare_chain(
    url: str,
    state: Path,
    *,
    proxy_key: bytes,
    proxy_endpoint: str,
    model_hash: bytes,
    model: str,
    nodes: list[str],
    params: c.RootParams = UP_PARAMS,
) -> LocalChain:
    """Deploy (or find) the registry, make it allow this network, and fund the nodes' wallets."""
    ledger = SandboxLedger(url)
    try:
        owner = Wallet(ledger, load_or_create_identity(wallet_key(state, "owner")))
        await _fund(ledger, owner, OWNER_FUNDS)
        root_file = state / "chain" / "root.txt"
        admin: RegistryAdmin | None = None
        if root_file.exists():
            admin = RegistryAdmin(owner, parse_address(root_file.read_text()))
            if (await ledger.account(admin.root)).status != "active":
                admin = None
        if admin is None:
            admin = await RegistryAdmin.deploy(owner, params)
            root_file.parent.mkdir(parents=True, exist_ok=True)
            root_file.write_text(raw(admin.root) + "\n")
        registry = await read_registry(ledger, admin.root)
        image = SimMeasurements().image_hash
        if image not in registry.proxy_images:
            await admin.add_image(c.ROLE_PROXY, image)
        if image not in registry.worker_images:
            await admin.add_image(c.ROLE_WORKER, image)
        if registry.models.get(model_hash) != model:
            await admin.set_model(model_hash, model)
        if registry.proxies.get(proxy_key) != proxy_endpoint:
            await admin.set_proxy(proxy_key, proxy_endpoint)
        for name in nodes:
            await _fund(ledger, Wallet(ledger, load_or_create_identity(wallet_key(state, name))), NODE_FUNDS)
        return LocalChain(url, raw(admin.root))
    finally:
        await ledger.aclose()


def earned(payments_db: Path) -> int:
    """What a worker holds in payout vouchers (read from its database, read-only)."""
    if not payments_db.exists():
        return 0
    db = sqlite3.connect(f"file:{payments_db}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT COALESCE(SUM(amount), 0) FROM channels WHERE role = 'worker'").fetchone()
        return int(row[0])
    finally:
        db.close()
