"""The proxy's payments at the asyncio edge: a settlement round reads the client channels from the
chain many at once (one that cannot be read does not stop the others), and a client's voucher
is written soon after it came even when no charge follows."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytoniq_core import Address

from cocoon.chain.channels import Channel, ChannelState
from cocoon.chain.errors import ChainError
from cocoon.chain.registry import RegistryState
from cocoon.keys import public_bytes
from cocoon.payments.accounts import Rollback
from cocoon.payments.store import PaymentStore
from cocoon.payments.vouchers import TAG_CLIENT_VOUCHER, VoucherError
from cocoon.payments.vouchers import Voucher as VoucherData
from cocoon.protocol.messages import PayAccount, Voucher
from cocoon.proxy.payments import (
    REFRESH_CONCURRENCY,
    VOUCHER_FLUSH_DELAY,
    ClientChannel,
    ProxyPayments,
    WorkerChannel,
)
from cocoon.up_chain import UP_PARAMS

READ_SECONDS = 0.05


class SlowChannelDouble:
    """Test double for a client channel on a distant liteserver: each read takes READ_SECONDS;
    the channel at index ``failing`` cannot be read."""

    reading = 0
    most_at_once = 0

    def __init__(self, index: int, failing: bool) -> None:
        self.index = index
        self.failing = failing

    async def state(self) -> ChannelState:
        cls = SlowChannelDouble
        cls.reading += 1
        cls.most_at_once = max(cls.most_at_once, cls.reading)
        try:
            await asyncio.sleep(READ_SECONDS)
        finally:
            cls.reading -= 1
        if self.failing:
            raise ChainError("unreachable", "the liteserver did not answer")
        return ChannelState(address="", exists=True, balance=10**9, redeemed=self.index)


def proxy_payments(store: PaymentStore) -> ProxyPayments:
    unused: Any = None  # the chain's ledger and wallet: a round with nothing to redeem needs neither
    return ProxyPayments(
        ledger=unused,
        wallet=unused,
        root=unused,
        key=Ed25519PrivateKey.generate(),
        store=store,
        registry=RegistryState(address="", version=1, owner="", params=UP_PARAMS),
        redeem_threshold=10**9,
        worker_deposit=0,
        commit_interval=60.0,
    )


def test_a_round_reads_many_client_channels_at_once(tmp_path: Path) -> None:
    payments = proxy_payments(PaymentStore(tmp_path / "proxy.db"))
    count = 3 * REFRESH_CONCURRENCY
    for i in range(count):
        cid = i.to_bytes(32, "big")
        payments.store.add_channel(cid, "proxy_in", bytes(32))
        double: Any = SlowChannelDouble(i, failing=i == 5)
        payments.clients[cid] = ClientChannel(double, ChannelState(address="", exists=False))

    loop = asyncio.new_event_loop()
    try:
        started = loop.time()
        loop.run_until_complete(payments.settle())
        took = loop.time() - started
    finally:
        loop.close()
    assert SlowChannelDouble.most_at_once == REFRESH_CONCURRENCY
    assert took < count * READ_SECONDS / 4  # one after another, it would take count reads
    for i in range(count):
        cid = i.to_bytes(32, "big")
        assert payments.clients[cid].state.exists is (i != 5)  # the unreadable one keeps its old view
        row = payments.store.channel(cid)
        assert row is not None and row.redeemed == (0 if i == 5 else i)


def test_a_client_voucher_is_written_soon_when_no_charge_follows(tmp_path: Path) -> None:
    payments = proxy_payments(PaymentStore(tmp_path / "proxy.db"))
    client_key = Ed25519PrivateKey.generate()
    cid = bytes([3]) * 32
    payments.accounts.open_client(cid, public_bytes(client_key))
    unused: Any = None
    payments.clients[cid] = ClientChannel(unused, ChannelState(address="", exists=True, balance=10**9))
    with payments.store.transaction() as db:  # billed: a voucher for more would be written at once
        payments.store.set_total(db, cid, at_least=100)
    signed = VoucherData(TAG_CLIENT_VOUCHER, cid, 1, 100, 2**32 - 1).sign(client_key)
    message = Voucher(channel=cid, seqno=1, amount=100, expiry=2**32 - 1, signature=signed.signature)

    def on_disk() -> int:
        other = PaymentStore(tmp_path / "proxy.db")
        try:
            row = other.channel(cid)
            return row.seqno if row else -1
        finally:
            other.close()

    async def main() -> tuple[int, int, int, int]:
        assert payments.accept_voucher(message) == 100
        staged, before = payments.store.staged, on_disk()
        await asyncio.sleep(VOUCHER_FLUSH_DELAY * 3)
        return staged, before, payments.store.staged, on_disk()

    assert asyncio.run(main()) == (1, 0, 0, 1)


# --- against a chain double: channels derived for real, their state and messages made up ---

EXPIRY = 2**32 - 1


class WalletDouble:
    """Test double for the proxy's wallet: only its address is used here."""

    address = Address((0, b"w" * 32))


class ChainDouble:
    """Test double for the chain, patched into ``Channel``: each channel's state by account id
    (none: not deployed), and the messages sent to them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.states: dict[bytes, ChannelState] = {}
        self.reads: list[bytes] = []
        self.redeemed: list[tuple[bytes, int]] = []
        self.top_ups: list[tuple[bytes, int]] = []
        chain = self

        async def state(channel: Channel) -> ChannelState:
            chain.reads.append(channel.account_id)
            return chain.states.get(channel.account_id, ChannelState(address="", exists=False))

        async def redeem(channel: Channel, wallet: object, signature: bytes, cell: object) -> None:
            row = payments_under_test.store.channel(channel.account_id)
            assert row is not None
            chain.redeemed.append((channel.account_id, row.amount))

        async def top_up(channel: Channel, wallet: object, amount: int, stake: int | None = None) -> None:
            chain.top_ups.append((channel.account_id, amount))

        monkeypatch.setattr(Channel, "state", state)
        monkeypatch.setattr(Channel, "redeem", redeem)
        monkeypatch.setattr(Channel, "top_up", top_up)


payments_under_test: ProxyPayments


def on_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> tuple[ProxyPayments, ChainDouble]:
    global payments_under_test
    unused: Any = None
    payments_under_test = ProxyPayments(
        ledger=unused,
        wallet=WalletDouble(),  # type: ignore[arg-type]
        root=Address((0, b"r" * 32)),
        key=Ed25519PrivateKey.generate(),
        store=PaymentStore(tmp_path / "proxy.db"),
        registry=RegistryState(address="", version=1, owner="", params=UP_PARAMS),
        redeem_threshold=settings.get("redeem_threshold", 10**9),
        worker_deposit=settings.get("worker_deposit", 10**9),
        commit_interval=60.0,
    )
    return payments_under_test, ChainDouble(monkeypatch)


def funded(balance: int = 10**10, stake: int = UP_PARAMS.min_client_stake, **fields: Any) -> ChannelState:
    return ChannelState(address="", exists=True, balance=balance, stake=stake, **fields)


def voucher_message(key: Ed25519PrivateKey, cid: bytes, seqno: int, amount: int) -> Voucher:
    signed = VoucherData(TAG_CLIENT_VOUCHER, cid, seqno, amount, EXPIRY).sign(key)
    return Voucher(channel=cid, seqno=seqno, amount=amount, expiry=EXPIRY, signature=signed.signature)


def pay_account(wallet: bytes, named: Voucher | None = None) -> PayAccount:
    if named is None:
        return PayAccount(stream_id=1, wallet=wallet)
    return PayAccount(stream_id=1, wallet=wallet, last_seqno=named.seqno, last_amount=named.amount,
                      last_expiry=named.expiry, last_signature=named.signature)  # fmt: skip


async def attached_funded(
    payments: ProxyPayments, chain: ChainDouble, state: ChannelState, wallet: bytes = b"a" * 32
) -> tuple[Ed25519PrivateKey, bytes]:
    """A client's key and channel, named to ``payments`` (first attach), funded on chain with
    ``state``, and named again (as the client does after its deposit)."""
    key = Ed25519PrivateKey.generate()
    cid = (await payments.attach(public_bytes(key), pay_account(wallet), True)).channel
    chain.states[cid] = state
    await payments.attach(public_bytes(key), pay_account(wallet), False)
    return key, cid


async def test_a_client_voucher_beyond_what_its_channel_holds_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redeeming is all or nothing: holding a voucher for more than the channel can pay, instead
    of the one before it, would leave the proxy nothing to redeem."""
    payments, chain = on_chain(tmp_path, monkeypatch)
    client, cid = await attached_funded(payments, chain, funded(balance=1000, redeemed=200))
    assert payments.accept_voucher(voucher_message(client, cid, 1, 1200)) == 1200  # all it holds
    with pytest.raises(VoucherError, match="more than the channel holds"):
        payments.accept_voucher(voucher_message(client, cid, 2, 1201))
    row = payments.store.channel(cid)
    assert row is not None and (row.seqno, row.amount) == (1, 1200)  # the redeemable one is kept
    # an honest client's answer that overdrew the deposit: its voucher is taken once the chain
    # shows a top-up (a settlement round reads it), with no new voucher from the client
    payments.clients[cid].state = funded(balance=5000, redeemed=200)
    payments.refusal(cid, set())
    row = payments.store.channel(cid)
    assert row is not None and (row.seqno, row.amount) == (2, 1201)


async def test_a_connection_attached_to_a_channel_may_name_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Else a client could have its requests admitted on a funded channel and billed, when
    their ends come, to an empty one it named meanwhile."""
    payments, chain = on_chain(tmp_path, monkeypatch)
    client = public_bytes(Ed25519PrivateKey.generate())
    funded_terms = await payments.attach(client, pay_account(b"a" * 32), True)
    reads = len(chain.reads)
    with pytest.raises(VoucherError, match="another channel"):
        await payments.attach(client, pay_account(b"b" * 32), False, only=funded_terms.channel)
    assert len(chain.reads) == reads  # refused before the chain is asked
    again = await payments.attach(client, pay_account(b"a" * 32), False, only=funded_terms.channel)
    assert again.channel == funded_terms.channel


async def test_naming_a_wallet_with_no_channel_on_chain_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payments, chain = on_chain(tmp_path, monkeypatch)
    client = public_bytes(Ed25519PrivateKey.generate())
    before = payments.store.state_seq
    for i in range(20):
        terms = await payments.attach(client, pay_account(bytes([i]) * 32), True)
        assert not terms.exists and terms.seqno == 0
    assert payments.store.state_seq == before and payments.store.channels("proxy_in") == []
    assert "no deposit yet" in payments.refusal(terms.channel, set())
    # funded later, as a settlement round sees it: the channel gets its books at its first request
    chain.states[terms.channel] = funded()
    await payments.settle()
    assert payments.refusal(terms.channel, set()) == ""
    assert payments.store.channel(terms.channel) is not None


async def test_channels_named_with_nothing_on_chain_are_watched_up_to_a_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Naming made-up wallets costs a client nothing: the proxy keeps the most recent
    ``MAX_UNFUNDED`` of them (for their deposit), and a settlement round reads no more."""
    monkeypatch.setattr("cocoon.proxy.payments.MAX_UNFUNDED", 5)
    payments, chain = on_chain(tmp_path, monkeypatch)
    client = public_bytes(Ed25519PrivateKey.generate())
    named = [(await payments.attach(client, pay_account(bytes([i]) * 32), True)).channel for i in range(12)]
    reads = len(chain.reads)
    await payments.settle()
    assert sorted(chain.reads[reads:]) == sorted(named[-5:])  # the 5 most recent, not all 12
    assert "attach a payment channel first" in payments.refusal(named[0], set())  # forgotten
    assert "no deposit yet" in payments.refusal(named[-1], set())
    assert payments.clients == {}


async def test_an_attach_after_a_deposit_takes_the_voucher_refused_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's answer that overdrew its deposit was paid with a voucher beyond what the
    channel held, refused then; the attach that follows its top-up names it, and it is taken."""
    payments, chain = on_chain(tmp_path, monkeypatch)
    key, cid = await attached_funded(payments, chain, funded(balance=1000))
    over = voucher_message(key, cid, 1, 1500)
    with pytest.raises(VoucherError):
        payments.accept_voucher(over)
    chain.states[cid] = funded(balance=5000)  # topped up
    after = await payments.attach(public_bytes(key), pay_account(b"a" * 32, over), False, only=cid)
    assert (after.seqno, after.paid) == (1, 1500)


async def test_a_settlement_round_redeems_within_the_stake_and_at_once_when_a_channel_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client may withdraw all but its stake at any moment, or close the channel: what it
    paid is redeemed once it reaches half the stake, whatever the threshold, and a closing
    channel is redeemed whatever it holds."""
    payments, chain = on_chain(tmp_path, monkeypatch, redeem_threshold=10**12)
    cids = []
    for i, stake, amount, close_at in ((1, 1000, 499, 0), (2, 1000, 500, 0), (3, 1000, 10, 1_900_000_000)):
        state = funded(balance=10**6, stake=stake, close_at=close_at)
        key, cid = await attached_funded(payments, chain, state, bytes([i]) * 32)
        payments.accept_voucher(voucher_message(key, cid, 1, amount))
        cids.append(cid)
    await payments.settle()
    assert chain.redeemed == [(cids[1], 500), (cids[2], 10)]


async def test_after_a_restart_unredeemed_client_channels_are_settled_without_their_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payments, chain = on_chain(tmp_path, monkeypatch, redeem_threshold=1)
    key, cid = await attached_funded(payments, chain, funded())
    payments.accept_voucher(voucher_message(key, cid, 1, 700))
    payments.store.flush()
    restarted, chain = on_chain(tmp_path, monkeypatch, redeem_threshold=1)
    chain.states[cid] = funded()
    await restarted.check_rollback()
    await restarted.settle()
    assert chain.redeemed == [(cid, 700)]


async def test_a_worker_paid_on_another_of_its_channels_is_no_rollback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker names its newest payout over all its channels with this proxy: one on a new
    wallet of its (or under a new close delay) starts at #0 here, which is no rollback; a payout
    newer than any this database signed it is."""
    payments, _chain = on_chain(tmp_path, monkeypatch)
    worker = public_bytes(Ed25519PrivateKey.generate())
    payments.add_worker(worker, b"1" * 32)
    old = payments.workers[worker].channel.account_id
    payments.store.add_channel(old, "proxy_out", worker)  # (already there: kept)
    with payments.store.transaction() as db:
        payments.store.set_voucher(db, old, 3, 300, EXPIRY, b"s" * 64)
    payments.add_worker(worker, b"2" * 32, paid_seqno=3)  # a new wallet: no rollback
    assert payments.workers[worker].channel.account_id != old
    with pytest.raises(Rollback):
        payments.add_worker(worker, b"3" * 32, paid_seqno=4)
    for entry in payments.workers.values():
        if entry.funding is not None:
            entry.funding.cancel()


async def test_a_payout_names_the_close_delay_its_channel_was_derived_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from cocoon.payments.accounts import Charge
    from cocoon.payments.vouchers import TAG_WORKER_VOUCHER

    payments, _chain = on_chain(tmp_path, monkeypatch)
    worker = public_bytes(Ed25519PrivateKey.generate())
    payments.add_worker(worker, b"1" * 32)
    entry = payments.workers[worker]
    assert entry.funding is not None
    entry.funding.cancel()
    derived_with = payments.registry.params.close_delay
    params = replace(UP_PARAMS, close_delay=derived_with + 60)
    payments.update_registry(RegistryState(address="", version=2, owner="", params=params))
    payout = VoucherData(TAG_WORKER_VOUCHER, entry.channel.account_id, 1, 90, EXPIRY).sign(payments.key)
    assert payments.payout_message(Charge(100, 10, payout)).close_delay == derived_with


async def funded_worker(payments: ProxyPayments) -> WorkerChannel:
    """A worker announced to ``payments``, once its channel's first funding has run."""
    worker = public_bytes(Ed25519PrivateKey.generate())
    payments.add_worker(worker, b"1" * 32)
    entry = payments.workers[worker]
    assert entry.funding is not None
    await entry.funding
    return entry


async def test_a_worker_channel_is_topped_up_to_cover_all_that_is_owed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Payouts may outgrow one deposit between rounds; a balance below the newest payout would
    let the worker redeem none of it (redeeming is all or nothing)."""
    payments, chain = on_chain(tmp_path, monkeypatch, worker_deposit=1000)
    entry = await funded_worker(payments)
    cid = entry.channel.account_id
    chain.top_ups.clear()
    with payments.store.transaction() as db:
        payments.store.set_voucher(db, cid, 9, 5000, EXPIRY, b"s" * 64)
    entry.state = chain.states[cid] = ChannelState(address="", exists=True, balance=1500, redeemed=0)
    await payments._fund(entry)
    assert chain.top_ups == [(cid, 1000 + 3500)]


async def test_a_closing_worker_channel_is_not_funded_and_a_top_up_reads_the_balance_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A closing channel takes no deposit (the TON would stay in it uncredited); and a balance
    read in an earlier round, before the last top-up landed, does not make the next top it up
    again."""
    payments, chain = on_chain(tmp_path, monkeypatch, worker_deposit=1000)
    entry = await funded_worker(payments)
    cid = entry.channel.account_id
    assert chain.top_ups == [(cid, 1000)]
    chain.states[cid] = ChannelState(address="", exists=True, balance=990)  # (what the chain shows now)
    entry.state = ChannelState(address="", exists=True, balance=0)  # an early read, before it landed
    await payments._fund(entry)
    assert chain.top_ups == [(cid, 1000)]
    chain.states[cid] = ChannelState(address="", exists=True, balance=10, close_at=EXPIRY - 1)
    await payments._fund(entry)
    assert chain.top_ups == [(cid, 1000)]


async def test_a_redeem_the_contract_would_refuse_is_not_sent_nor_tried_every_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each refused redeem costs its fees: a client that withdrew down to its stake leaves a
    voucher beyond the balance."""
    payments, chain = on_chain(tmp_path, monkeypatch, redeem_threshold=1)
    key, cid = await attached_funded(payments, chain, funded())
    payments.accept_voucher(voucher_message(key, cid, 1, 5000))
    chain.states[cid] = funded(balance=1000)  # withdrawn meanwhile
    payments.clients[cid].state = chain.states[cid]
    for _ in range(3):
        await payments.settle()
    assert chain.redeemed == []
    assert not payments._retry.ready(cid, time.monotonic())
