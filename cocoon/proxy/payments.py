"""The proxy's side of payments: attach client channels, bill answers, pay workers, settle.

Bookkeeping is ``cocoon.payments.accounts`` (SQLite); this module adds the chain: channel
state, deposits into worker channels, redemptions, and the anti-rollback commit.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytoniq_core import Address

from cocoon.chain.channels import Channel, ChannelState
from cocoon.chain.contracts import account_id
from cocoon.chain.errors import ChainError
from cocoon.chain.ledger import Ledger
from cocoon.chain.registry import RegistryState
from cocoon.chain.wallet import Wallet
from cocoon.keys import public_bytes
from cocoon.payments.accounts import NO_CONNECTION, Charge, ProxyAccounts, Rollback
from cocoon.payments.prices import BillingPrices, PriceParams, prices_of, split
from cocoon.payments.retry import Backoff
from cocoon.payments.store import PaymentStore
from cocoon.payments.vouchers import TAG_CLIENT_VOUCHER, SignedVoucher, VoucherError, commit_cell, sign_cell
from cocoon.payments.vouchers import Voucher as VoucherData
from cocoon.protocol.messages import PayAccount, PayTerms, Voucher
from cocoon.seal.usage import UsageRecord

log = logging.getLogger("cocoon.proxy")

# A client's voucher is written with the next charge, or this many seconds after it came when no
# charge comes first: under load that saves a commit per paid answer, and a voucher lost with
# the process is named again by its client at the next attach.
VOUCHER_FLUSH_DELAY = 0.1
REFRESH_CONCURRENCY = 32  # client channels read from the chain at once in a settlement round
MAX_UNFUNDED = 1024
"""Client channels named with nothing on chain that are watched for a deposit, the most recently
named: naming made-up wallets costs a client nothing, and must cost us no more than this."""
RETRY_FIRST, RETRY_MOST = 30.0, 3600.0  # seconds before a failed redeem or top-up is tried again


def client_voucher(channel: bytes, request: PayAccount) -> SignedVoucher | None:
    """The newest voucher a client says it signed on ``channel``, as its ``PayAccount`` carries
    it; None when it signed none. ``VoucherError`` when the fields cannot make a voucher."""
    if request.last_seqno == 0:
        return None
    try:
        data = VoucherData(TAG_CLIENT_VOUCHER, channel, request.last_seqno, request.last_amount, request.last_expiry)
    except ValueError as exc:
        raise VoucherError("malformed", str(exc)) from exc
    return SignedVoucher(data, request.last_signature)


@dataclass
class ClientChannel:
    channel: Channel
    state: ChannelState
    client_key: bytes = b""
    # the client's newest voucher when it pays for more than the channel held as it came (its
    # last answer overdrew the deposit): taken once the chain shows the channel covers it
    waiting: SignedVoucher | None = None

    @property
    def available(self) -> int:
        """What the channel can still pay in all (redeemed already, or in its balance)."""
        return self.state.balance + self.state.redeemed


@dataclass
class WorkerChannel:
    channel: Channel
    state: ChannelState
    funding: asyncio.Task[None] | None = None


def over_deposit(amount: int, client: ClientChannel) -> VoucherError | None:
    """A client voucher for more than its channel can pay is refused: redeeming is all or
    nothing, so holding it instead of the one before would leave nothing we could redeem (a
    client that withdrew its balance above the stake, or signed an inflated amount, would keep
    what it owes)."""
    if amount <= client.available:
        return None
    return VoucherError(
        "over_deposit", f"the voucher pays {amount} nanoTON, more than the channel holds ({client.available})"
    )


class ProxyPayments:
    def __init__(
        self,
        *,
        ledger: Ledger,
        wallet: Wallet,
        root: Address,
        key: Ed25519PrivateKey,
        store: PaymentStore,
        registry: RegistryState,
        redeem_threshold: int,
        worker_deposit: int,
        commit_interval: float,
    ) -> None:
        self.ledger = ledger
        self.wallet = wallet
        self.root = root
        self.key = key
        self.public_key = public_bytes(key)
        self.store = store
        self.accounts = ProxyAccounts(store, key)
        self.registry = registry
        self.billing = BillingPrices(prices_of(registry.params))
        self.redeem_threshold = redeem_threshold
        self.worker_deposit = worker_deposit
        self.commit_interval = commit_interval
        self.clients: dict[bytes, ClientChannel] = {}  # channel id → its chain view (funded, or in the books)
        # named with nothing on chain, oldest first (``MAX_UNFUNDED``): a settlement round reads
        # them too, and one found funded moves to ``clients``
        self._unfunded: dict[bytes, ClientChannel] = {}
        self.workers: dict[bytes, WorkerChannel] = {}  # worker key → its channel
        self._close_delays: dict[bytes, int] = {}  # worker channel → the close delay it was derived with
        self._retry = Backoff(RETRY_FIRST, RETRY_MOST)  # per channel: a redeem or top-up that failed
        self._committed_seq = -1
        self._last_commit = 0.0
        self._flush: asyncio.TimerHandle | None = None

    @property
    def prices(self) -> PriceParams:
        """The registry's prices as this proxy last read them."""
        return self.billing.prices

    def update_registry(self, registry: RegistryState) -> None:
        self.registry = registry
        self.billing.set_prices(prices_of(registry.params), time.monotonic())

    # --- start: refuse a database older than the chain ---

    async def check_rollback(self) -> None:
        """Raise ``Rollback`` when the chain shows a newer state than our database: a newer
        state commit in a worker channel, or a newer redeemed voucher in a client channel."""
        seq = self.store.state_seq
        for row in self.store.channels("proxy_out"):
            channel = Channel.at(self.ledger, "worker", row.channel)
            state = await channel.state()
            if state.commit_seq > seq:
                raise Rollback(f"the chain holds state #{state.commit_seq}; this database is at #{seq}")
            if state.seqno > row.seqno:
                raise Rollback(f"worker channel {row.channel.hex()[:16]}… redeemed a voucher newer than ours")
        for row in self.store.channels("proxy_in"):
            client = Channel.at(self.ledger, "client", row.channel)
            state = await client.state()
            if state.seqno > row.seqno:
                raise Rollback(f"client channel {row.channel.hex()[:16]}… redeemed a voucher newer than ours")
            if row.seqno and row.amount > state.redeemed:
                # paid and not redeemed yet: settled whether or not its client comes back
                self.clients.setdefault(row.channel, ClientChannel(client, state, row.peer_key))

    # --- clients ---

    async def attach(
        self,
        client_key: bytes,
        request: PayAccount,
        first: bool,
        live: Collection[int] = frozenset(),
        *,
        only: bytes | None = None,
    ) -> PayTerms:
        """The channel between this client's wallet and ours, as the chain shows it. At the
        ``first`` attach of a connection, the books are reconciled with the client's newest
        voucher; ``live`` names the client connections still open (``ProxyAccounts.reconcile``);
        at a later one (after a deposit), that voucher is taken if it is new. ``only``: the
        channel the connection is attached to already, the only one it may name again (one
        connection, one channel: requests are billed to the channel they were admitted on)."""
        params = self.registry.params
        channel = Channel.client(
            self.ledger,
            root=self.root,
            client=Address((0, request.wallet)),
            proxy=self.wallet.address,
            close_delay=params.close_delay,
            client_key=client_key,
            proxy_key=self.public_key,
        )
        cid = channel.account_id
        if only is not None and cid != only:
            raise VoucherError(
                "wrong_channel", "this connection pays through another channel: name this one on a new connection"
            )
        state = await channel.state()
        # no row for a channel with nothing on chain yet: naming made-up wallets costs us nothing
        known = state.exists or self.accounts.client(cid) is not None
        row = self.accounts.open_client(cid, client_key) if known else None
        if row is not None and state.seqno > row.seqno:
            raise Rollback(f"client channel {cid.hex()[:16]}… redeemed voucher #{state.seqno}; we know #{row.seqno}")
        client = ClientChannel(channel, state, client_key)
        self._unfunded.pop(cid, None)  # (funded now, or named again: the newest)
        if known:
            self.clients[cid] = client
        else:
            self._unfunded[cid] = client
            while len(self._unfunded) > MAX_UNFUNDED:
                del self._unfunded[next(iter(self._unfunded))]
        if row is not None and first:
            now = int(time.time())
            try:
                claimed = client_voucher(cid, request)
                problem = over_deposit(claimed.voucher.amount, client) if claimed is not None else None
                if problem is not None:
                    raise problem
                done = self.accounts.reconcile(cid, claimed, now, live)
            except VoucherError as exc:
                # a claim that does not verify is worth nothing (it may name another of the
                # client's channels): the books are reconciled as if it had named none
                log.warning("client channel %s…: ignored the newest voucher it names: %s", cid.hex()[:16], exc)
                done = self.accounts.reconcile(cid, None, now, live)
            self._flush_soon()  # a recovered voucher is staged like any other
            if done.recovered:
                log.info("client channel %s…: a voucher lost in flight covers %d nanoTON more",
                         cid.hex()[:16], done.recovered)  # fmt: skip
            if done.unbilled:
                log.warning("client channel %s…: the client paid %d nanoTON beyond what this database billed; "
                            "if it was restored from a copy, the workers' payouts will show it",
                            cid.hex()[:16], done.unbilled)  # fmt: skip
            if done.written_off:
                log.warning("client channel %s…: %d nanoTON billed but never delivered; not charged",
                            cid.hex()[:16], done.written_off)  # fmt: skip
            row = self.accounts.client(cid) or row
        elif row is not None:
            try:
                claimed = client_voucher(cid, request)
                if claimed is not None and claimed.voucher.seqno > row.seqno:
                    # signed after the last one we took: lost on its way, or refused as beyond the
                    # deposit, which the deposit this attach follows may cover now
                    added = self._accept(client, claimed)
                    row = self.accounts.client(cid) or row
                    log.info("client channel %s…: the voucher it names covers %d nanoTON more",
                             cid.hex()[:16], added)  # fmt: skip
            except VoucherError as exc:
                log.warning("client channel %s…: ignored the newest voucher it names: %s", cid.hex()[:16], exc)
        return PayTerms(
            stream_id=request.stream_id,
            root=account_id(self.root),
            proxy_wallet=account_id(self.wallet.address),
            close_delay=params.close_delay,
            channel=cid,
            min_stake=params.min_client_stake,
            exists=state.exists,
            balance=state.balance,
            stake=state.stake,
            redeemed=state.redeemed,
            charged=row.total if row else 0,
            paid=row.amount if row else 0,
            seqno=row.seqno if row else 0,
        )

    def given_up(self, channel_id: bytes, request_id: bytes) -> None:
        """The client gave up a request whose answer we billed before it could take the end
        (``ProxyAccounts.give_up``)."""
        lost = self.accounts.give_up(channel_id, request_id)
        if lost:
            log.warning("client channel %s…: %d nanoTON billed for an answer its client gave up before its "
                        "end arrived; not charged", channel_id.hex()[:16], lost)  # fmt: skip

    def note_open(
        self, channel_id: bytes, awaiting: Collection[bytes], live: Collection[int], gone: Callable[[int], bool]
    ) -> None:
        """A client's ``Open`` named the requests it awaits, over all its connections
        (``ProxyAccounts.note_awaiting``)."""
        lost = self.accounts.note_awaiting(channel_id, awaiting, live=live, gone=gone)
        if lost:
            log.warning("client channel %s…: %d nanoTON billed on a connection that closed before its "
                        "client received it; not charged", channel_id.hex()[:16], lost)  # fmt: skip

    def refusal(self, channel_id: bytes | None, awaiting: Collection[bytes]) -> str:
        client = self._client(channel_id)
        if channel_id is None or client is None:
            return "this proxy takes payment: attach a payment channel first"
        state = client.state
        if not state.exists:
            return "the payment channel has no deposit yet: deposit into it first"
        if self.accounts.client(channel_id) is None:  # funded since it was named (a settlement round saw it)
            self.accounts.open_client(channel_id, client.client_key)
            self.clients[channel_id] = self._unfunded.pop(channel_id, client)
        if client.waiting is not None and client.waiting.voucher.amount <= client.available:
            waiting, client.waiting = client.waiting, None
            try:
                self._accept(client, waiting)
            except VoucherError as exc:  # (expired meanwhile, or one newer came)
                log.warning("client channel %s…: a voucher held back is void: %s", channel_id.hex()[:16], exc)
        if not state.open:
            return "the payment channel is closing: open a new deposit"
        if state.stake < self.registry.params.min_client_stake:
            # (redeeming takes the stake down with the balance once the balance falls below it)
            return (
                f"the channel's stake {state.stake} is below the minimum {self.registry.params.min_client_stake}: "
                "top up with a stake (cocoon wallet topup --stake)"
            )
        return self.accounts.refusal(
            channel_id,
            awaiting=awaiting if isinstance(awaiting, set) else set(awaiting),
            stake=state.stake,
            available=state.balance + state.redeemed,
        )

    def charge(
        self,
        channel_id: bytes,
        worker_key: bytes,
        record: UsageRecord,
        price_milli: int,
        connection: int = NO_CONNECTION,
    ) -> Charge | None:
        """Bill one verified answer, delivered on client ``connection``; None when the worker
        has no payout channel yet."""
        worker = self.workers.get(worker_key)
        if worker is None:
            return None
        # the lower of old and new prices for a while after a change: clients learn of it later
        cost, commission_bps = self.billing.priced(record, worker_key, price_milli, time.monotonic())
        commission, _ = split(cost, commission_bps)
        return self.accounts.charge(
            request_id=record.request_id,
            client_channel=channel_id,
            worker_channel=worker.channel.account_id,
            worker_key=worker_key,
            cost=cost,
            commission=commission,
            now=int(time.time()),
            connection=connection,
        )

    def accept_voucher(self, message: Voucher) -> int:
        signed = SignedVoucher(
            VoucherData(TAG_CLIENT_VOUCHER, message.channel, message.seqno, message.amount, message.expiry),
            message.signature,
        )
        client = self._client(message.channel)
        if client is None:
            raise VoucherError("wrong_channel", "no such client channel")
        return self._accept(client, signed)

    def _client(self, channel_id: bytes | None) -> ClientChannel | None:
        if channel_id is None:
            return None
        return self.clients.get(channel_id) or self._unfunded.get(channel_id)

    def _accept(self, client: ClientChannel, signed: SignedVoucher) -> int:
        problem = over_deposit(signed.voucher.amount, client)
        if problem is not None:
            signed.verify(client.client_key)  # (a voucher that is not the client's is not held back)
            if client.waiting is None or client.waiting.voucher.seqno < signed.voucher.seqno:
                client.waiting = signed
            raise problem
        added = self.accounts.accept_voucher(signed, int(time.time()))
        self._flush_soon()
        return added

    def _flush_soon(self) -> None:
        """Write the staged client vouchers ``VOUCHER_FLUSH_DELAY`` from now, unless a charge
        writes them first."""
        if self._flush is None and self.store.staged:
            self._flush = asyncio.get_running_loop().call_later(VOUCHER_FLUSH_DELAY, self._flush_vouchers)

    def _flush_vouchers(self) -> None:
        """Write the client vouchers that no charge has written since they came."""
        self._flush = None
        try:
            self.store.flush()
        except sqlite3.Error:  # they stay staged, for the next transaction
            log.exception("cannot write the client vouchers")

    def payout_message(self, charge: Charge) -> Voucher:
        v = charge.payout.voucher
        return Voucher(
            channel=v.channel,
            seqno=v.seqno,
            amount=v.amount,
            expiry=v.expiry,
            signature=charge.payout.signature,
            payer_wallet=account_id(self.wallet.address),
            # the channel's own, which a change in the registry since it was derived does not move
            close_delay=self._close_delays.get(v.channel, self.registry.params.close_delay),
        )

    # --- workers ---

    def add_worker(self, worker_key: bytes, wallet: bytes, paid_seqno: int = 0) -> None:
        """A worker announced its wallet: derive its channel and fund it in the background.
        ``Rollback`` when the worker holds a newer payout voucher than our database has signed
        it on any channel (the worker names the newest over all its channels with us: a new
        wallet of its, or a new close delay in the registry, gives it a fresh channel)."""
        close_delay = self.registry.params.close_delay
        channel = Channel.worker(
            self.ledger,
            root=self.root,
            proxy=self.wallet.address,
            worker=Address((0, wallet)),
            close_delay=close_delay,
            proxy_key=self.public_key,
            worker_key=worker_key,
        )
        signed = max((r.seqno for r in self.store.channels("proxy_out") if r.peer_key == worker_key), default=0)
        if paid_seqno > signed:
            raise Rollback(
                f"worker channel {channel.account_id.hex()[:16]}…: the worker holds payout #{paid_seqno}, "
                f"our database only #{signed}"
            )
        existing = self.workers.get(worker_key)
        if existing is not None and existing.channel.account_id == channel.account_id:
            return
        entry = WorkerChannel(channel, ChannelState(address="", exists=False))
        self.workers[worker_key] = entry
        self._close_delays[channel.account_id] = close_delay
        self.store.add_channel(channel.account_id, "proxy_out", worker_key)
        entry.funding = asyncio.create_task(self._fund(entry))

    async def _fund(self, entry: WorkerChannel) -> None:
        """Keep the channel's balance above what we owe the worker and have not paid."""
        cid = entry.channel.account_id
        if not self._retry.ready(cid, time.monotonic()):
            return
        try:
            # read each time: a top-up's own transaction may land after the wallet's (TON), and
            # a balance read too early would have the next round top up again
            entry.state = await entry.channel.state()
            if entry.state.close_at:
                # closing (our operator's `cocoon wallet close`): it takes no deposit, and its
                # address is the worker's for good; the worker must be paid another way
                log.warning("worker channel %s… is closing: not funding it", cid.hex()[:16])
                self._retry.failed(cid, time.monotonic())
                return
            row = self.store.channel(cid)
            owed = (row.amount - entry.state.redeemed) if row else 0
            if not entry.state.exists or entry.state.balance - owed < self.worker_deposit // 2:
                # enough for all we owe and a deposit more: redeeming is all or nothing, so a
                # balance below the newest payout would let the worker redeem none of it
                shortfall = max(0, owed - entry.state.balance) if entry.state.exists else 0
                await entry.channel.top_up(self.wallet, self.worker_deposit + shortfall)
                entry.state = await entry.channel.state()
                log.info("funded worker channel %s…: balance %d", cid.hex()[:16], entry.state.balance)
            self._retry.succeeded(cid)
        except ChainError as exc:
            wait = self._retry.failed(cid, time.monotonic())
            log.warning("cannot fund worker channel %s… (again in %.0f s): %s", cid.hex()[:16], wait, exc)

    # --- settlement ---

    async def settle(self, *, force: bool = False) -> None:
        """One round: redeem client vouchers past the threshold (all when ``force``), refresh
        client channels, keep worker channels funded, commit the state sequence number."""
        for cid, client in list(self.clients.items()):  # one after another: one wallet sends
            row = self.accounts.client(cid)
            if row is None or not row.seqno or row.unredeemed <= 0 or client.state.seqno >= row.seqno:
                continue
            # The client may withdraw all but its stake at any time, and close the channel
            # (refunded in full after the close delay): what it paid stays redeemable only while
            # it is within the stake, and a closing channel is redeemed at once.
            threshold = min(self.redeem_threshold, max(1, client.state.stake // 2))
            if not (force or client.state.close_at or row.unredeemed >= threshold):
                continue
            if not force and not self._retry.ready(cid, time.monotonic()):
                continue
            # a redeem the contract refuses still costs its fees: not sent (and not every round)
            why = client.state.cannot_redeem(row.amount, row.expiry, int(time.time()))
            if why:
                wait = self._retry.failed(cid, time.monotonic())
                log.warning("client channel %s…: cannot redeem (again in %.0f s): %s", cid.hex()[:16], wait, why)
                continue
            # Vouchers came during the redeems before this one: what goes on chain must be in
            # the database first, or a restart would take the chain's newer seqno for a rollback.
            self.store.flush()
            voucher = VoucherData(TAG_CLIENT_VOUCHER, cid, row.seqno, row.amount, row.expiry)
            try:
                await client.channel.redeem(self.wallet, row.signature, voucher.cell())
            except ChainError as exc:
                wait = self._retry.failed(cid, time.monotonic())
                log.warning("redeeming client channel %s… (again in %.0f s): %s", cid.hex()[:16], wait, exc)
                continue
            self._retry.succeeded(cid)
            log.info("redeemed %d nanoTON from client channel %s…", row.unredeemed, cid.hex()[:16])
        # Reading the channels is independent: many at once, so that a round over many clients
        # on a distant liteserver does not outlast its interval.
        limit = asyncio.Semaphore(REFRESH_CONCURRENCY)
        watched = [*self.clients.items(), *self._unfunded.items()]
        await asyncio.gather(*(self._refresh(cid, client, limit) for cid, client in watched))
        for entry in list(self.workers.values()):
            if entry.funding is None or entry.funding.done():
                await self._fund(entry)
        await self.commit(force=force)

    async def _refresh(self, cid: bytes, client: ClientChannel, limit: asyncio.Semaphore) -> None:
        """The client channel's state as the chain shows it now, and what it has redeemed."""
        async with limit:
            try:
                client.state = await client.channel.state()
                if cid in self.clients:  # (one named with nothing on chain has no books to update)
                    self.store.set_redeemed(cid, client.state.redeemed)
            except ChainError as exc:
                log.warning("reading client channel %s…: %s", cid.hex()[:16], exc)
            except Exception:  # one channel must not end the round for the others
                log.exception("reading client channel %s…", cid.hex()[:16])

    async def aclose(self) -> None:
        if self._flush is not None:
            self._flush.cancel()  # the store writes what is staged as it closes
        for entry in self.workers.values():
            if entry.funding is not None:
                entry.funding.cancel()
        try:
            self.store.close()
        finally:
            await self.ledger.aclose()

    async def commit(self, *, force: bool = False) -> None:
        """Publish our state sequence number on chain (in a worker channel we fund)."""
        self.store.flush()  # the state published includes every voucher received
        seq = self.store.state_seq
        now = time.monotonic()
        if seq == self._committed_seq or (not force and now - self._last_commit < self.commit_interval):
            return
        target = next((w for w in self.workers.values() if w.state.exists), None)
        if target is None:
            return
        digest = hashlib.sha256(f"{seq}".encode()).digest()
        cell = commit_cell(target.channel.account_id, seq, digest)
        try:
            await target.channel.commit(self.wallet, sign_cell(cell, self.key), cell)
        except ChainError as exc:
            log.warning("cannot commit state #%d: %s", seq, exc)
            return
        self._committed_seq, self._last_commit = seq, now
        log.info("committed state #%d on chain", seq)
