"""The chain commands (``cocoon chain``, ``cocoon wallet``, ``cocoon registry``) against one real
local chain service, as a user runs them."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytoniq_core import Address
from typer.testing import CliRunner, Result

from cocoon.chain.channels import Channel
from cocoon.chain.sandbox import ChainServer, SandboxLedger
from cocoon.chain.wallet import Wallet
from cocoon.cli_chain import chain_app, registry_app, wallet_app
from cocoon.keys import load_identity, load_or_create_identity, public_bytes
from cocoon.payments.store import PaymentStore
from cocoon.payments.vouchers import TAG_CLIENT_VOUCHER, Voucher

pytestmark = pytest.mark.integration

TON = 10**9
CLOSE_DELAY = 20  # seconds: the sandbox clock is moved past it (wallet messages stay valid 60 s)
MIN_STAKE = 200_000_000

app = typer.Typer()
app.add_typer(chain_app, name="chain")
app.add_typer(wallet_app, name="wallet")
app.add_typer(registry_app, name="registry")


def run(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, f"{args} → {result.exit_code}: {result.output} {result.exception!r}"
    return result


def run_json(*args: str) -> Any:
    return json.loads(run(*args, "--json").stdout)


def refused(*args: str) -> str:
    """The command fails with exit code 2 and one line on stderr; that line."""
    result = run(*args, code=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cocoon: "), result.stderr
    return lines[0]


@dataclass(frozen=True)
class World:
    url: str
    dir: Path
    client_wallet: Path
    proxy_wallet: Path
    root: str

    def chain(self, wallet: Path | None = None) -> list[str]:
        return ["--chain-url", self.url, "--wallet-key", str(wallet or self.client_wallet)]

    def registry(self, wallet: Path | None = None) -> list[str]:
        return [*self.chain(wallet), "--root", self.root]

    def address(self, wallet: Path) -> str:
        return str(run_json("wallet", "address", "--wallet-key", str(wallet))["address"])


@pytest.fixture(scope="module")
def chain_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = ChainServer(tmp_path_factory.mktemp("chain") / "state.json")
    loop = asyncio.new_event_loop()
    try:
        yield loop.run_until_complete(server.start())
    finally:
        loop.run_until_complete(server.stop())
        loop.close()


@pytest.fixture(scope="module")
def world(chain_url: str, tmp_path_factory: pytest.TempPathFactory) -> World:
    """Two funded wallets (a client's, which owns the registry, and a proxy's) and a registry."""
    base = tmp_path_factory.mktemp("world")
    client_wallet, proxy_wallet = base / "client-wallet.key", base / "proxy-wallet.key"
    for key in (client_wallet, proxy_wallet):
        run("wallet", "new", "--wallet-key", str(key))
        run("chain", "faucet", "--chain-url", chain_url, "--wallet-key", str(key), "--amount", "50")
    owner = ["--chain-url", chain_url, "--wallet-key", str(client_wallet)]
    deployed = run_json("registry", "deploy", *owner, "--close-delay", str(CLOSE_DELAY), "--min-stake", "0.2")
    return World(chain_url, base, client_wallet, proxy_wallet, deployed["root"])


def deposit_args(world: World, tmp_path: Path, proxy_key: str) -> list[str]:
    """``wallet deposit`` to the proxy wallet of ``world`` with the client key and database in ``tmp_path``."""
    proxy_wallet = world.address(world.proxy_wallet)
    client = ["--key-file", str(tmp_path / "client.key"), "--payments-db", str(tmp_path / "client-payments.db")]
    return ["wallet", "deposit", *world.registry(), "--proxy-wallet", proxy_wallet, "--proxy-key", proxy_key, *client]


def new_key() -> str:
    return public_bytes(Ed25519PrivateKey.generate()).hex()


def account(address: str) -> bytes:
    return bytes.fromhex(address.split(":")[1])


async def advance_clock(url: str, seconds: int) -> int:
    ledger = SandboxLedger(url)
    try:
        now = int((await ledger.status())["now"])
        return await ledger.set_time(now + seconds)
    finally:
        await ledger.aclose()


async def release_clock(url: str) -> None:
    ledger = SandboxLedger(url)
    try:
        await ledger.set_time(None)
    finally:
        await ledger.aclose()


def test_every_option_is_explained() -> None:
    command: Any = typer.main.get_command(app)
    for group in command.commands.values():
        for name, sub in group.commands.items():
            assert sub.help, f"{group.name} {name} has no help"
            for param in sub.params:
                assert param.help and len(param.help) > 15, f"{group.name} {name} {param.name} has no help"


def test_wallet_new_and_address(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "wallet.key"
    created = run_json("wallet", "new", "--wallet-key", str(key))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert created["address"].startswith("0:") and len(created["address"]) == 66
    shown = run_json("wallet", "address", "--wallet-key", str(key))
    assert shown == run_json("wallet", "address", "--wallet-key", str(key))
    assert shown["address"] == created["address"] and shown["public_key"] == created["public_key"]
    for form in (shown["address_friendly"], shown["address_bounceable"]):
        assert Address(form).to_str(is_user_friendly=False) == shown["address"]
    assert shown["address"] in run("wallet", "address", "--wallet-key", str(key)).stdout
    before = key.read_bytes()
    assert "already exists" in refused("wallet", "new", "--wallet-key", str(key))
    assert key.read_bytes() == before
    assert "wallet new" in refused("wallet", "address", "--wallet-key", str(tmp_path / "missing.key"))


def test_faucet_and_balance(world: World, tmp_path: Path) -> None:
    key = tmp_path / "wallet.key"
    address = run_json("wallet", "new", "--wallet-key", str(key))["address"]
    sent = run_json("chain", "faucet", *world.chain(), "--address", address, "--amount", "2.5")
    assert sent["amount"] == "2.5" and sent["amount_nano"] == 2_500_000_000
    assert sent["balance_nano"] == 2_500_000_000
    shown = run_json("wallet", "balance", *world.chain(key), "--payments-db", str(tmp_path / "none.db"))
    assert shown["address"] == address and shown["balance_nano"] == 2_500_000_000 and shown["channels"] == []
    assert "2.5 TON" in run("wallet", "balance", *world.chain(key)).stdout
    status = run_json("chain", "status", *world.registry(key), "--payments-db", str(tmp_path / "none.db"))
    assert status["chain"] == "sandbox" and status["chain_url"] == world.url
    assert status["wallet"]["balance_nano"] == 2_500_000_000 and status["channels"] == []
    assert status["registry"]["address"] == world.root


def test_registry_commands(world: World) -> None:
    h1, h2, model, proxy = "a1" * 32, "b2" * 32, "c3" * 32, "d4" * 32
    params = ["--nonce", "5", "--price-per-token", "333", "--prompt-mult", "1", "--cached-mult", "0.1"]
    params += ["--completion-mult", "3", "--reasoning-mult", "3.25", "--commission-bps", "500", "--min-stake", "0.5"]
    params += ["--close-delay", "600"]
    deployed = run_json("registry", "deploy", *world.chain(), *params)
    root = deployed["root"]
    assert deployed["version"] == 5 and deployed["address_friendly"]
    args = [*world.chain(), "--root", root]
    shown = run_json("registry", "show", "--chain-url", world.url, "--root", root)
    assert set(shown) == {"address", "version", "owner", "params", "proxy_images", "worker_images", "models", "proxies"}
    assert shown["owner"] == world.address(world.client_wallet)
    assert shown["params"] == {
        "price_per_token": 333, "prompt_mult": 10000, "cached_mult": 1000, "completion_mult": 30000,
        "reasoning_mult": 32500, "commission_bps": 500, "min_client_stake": 500_000_000, "close_delay": 600,
    }  # fmt: skip
    assert "already deployed" in refused("registry", "deploy", *world.chain(), *params)

    versions = [shown["version"]]
    for change in (
        ["add-image", "--role", "worker", h1],
        ["add-image", "--role", "proxy", h2],
        ["remove-image", "--role", "worker", h1],
        ["add-model", model, "llama"],
        ["add-model", model, "llama-2"],
        ["add-proxy", proxy, "proxy.example:9300"],
        ["add-proxy", h1, "other.example:9300"],
        ["remove-proxy", h1],
        ["add-model", h2, "gone"],
        ["remove-model", h2],
    ):
        done = run_json("registry", *change, *args)
        assert done["change"] == change[0] and done["version"] == versions[-1] + 1, done
        versions.append(done["version"])
    assert done["registry"]["models"] == {model: "llama-2"}

    changed = run_json("registry", "set-params", *args, "--commission-bps", "700", "--min-stake", "1")
    assert changed["version"] == versions[-1] + 1 and changed["changed"] == {
        "commission_bps": 700,
        "min_client_stake": TON,
    }
    shown = run_json("registry", "show", "--chain-url", world.url, "--root", root)
    assert shown["version"] == changed["version"]
    assert shown["params"]["commission_bps"] == 700 and shown["params"]["min_client_stake"] == TON
    assert shown["params"]["price_per_token"] == 333 and shown["params"]["reasoning_mult"] == 32500
    assert shown["proxy_images"] == [h2] and shown["worker_images"] == []
    assert shown["proxies"] == {proxy: "proxy.example:9300"}
    text = run("registry", "show", "--chain-url", world.url, "--root", root).stdout
    assert f"config version {shown['version']}" in text and "reasoning ×3.25" in text and "llama-2" in text

    assert "already in the registry" in refused("registry", "add-image", "--role", "proxy", h2, *args)
    assert "not in the registry" in refused("registry", "remove-model", h1, *args)
    assert "64 hex digits" in refused("registry", "add-image", "--role", "worker", "abc", *args)
    assert "proxy or worker" in refused("registry", "add-image", "--role", "client", h1, *args)
    assert "nothing to change" in refused("registry", "set-params", *args)
    assert "--commission-bps" in refused("registry", "set-params", *args, "--commission-bps", "10001")
    assert "decimals" in refused("registry", "set-params", *args, "--prompt-mult", "1.00001")
    not_owner = [*world.chain(world.proxy_wallet), "--root", root]
    assert "not the registry's owner" in refused("registry", "add-model", h1, "x", *not_owner)
    assert "--root" in refused("registry", "show", "--chain-url", world.url)
    assert "no registry at" in refused("registry", "show", "--chain-url", world.url, "--root", "0:" + "11" * 32)


def test_deposit_topup_withdraw(world: World, tmp_path: Path) -> None:
    db = tmp_path / "client-payments.db"
    proxy_key = new_key()
    opened = run_json(*deposit_args(world, tmp_path, proxy_key), "--amount", "2", "--stake", "0.5")
    channel = opened["channel"]
    assert opened["created"] and opened["close_delay"] == CLOSE_DELAY
    assert channel["kind"] == "client" and channel["phase"] == "open"
    assert channel["balance_nano"] == 2 * TON - TON // 100 and channel["balance"] == "1.99"
    assert channel["stake_nano"] == TON // 2
    store = PaymentStore(db)
    try:
        row = store.channel(account(channel["address"]))
        assert row is not None and row.role == "client" and row.peer_key.hex() == proxy_key
    finally:
        store.close()

    again = run_json(*deposit_args(world, tmp_path, proxy_key), "--amount", "0.51")
    assert not again["created"] and again["stake_added_nano"] == 0
    assert again["channel"]["address"] == channel["address"] and again["channel"]["balance_nano"] == 2490_000_000

    at = ["--channel", channel["address"]]
    topped = run_json("wallet", "topup", *world.chain(), *at, "--amount", "1", "--stake", "0.1")
    assert topped["channel"]["balance_nano"] == 3480_000_000 and topped["channel"]["stake_nano"] == 600_000_000

    taken = run_json("wallet", "withdraw", *world.chain(), *at, "--amount", "1.5")
    assert taken["withdrawn_nano"] == 1500_000_000 and taken["channel"]["balance_nano"] == 1980_000_000
    message = refused("wallet", "withdraw", *world.chain(), *at, "--amount", "1.5")
    assert "stake" in message and "1.38 TON" in message
    assert "payer" in refused("wallet", "withdraw", *world.chain(world.proxy_wallet), *at, "--amount", "0.1")
    nowhere = ["--channel", "0:" + "11" * 32]
    assert "wallet deposit" in refused("wallet", "topup", *world.chain(), *nowhere, "--amount", "1")
    assert "stake" in refused(*deposit_args(world, tmp_path, proxy_key), "--amount", "1", "--stake", "1")

    balance = run_json("wallet", "balance", *world.chain(), "--payments-db", str(db))
    (listed,) = balance["channels"]
    assert listed["address"] == channel["address"] and listed["spent_nano"] == 0 and listed["proxy_key"] == proxy_key
    status = run_json("chain", "status", *world.registry(), "--payments-db", str(db), "--channel", channel["address"])
    (shown,) = status["channels"]  # listed once though named twice
    assert shown["role"] == "client" and shown["balance_nano"] == 1980_000_000 and shown["db"]["voucher"] is None
    text = run("chain", "status", *world.registry(), "--payments-db", str(db)).stdout
    assert "client channel" in text and "1.98 TON" in text


async def open_worker_channel(world: World, worker: str) -> str:
    """A proxy → worker channel funded by the proxy's wallet (nodes open these; no command does)."""
    ledger = SandboxLedger(world.url)
    try:
        wallet = Wallet(ledger, load_identity(world.proxy_wallet))
        channel = Channel.worker(
            ledger,
            root=Address(world.root),
            proxy=wallet.address,
            worker=Address(worker),
            close_delay=CLOSE_DELAY,
            proxy_key=public_bytes(Ed25519PrivateKey.generate()),
            worker_key=public_bytes(Ed25519PrivateKey.generate()),
        )
        await channel.top_up(wallet, TON)
        return str(channel.address.to_str(is_user_friendly=False))
    finally:
        await ledger.aclose()


def test_close(world: World, tmp_path: Path) -> None:
    opened = run_json(*deposit_args(world, tmp_path, new_key()), "--amount", "1")
    client = opened["channel"]["address"]
    assert opened["channel"]["stake_nano"] == MIN_STAKE  # the registry's minimum for a new channel
    worker = asyncio.run(open_worker_channel(world, world.address(world.client_wallet)))
    no_db = ["--payments-db", str(tmp_path / "none.db")]
    status = run_json("chain", "status", *world.chain(), *no_db, "--channel", client, "--channel", worker)
    assert [c["kind"] for c in status["channels"]] == ["client", "worker"]
    assert status["channels"][1]["balance_nano"] == TON - TON // 100 and status["channels"][1]["role"] is None
    proxy_side = [*world.chain(world.proxy_wallet), "--channel", worker]
    topped = run_json("wallet", "topup", *proxy_side, "--amount", "0.5")
    assert topped["channel"]["kind"] == "worker" and topped["channel"]["balance_nano"] == 1480_000_000
    assert "no stake" in refused("wallet", "topup", *proxy_side, "--amount", "0.5", "--stake", "0.1")
    assert "only a client channel" in refused("wallet", "withdraw", *proxy_side, "--amount", "0.1")

    try:
        started = run_json("wallet", "close", *world.chain(), "--channel", client)
        assert started["action"] == "start_close" and started["channel"]["phase"] == "closing"
        assert started["channel"]["close_at"] >= started["now"] + CLOSE_DELAY - 1
        assert "payer" in refused("wallet", "close", *world.chain(), "--channel", worker)
        assert run_json("wallet", "close", *world.chain(world.proxy_wallet), "--channel", worker)["action"] == (
            "start_close"
        )
        waiting = run_json("wallet", "close", *world.chain(), "--channel", client)
        assert waiting["action"] == "wait" and waiting["channel"]["close_at"] == started["channel"]["close_at"]
        assert "can be finished from" in run("wallet", "close", *world.chain(), "--channel", client).stdout
        assert "closing" in refused("wallet", "topup", *world.chain(), "--channel", client, "--amount", "1")

        asyncio.run(advance_clock(world.url, CLOSE_DELAY + 1))
        before = run_json("wallet", "balance", *world.chain())["balance_nano"]
        finished = run_json("wallet", "close", *world.chain(), "--channel", client)
        assert finished["action"] == "finish_close" and finished["paid_out_nano"] == TON - TON // 100
        assert finished["channel"]["phase"] == "closed" and finished["channel"]["balance_nano"] == 0
        assert run_json("wallet", "balance", *world.chain())["balance_nano"] > before + TON // 2
        assert run_json("wallet", "close", *world.chain(), "--channel", client)["action"] == "none"
        worker_closed = run_json("wallet", "close", *world.chain(world.proxy_wallet), "--channel", worker)
        assert worker_closed["action"] == "finish_close" and worker_closed["channel"]["kind"] == "worker"
    finally:
        asyncio.run(release_clock(world.url))


def test_redeem(world: World, tmp_path: Path) -> None:
    client_key = load_or_create_identity(tmp_path / "client.key")
    proxy_key = Ed25519PrivateKey.generate()
    opened = run_json(*deposit_args(world, tmp_path, public_bytes(proxy_key).hex()), "--amount", "3", "--stake", "1")
    address = opened["channel"]["address"]
    channel, owed, expiry = account(address), 300_000_000, int(time.time()) + 86400

    proxy_db = tmp_path / "proxy-payments.db"
    store = PaymentStore(proxy_db)
    try:
        store.add_channel(channel, "proxy_in", public_bytes(client_key))
        signed = Voucher(TAG_CLIENT_VOUCHER, channel, 1, owed, expiry).sign(client_key)
        with store.transaction() as db:
            store.add_total(db, channel, owed)
            store.set_voucher(db, channel, 1, owed, expiry, signed.signature)
    finally:
        store.close()

    proxy_side = [*world.chain(world.proxy_wallet), "--payments-db", str(proxy_db)]
    status = run_json("chain", "status", *proxy_side)
    (row,) = status["channels"]
    assert row["role"] == "proxy_in" and row["db"]["voucher"]["amount_nano"] == owed and row["redeemed_nano"] == 0

    redeemed = run_json("wallet", "redeem", *proxy_side)
    (result,) = redeemed["channels"]
    assert result["status"] == "redeemed" and result["paid_nano"] == owed and redeemed["paid"] == "0.3"
    no_db = ["--payments-db", str(tmp_path / "none.db")]
    shown = run_json("chain", "status", *world.chain(), *no_db, "--channel", address)
    assert shown["channels"][0]["redeemed_nano"] == owed and shown["channels"][0]["seqno"] == 1
    store = PaymentStore(proxy_db)
    try:
        stored = store.channel(channel)
        assert stored is not None and stored.redeemed == owed
    finally:
        store.close()

    again = run_json("wallet", "redeem", *proxy_side, "--channel", address)
    assert again["channels"][0]["status"] == "up_to_date" and again["paid_nano"] == 0
    assert "already redeemed" in run("wallet", "redeem", *proxy_side).stdout
    assert "pays us" in refused("wallet", "redeem", *proxy_side, "--channel", "0:" + "22" * 32)
    assert "--payments-db" in refused("wallet", "redeem", *proxy_side[:-2], "--payments-db", str(tmp_path / "x.db"))


@pytest.mark.parametrize("bad", ["-1", "1.0000000001", "abc", "nan", "0"])
def test_bad_amount_is_one_line(bad: str) -> None:
    # checked before any chain access: the URL leads nowhere
    nowhere = ["--chain-url", "http://127.0.0.1:9"]
    for command in (
        ["chain", "faucet", "--address", "0:" + "11" * 32],
        ["wallet", "withdraw", "--channel", "0:" + "11" * 32],
        ["wallet", "topup", "--channel", "0:" + "11" * 32],
    ):
        message = refused(*command, *nowhere, "--amount", bad)
        assert "--amount" in message
    stake = ["wallet", "topup", "--channel", "0:" + "11" * 32, *nowhere, "--amount", "1", "--stake", bad]
    if bad != "0":  # no stake is a fine stake
        assert "--stake" in refused(*stake)


def test_unreachable_chain_is_one_line(tmp_path: Path) -> None:
    message = refused("registry", "show", "--chain-url", "http://127.0.0.1:9", "--root", "0:" + "11" * 32)
    assert "unreachable" in message
    assert "sandbox" in refused("chain", "faucet", "--chain", "nope", "--amount", "1")
