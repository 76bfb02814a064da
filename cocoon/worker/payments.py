"""The worker's side of payments: check and keep the proxies' payout vouchers, redeem them."""

from __future__ import annotations

import logging
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytoniq_core import Address

from cocoon.chain.channels import Channel
from cocoon.chain.errors import ChainError
from cocoon.chain.ledger import Ledger
from cocoon.chain.wallet import Wallet
from cocoon.keys import public_bytes
from cocoon.payments.accounts import WorkerAccounts, latest_voucher
from cocoon.payments.retry import Backoff
from cocoon.payments.store import PaymentStore
from cocoon.payments.vouchers import TAG_WORKER_VOUCHER, SignedVoucher, VoucherError
from cocoon.payments.vouchers import Voucher as VoucherData
from cocoon.protocol.messages import Voucher

RETRY_FIRST, RETRY_MOST = 30.0, 3600.0  # seconds before a failed redeem is tried again

log = logging.getLogger("cocoon.worker")


class WorkerPayments:
    def __init__(
        self,
        *,
        ledger: Ledger,
        wallet: Wallet,
        root: Address,
        key: Ed25519PrivateKey,
        store: PaymentStore,
        redeem_threshold: int,
    ) -> None:
        self.ledger = ledger
        self.wallet = wallet
        self.root = root
        self.public_key = public_bytes(key)
        self.store = store
        self.accounts = WorkerAccounts(store)
        self.redeem_threshold = redeem_threshold
        self._retry = Backoff(RETRY_FIRST, RETRY_MOST)  # per channel: a redeem that failed

    @property
    def wallet_id(self) -> bytes:
        return bytes(self.wallet.address.hash_part)

    def paid_seqno(self, proxy_key: bytes) -> int:
        """The newest payout voucher we hold from this proxy (it detects rollbacks with it)."""
        return max((row.seqno for row in self.store.channels("worker") if row.peer_key == proxy_key), default=0)

    def accept(self, proxy_key: bytes, message: Voucher) -> int:
        """Keep a payout voucher if it is for the channel our parameters derive; the amount added."""
        expected = Channel.worker(
            self.ledger,
            root=self.root,
            proxy=Address((0, message.payer_wallet or bytes(32))),
            worker=self.wallet.address,
            close_delay=message.close_delay,
            proxy_key=proxy_key,
            worker_key=self.public_key,
        )
        if expected.account_id != message.channel:
            raise VoucherError("wrong_channel", "the voucher is not for our channel with this proxy")
        signed = SignedVoucher(
            VoucherData(TAG_WORKER_VOUCHER, message.channel, message.seqno, message.amount, message.expiry),
            message.signature,
        )
        return self.accounts.accept(signed, proxy_key, int(time.time()))

    async def settle(self, *, force: bool = False) -> None:
        """Redeem each channel's newest voucher once enough is unredeemed (everything if
        ``force``), and at once when the proxy is closing the channel: after its close delay
        the proxy takes back whatever the channel still holds, payouts unredeemed or not."""
        for row in self.store.channels("worker"):
            if row.seqno == 0 or row.unredeemed <= 0:
                continue
            if not force and not self._retry.ready(row.channel, time.monotonic()):
                continue
            channel = Channel.at(self.ledger, "worker", row.channel)
            try:
                # read every round while something is unredeemed: a close must be seen in time
                state = await channel.state()
                due = force or state.close_at != 0 or row.unredeemed >= self.redeem_threshold
                if due and state.seqno < row.seqno:
                    why = state.cannot_redeem(row.amount, row.expiry, int(time.time()))
                    if why:  # (refused by the contract, and its fees spent, every round)
                        wait = self._retry.failed(row.channel, time.monotonic())
                        log.warning("cannot redeem channel %s… (again in %.0f s): %s", row.channel.hex()[:16],
                                    wait, why)  # fmt: skip
                        continue
                    signed = latest_voucher(row, TAG_WORKER_VOUCHER)
                    assert signed is not None
                    await channel.redeem(self.wallet, signed.signature, signed.voucher.cell())
                    state = await channel.state()
                    log.info("redeemed payouts of channel %s…: %d nanoTON in total", row.channel.hex()[:16],
                             state.redeemed)  # fmt: skip
                self._retry.succeeded(row.channel)
                self.store.set_redeemed(row.channel, state.redeemed)
            except ChainError as exc:
                wait = self._retry.failed(row.channel, time.monotonic())
                log.warning("cannot redeem channel %s… (again in %.0f s): %s", row.channel.hex()[:16], wait, exc)
