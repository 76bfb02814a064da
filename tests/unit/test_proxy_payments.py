"""The proxy's payments at the asyncio edge: a settlement round reads the client channels from the
chain many at once (one that cannot be read does not stop the others), and a client's voucher
is written soon after it came even when no charge follows."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.chain.channels import ChannelState
from cocoon.chain.errors import ChainError
from cocoon.chain.registry import RegistryState
from cocoon.keys import public_bytes
from cocoon.payments.store import PaymentStore
from cocoon.payments.vouchers import TAG_CLIENT_VOUCHER
from cocoon.payments.vouchers import Voucher as VoucherData
from cocoon.protocol.messages import Voucher
from cocoon.proxy.payments import REFRESH_CONCURRENCY, VOUCHER_FLUSH_DELAY, ClientChannel, ProxyPayments
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
