"""The client's side of payments: open and fund a channel with each proxy, and pay for every
verified answer with a new cumulative voucher."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytoniq_core import Address

from cocoon.chain.channels import Channel
from cocoon.chain.contracts import account_id
from cocoon.chain.errors import ChainError
from cocoon.chain.ledger import Ledger
from cocoon.chain.registry import RegistryState
from cocoon.chain.wallet import Wallet
from cocoon.channel.peer import Peer, PeerGone
from cocoon.keys import public_bytes
from cocoon.payments.accounts import ClientAccounts
from cocoon.payments.prices import PriceParams, prices_of, usage_cost
from cocoon.payments.store import ChannelRow, PaymentStore
from cocoon.payments.vouchers import SignedVoucher
from cocoon.protocol.messages import Error, PayAccount, PayTerms, Voucher
from cocoon.seal.usage import UsageRecord

log = logging.getLogger("cocoon.client")


class PaymentSetupError(Exception):
    """The proxy's channel terms are wrong, or the channel cannot be funded."""


@dataclass
class ProxyChannel:
    channel: Channel
    terms: PayTerms


class ClientPayments:
    def __init__(
        self,
        *,
        ledger: Ledger,
        wallet: Wallet,
        root: Address,
        key: Ed25519PrivateKey,
        store: PaymentStore,
        registry: RegistryState,
        deposit: int,
        stake: int,
    ) -> None:
        self.ledger = ledger
        self.wallet = wallet
        self.root = root
        self.public_key = public_bytes(key)
        self.store = store
        self.accounts = ClientAccounts(store, key)
        self.registry = registry
        self.prices: PriceParams = prices_of(registry.params)
        self.deposit = deposit
        self.stake = stake

    def update_registry(self, registry: RegistryState) -> None:
        self.registry = registry
        self.prices = prices_of(registry.params)

    @property
    def wallet_id(self) -> bytes:
        return account_id(self.wallet.address)

    def last_voucher(self, proxy_key: bytes) -> ChannelRow | None:
        """Our channel with this proxy that carries our newest voucher to it (None: no voucher
        yet). The proxy accepts the voucher if it never received it, and writes off what it
        billed beyond it. With several channels to one proxy key (its wallet or the registry's
        close delay changed), the newest voucher is on the channel we paid last, not the one
        with the highest seqno: naming an older channel's voucher would leave a voucher lost on
        the current one unrecovered."""
        channel = self.store.last_paid_channel(proxy_key)
        row = self.store.channel(channel) if channel is not None else None
        return row if row is not None and row.seqno > 0 else None

    def check_terms(self, proxy_key: bytes, terms: PayTerms) -> ProxyChannel:
        """The channel the proxy names must be the one our parameters derive."""
        if terms.root != account_id(self.root):
            raise PaymentSetupError("the proxy uses another registry")
        if terms.close_delay != self.registry.params.close_delay:
            raise PaymentSetupError(
                f"the proxy's close delay {terms.close_delay} s differs from the registry's "
                f"{self.registry.params.close_delay} s"
            )
        channel = Channel.client(
            self.ledger,
            root=self.root,
            client=self.wallet.address,
            proxy=Address((0, terms.proxy_wallet)),
            close_delay=terms.close_delay,
            client_key=self.public_key,
            proxy_key=proxy_key,
        )
        if channel.account_id != terms.channel:
            raise PaymentSetupError("the proxy names a channel our parameters do not derive")
        self.accounts.open(channel.account_id, proxy_key)
        return ProxyChannel(channel, terms)

    def needs_deposit(self, pc: ProxyChannel) -> bool:
        if self.deposit <= 0:
            return False
        t = pc.terms
        row = self.accounts.store.channel(t.channel)
        spent = row.total if row else 0
        left = t.balance + t.redeemed - spent
        return not t.exists or left < self.deposit // 2 or t.stake < self.stake_target

    @property
    def stake_target(self) -> int:
        return self.stake or self.registry.params.min_client_stake

    async def attach(self, peer: Peer, timeout: float = 60.0) -> ProxyChannel:
        """Name our channel to the proxy on ``peer``; fund it first when it needs a deposit."""
        proxy_key = peer.identity.public_key
        for attempt in range(2):
            last = self.last_voucher(proxy_key)
            try:
                stream = await peer.open(
                    lambda sid, last=last: PayAccount(  # type: ignore[misc]
                        stream_id=sid,
                        wallet=self.wallet_id,
                        last_seqno=last.seqno if last else 0,
                        last_amount=last.amount if last else 0,
                        last_expiry=last.expiry if last else 0,
                        last_signature=last.signature if last else b"",
                    )
                )
                answer = await stream.receive(timeout)
            except (PeerGone, TimeoutError) as exc:
                raise PaymentSetupError(f"the proxy did not answer about payment: {exc}") from exc
            if isinstance(answer, Error):
                raise PaymentSetupError(f"the proxy refused our channel: {answer.message}")
            if not isinstance(answer, PayTerms):
                raise PaymentSetupError("unexpected answer to a payment request")
            pc = self.check_terms(proxy_key, answer)
            if attempt == 0 and self.needs_deposit(pc):
                await self.fund(pc)
                continue
            self._send_newer(peer, pc, last)
            return pc
        return pc

    def _send_newer(self, peer: Peer, pc: ProxyChannel, named: ChannelRow | None) -> None:
        """Send our newest voucher on the channel when it is newer than the one ``PayAccount``
        named: we signed it meanwhile, for an answer on another connection to this proxy (the
        one this connection renews), and it went out there. Sent here as well, it reaches the
        proxy before any request we send on this connection, which no longer names that answer
        as awaited. The proxy takes a voucher it already has as nothing new."""
        newest = self.accounts.latest(pc.terms.channel)
        named_seqno = named.seqno if named is not None and named.channel == pc.terms.channel else 0
        if newest is not None and newest.voucher.seqno > named_seqno:
            peer.send_nowait(_message(newest))

    async def fund(self, pc: ProxyChannel) -> None:
        """Deposit ``deposit`` into the channel (deploying it), raising the stake to the target."""
        t = pc.terms
        try:
            # the chain's word, not the proxy's terms (which carry no close time): a closing
            # channel refuses deposits, and its address is this proxy's channel for good
            state = await pc.channel.state()
        except ChainError as exc:
            raise PaymentSetupError(f"cannot read the channel: {exc}") from exc
        if state.close_at:
            raise PaymentSetupError(
                "the payment channel with this proxy is closing (or closed): it takes no deposit; "
                "`cocoon wallet close` finishes the close and returns what it holds"
            )
        stake = max(0, self.stake_target - state.stake) if state.exists else self.stake_target
        if self.deposit - 10**7 < stake:  # the channel keeps 0.01 TON of each deposit
            raise PaymentSetupError(f"a deposit of {self.deposit} nanoTON cannot lock a stake of {stake}")
        try:
            await pc.channel.top_up(self.wallet, self.deposit, stake)
        except ChainError as exc:
            raise PaymentSetupError(f"cannot deposit into the channel: {exc}") from exc
        log.info("deposited %d nanoTON (stake %d) into channel %s…", self.deposit, stake, t.channel.hex()[:16])

    def pay(
        self, channel: bytes, record: UsageRecord, price_milli: int, billed: int | None = None
    ) -> tuple[int, Voucher]:
        """The verified answer's cost and the voucher that pays everything up to it. The cost is
        ours, from the signed record and the registry's prices; when the proxy billed less
        (``billed``, the end's cost: 0 when it billed nothing), we pay what it billed. We never
        pay more than our own figure."""
        cost = usage_cost(self.prices, record, price_milli)
        if billed is not None and billed > cost:
            log.warning("the proxy billed %d nanoTON for an answer we price at %d; paying %d", billed, cost, cost)
        elif billed is not None:
            cost = billed
        signed = self.accounts.pay(channel, record.request_id, cost, int(time.time()))
        return cost, _message(signed)

    def spent(self) -> int:
        return sum(row.total for row in self.store.channels("client"))


def _message(signed: SignedVoucher) -> Voucher:
    v = signed.voucher
    return Voucher(channel=v.channel, seqno=v.seqno, amount=v.amount, expiry=v.expiry, signature=signed.signature)
