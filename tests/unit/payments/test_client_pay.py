"""The client pays its own figure for an answer, or less when the proxy billed less."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytoniq_core import Address

from cocoon.chain.contracts import RootParams
from cocoon.chain.registry import RegistryState
from cocoon.chain.sandbox import SandboxLedger
from cocoon.chain.wallet import Wallet
from cocoon.client.payments import ClientPayments
from cocoon.payments.store import PaymentStore
from cocoon.seal.usage import UsageRecord

CHANNEL = b"\x07" * 32


def record(request_id: bytes) -> UsageRecord:
    return UsageRecord(1, request_id, b"\x00" * 32, b"", b"\x01" * 32, 10, 0, 5, 0, "stop", 0, 1)


@pytest.fixture
async def payments(tmp_path: Path) -> AsyncIterator[ClientPayments]:
    ledger = SandboxLedger("http://127.0.0.1:9")  # never called: paying is local
    params = RootParams(price_per_token=100, prompt_mult=10000, completion_mult=20000, commission_bps=1000)
    client = ClientPayments(
        ledger=ledger,
        wallet=Wallet(ledger, Ed25519PrivateKey.generate()),
        root=Address((0, b"\x02" * 32)),
        key=Ed25519PrivateKey.generate(),
        store=PaymentStore(tmp_path / "client.db"),
        registry=RegistryState(address="0:" + "02" * 32, version=1, owner="", params=params),
        deposit=0,
        stake=0,
    )
    client.accounts.open(CHANNEL, b"\x03" * 32)
    yield client
    await ledger.aclose()


async def test_the_client_pays_its_own_price_and_never_more(payments: ClientPayments) -> None:
    cost, voucher = payments.pay(CHANNEL, record(b"a" * 16), 1000)
    assert cost == (10 * 1 + 5 * 2) * 100 == voucher.amount
    cost, voucher = payments.pay(CHANNEL, record(b"b" * 16), 1000, billed=10**9)  # overbilled: ours
    assert cost == 2000 and voucher.amount == 4000
    cost, voucher = payments.pay(CHANNEL, record(b"c" * 16), 1000, billed=1500)  # billed less: that
    assert cost == 1500 and voucher.amount == 5500 and voucher.seqno == 3
    cost, voucher = payments.pay(CHANNEL, record(b"d" * 16), 1000, billed=0)  # not billed: nothing
    assert cost == 0 and voucher.amount == 5500 and voucher.seqno == 4


def test_the_newest_voucher_named_at_attach_is_on_the_channel_paid_last(payments: ClientPayments) -> None:
    """Two channels to one proxy key (its wallet changed): the voucher to name is the one signed
    last, although the older channel's seqno is higher."""
    proxy_key = b"\x03" * 32
    assert payments.last_voucher(proxy_key) is None
    for i in range(3):
        payments.pay(CHANNEL, record(bytes([i]) * 16), 1000)
    newer = b"\x08" * 32
    payments.accounts.open(newer, proxy_key)
    payments.accounts.open(b"\x09" * 32, b"\x04" * 32)  # another proxy's channel: never named
    payments.pay(b"\x09" * 32, record(b"x" * 16), 1000)
    assert (row := payments.last_voucher(proxy_key)) is not None and (row.channel, row.seqno) == (CHANNEL, 3)
    payments.pay(newer, record(b"n" * 16), 1000)
    assert (row := payments.last_voucher(proxy_key)) is not None and (row.channel, row.seqno) == (newer, 1)
    payments.pay(CHANNEL, record(b"o" * 16), 1000)
    assert (row := payments.last_voucher(proxy_key)) is not None and (row.channel, row.seqno) == (CHANNEL, 4)


async def test_no_deposit_goes_into_a_closing_channel(
    payments: ClientPayments, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A closing (or closed) channel refuses deposits and its address stays this proxy's channel:
    the client reads its state from the chain (the proxy's terms carry no close time) and stops."""
    from cocoon.chain.channels import Channel, ChannelState
    from cocoon.client.payments import PaymentSetupError, ProxyChannel
    from cocoon.protocol.messages import PayTerms

    sent: list[int] = []

    async def closing(channel: Channel) -> ChannelState:
        return ChannelState(address="", exists=True, balance=10**9, stake=10**8, close_at=1_900_000_000)

    async def top_up(channel: Channel, wallet: object, amount: int, stake: int | None = None) -> None:
        sent.append(amount)

    monkeypatch.setattr(Channel, "state", closing)
    monkeypatch.setattr(Channel, "top_up", top_up)
    payments.deposit = 10**9
    channel = Channel.at(payments.ledger, "client", CHANNEL)
    terms = PayTerms(stream_id=1, root=b"r" * 32, proxy_wallet=b"w" * 32, close_delay=3600, channel=CHANNEL,
                     min_stake=1, exists=True, balance=10**9, stake=10**8, redeemed=0, charged=0, paid=0,
                     seqno=0)  # fmt: skip
    with pytest.raises(PaymentSetupError, match="closing"):
        await payments.fund(ProxyChannel(channel, terms))
    assert sent == []
