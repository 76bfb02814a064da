"""What keeps settlement from spending fees for nothing or sending money where it stays: a
redeem the contract would refuse is not sent (and a failed one not every round), a closing
channel is neither funded (it would keep the TON uncredited) nor left unredeemed by its payee,
and a wallet does not send what it cannot pay."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytoniq_core import Address

from cocoon.chain.channels import Channel, ChannelState
from cocoon.chain.errors import ChainError
from cocoon.chain.ledger import AccountInfo
from cocoon.chain.wallet import Transfer, Wallet
from cocoon.config import ClientSettings, ConfigError, ProxySettings, load_settings
from cocoon.keys import public_bytes
from cocoon.payments.retry import Backoff
from cocoon.payments.store import PaymentStore
from cocoon.payments.vouchers import TAG_WORKER_VOUCHER, Voucher
from cocoon.worker.payments import WorkerPayments

NOW = 1_900_000_000


def test_a_redeem_the_contract_would_refuse_is_named() -> None:
    live = ChannelState(address="", exists=True, balance=1000, redeemed=500)
    assert live.cannot_redeem(1500, NOW + 60, NOW) == ""
    assert "more than the balance" in live.cannot_redeem(1501, NOW + 60, NOW)
    assert "expired" in live.cannot_redeem(1000, NOW, NOW)
    closing = ChannelState(address="", exists=True, balance=1000, close_at=NOW + 10)
    assert closing.cannot_redeem(100, NOW + 60, NOW) == ""  # (until it closes: redeem now)
    assert "closed" in closing.cannot_redeem(100, NOW + 60, NOW + 10)
    assert "does not exist" in ChannelState(address="", exists=False).cannot_redeem(1, NOW + 60, NOW)


def test_a_failed_operation_waits_longer_each_time_and_a_success_resets_it() -> None:
    backoff = Backoff(30.0, 100.0)
    assert backoff.ready("c", 0.0)
    assert [backoff.failed("c", 0.0) for _ in range(4)] == [30.0, 60.0, 100.0, 100.0]
    assert not backoff.ready("c", 99.0) and backoff.ready("c", 100.0) and backoff.ready("other", 0.0)
    backoff.succeeded("c")
    assert backoff.ready("c", 0.0) and backoff.failed("c", 0.0) == 30.0


class ChainDouble:
    """Test double for the chain, patched into ``Channel``: states by account id, and the
    redeems and top-ups sent."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.states: dict[bytes, ChannelState] = {}
        self.redeemed: list[bytes] = []
        self.top_ups: list[tuple[bytes, int]] = []
        chain = self

        async def state(channel: Channel) -> ChannelState:
            return chain.states.get(channel.account_id, ChannelState(address="", exists=False))

        async def redeem(channel: Channel, wallet: object, signature: bytes, cell: object) -> None:
            chain.redeemed.append(channel.account_id)

        async def top_up(channel: Channel, wallet: object, amount: int, stake: int | None = None) -> None:
            chain.top_ups.append((channel.account_id, amount))

        monkeypatch.setattr(Channel, "state", state)
        monkeypatch.setattr(Channel, "redeem", redeem)
        monkeypatch.setattr(Channel, "top_up", top_up)


def worker_payments(tmp_path: Path, payout: int) -> tuple[WorkerPayments, bytes]:
    unused: Any = None
    payments = WorkerPayments(ledger=unused, wallet=unused, root=Address((0, b"r" * 32)),
                              key=Ed25519PrivateKey.generate(), store=PaymentStore(tmp_path / "w.db"),
                              redeem_threshold=10**9)  # fmt: skip
    proxy = Ed25519PrivateKey.generate()
    channel = b"\x05" * 32
    signed = Voucher(TAG_WORKER_VOUCHER, channel, 1, payout, 2**32 - 1).sign(proxy)
    payments.accounts.accept(signed, public_bytes(proxy), NOW - 100)
    return payments, channel


async def test_a_worker_redeems_at_once_when_its_proxy_closes_the_channel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the close delay the proxy takes back whatever the channel holds: payouts below the
    threshold included."""
    chain = ChainDouble(monkeypatch)
    payments, channel = worker_payments(tmp_path, 700)
    chain.states[channel] = ChannelState(address="", exists=True, balance=10**9)
    await payments.settle()
    assert chain.redeemed == []  # (below the threshold, open)
    chain.states[channel] = ChannelState(address="", exists=True, balance=10**9, close_at=2**32 - 2)
    await payments.settle()
    assert chain.redeemed == [channel]


async def test_a_worker_sends_no_redeem_the_contract_would_refuse_nor_one_every_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = ChainDouble(monkeypatch)
    payments, channel = worker_payments(tmp_path, 700)
    chain.states[channel] = ChannelState(address="", exists=True, balance=100, close_at=2**32 - 2)  # underfunded
    for _ in range(3):
        await payments.settle()
    assert chain.redeemed == []
    assert not payments._retry.ready(channel, asyncio.get_running_loop().time())


class LedgerDouble:
    """Test double for a chain backend: one active wallet account with ``balance``."""

    name = "double"

    def __init__(self, balance: int) -> None:
        self.balance = balance
        self.sent: list[bytes] = []

    async def account(self, address: Address) -> AccountInfo:
        return AccountInfo(address="", status="active", balance=self.balance)

    async def run_get_method(self, address: Address, method: str, stack: Any = None) -> list[Any]:
        return [3]

    async def chain_time(self) -> int:
        return NOW

    async def send_external(self, boc: bytes) -> list[Any]:
        self.sent.append(boc)
        return []


async def test_a_wallet_does_not_send_what_it_cannot_pay() -> None:
    """The wallet would skip the transfer and take its fee all the same (send mode 3)."""
    ledger = LedgerDouble(balance=10**7)
    wallet = Wallet(ledger, Ed25519PrivateKey.generate())  # type: ignore[arg-type]
    with pytest.raises(ChainError, match="not the 20000000 to send"):
        await wallet.send([Transfer(Address((0, b"c" * 32)), 2 * 10**7)])
    assert ledger.sent == []


def test_deposits_too_small_for_what_a_channel_keeps_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="worker_deposit must be at least"):
        load_settings(ProxySettings, "proxy", None, {"worker_deposit": 10**7})
    with pytest.raises(ConfigError, match="deposit must be above"):
        load_settings(ClientSettings, "client", None, {"deposit": 10**7})
    with pytest.raises(ConfigError, match="plus the stake"):
        load_settings(ClientSettings, "client", None, {"deposit": 10**8, "stake": 10**8})
    assert load_settings(ClientSettings, "client", None, {"deposit": 0}).deposit == 0


async def test_a_registry_change_that_failed_to_apply_is_applied_at_the_next_poll(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cocoon.chain import registry
    from cocoon.chain.registry import RegistryState, RegistryWatcher
    from cocoon.up_chain import UP_PARAMS

    async def version(ledger: object, root: object) -> int:
        return 2

    async def read(ledger: object, root: object) -> RegistryState:
        return RegistryState(address="", version=2, owner="", params=UP_PARAMS)

    monkeypatch.setattr(registry, "registry_version", version)
    monkeypatch.setattr(registry, "read_registry", read)
    applied: list[int] = []

    def on_change(state: RegistryState) -> None:
        if not applied:
            applied.append(0)
            raise RuntimeError("the policy could not be set")
        applied.append(state.version)

    watcher = RegistryWatcher(None, None, on_change)  # type: ignore[arg-type]
    watcher.state = RegistryState(address="", version=1, owner="", params=UP_PARAMS)
    with pytest.raises(RuntimeError):
        await watcher.poll_once()
    assert await watcher.poll_once() and applied == [0, 2]
    assert not await watcher.poll_once()  # (applied: nothing new)


async def test_chain_data_that_does_not_read_is_a_chain_error_not_a_crash() -> None:
    """Start-up paths catch ChainError: a get-method answering the wrong shape (a liteserver's
    word, or another contract at the address) must be one, not a ValueError ending the node."""
    from cocoon.chain.registry import read_registry

    class WrongShapes(LedgerDouble):
        async def account(self, address: Address) -> AccountInfo:
            return AccountInfo(address="", status="active", balance=1)  # (no code hash to check)

        async def run_get_method(self, address: Address, method: str, stack: Any = None) -> list[Any]:
            return [1, 2]  # too few values for a channel's state, and no registry's

    ledger: Any = WrongShapes(0)
    with pytest.raises(ChainError, match="is not a client channel"):
        await Channel.at(ledger, "client", b"\x01" * 32).state()
    with pytest.raises(ChainError, match="does not read"):
        await read_registry(ledger, Address((0, b"r" * 32)))
