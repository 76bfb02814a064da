"""Each role's books over the payment store: what is owed, signed and received, per channel.

Pure bookkeeping (SQLite and Ed25519, no network): the services call these at the right moment
and move the resulting vouchers over their connections.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.payments.store import ChannelRow, DuplicateRequest, PaymentStore
from cocoon.payments.vouchers import (
    TAG_CLIENT_VOUCHER,
    TAG_WORKER_VOUCHER,
    SignedVoucher,
    Voucher,
    VoucherError,
    check_next,
)

VOUCHER_VALIDITY = 30 * 86400  # seconds a voucher stays redeemable
MIN_VALIDITY = 86400  # a payee refuses a voucher it could not redeem for at least this long
WRITTEN_OFF_KEY = "written_off:"  # + a client channel's hex id: what reattaches wrote off there
# What reattaches wrote off may exceed a channel's stake by this share of what its client paid:
# an honest client's rare write-offs (a broken connection, a proxy's crash) never add up to a
# refusal, while one that never pays gets at most its stake.
WRITE_OFF_ALLOWANCE = 0.01
NO_CONNECTION = 0  # ``charge``'s client connection when it is not known


def latest_voucher(row: ChannelRow, tag: int) -> SignedVoucher | None:
    if row.seqno == 0:
        return None
    return SignedVoucher(Voucher(tag, row.channel, row.seqno, row.amount, row.expiry), row.signature)


class Rollback(Exception):
    """Our database is older than what the chain or a worker's newest payout shows: it was
    restored from a copy."""


@dataclass(frozen=True)
class Reconciled:
    """What a client's (re)attach changed in the proxy's books, in nanoTON."""

    recovered: int = 0  # newly covered by a voucher the client signed that never reached us
    unbilled: int = 0  # of that, beyond all this database had billed (it lost charges, or the client overpaid)
    written_off: int = 0  # billed beyond the client's newest voucher: answers that never reached it


@dataclass(frozen=True)
class Charge:
    """What one billed answer changed at the proxy."""

    cost: int
    commission: int
    payout: SignedVoucher  # the worker's new cumulative voucher


class ProxyAccounts:
    """Client channels pay in (``proxy_in``); worker channels pay out (``proxy_out``)."""

    def __init__(self, store: PaymentStore, key: Ed25519PrivateKey) -> None:
        self.store = store
        self.key = key
        # per client channel: billed answers not yet covered by a voucher, as
        # (request id, cumulative total after it), oldest first
        self._uncovered: dict[bytes, deque[tuple[bytes, int]]] = {}
        # per client channel: billed answers the client may still be waiting for, as request id →
        # (cost, the client connection it went out on); what an ``Open`` does not name as
        # awaited has ended at the client (``note_awaiting``)
        self._pending: dict[bytes, dict[bytes, tuple[int, int]]] = {}
        # per client channel: nanoTON written off at its reattaches, ever (``reconcile``)
        self._written_off: dict[bytes, int] = {}

    def open_client(self, channel: bytes, client_key: bytes) -> ChannelRow:
        row = self.store.channel(channel)
        if row is None:
            row = self.store.add_channel(channel, "proxy_in", client_key)
        elif row.role != "proxy_in" or row.peer_key != client_key:
            raise VoucherError("wrong_channel", "this channel belongs to another party")
        if channel not in self._uncovered:
            self._uncovered[channel] = self._rebuild(row)
        return row

    def written_off(self, channel: bytes) -> int:
        """nanoTON written off on this client channel at its reattaches, ever."""
        found = self._written_off.get(channel)
        if found is None:
            found = self._written_off[channel] = self.store.meta(WRITTEN_OFF_KEY + channel.hex())
        return found

    def _rebuild(self, row: ChannelRow) -> deque[tuple[bytes, int]]:
        total = 0
        pending: deque[tuple[bytes, int]] = deque()
        for request_id, cost, _, _ in self.store.request_costs(row.channel):
            total += cost
            if total > row.amount:
                pending.append((request_id, total))
        return pending

    def refusal(self, channel: bytes, *, awaiting: set[bytes], stake: int, available: int) -> str:
        """Why a new request from this client channel must wait for payment, or "".

        ``available`` is what the channel can still pay in total (redeemed + balance on chain).
        """
        row = self.store.channel(channel)
        if row is None:
            return "no payment channel is attached to this connection"
        if row.total >= available:
            return f"the channel's deposit is used up ({row.total} of {available} nanoTON billed): top up"
        if row.unpaid > 0 and row.unpaid >= stake:
            return f"{row.unpaid} nanoTON of answers are unpaid, at or above the stake of {stake}: sign a voucher"
        # What reattaches wrote off counts against the stake for good: else a client that drops
        # every connection before the answer's end and reattaches would never pay at all.
        written_off = self.written_off(channel)
        limit = stake + int(min(row.amount, row.total) * WRITE_OFF_ALLOWANCE)
        if written_off and row.unpaid + written_off >= limit:
            what = (
                f"{written_off} nanoTON of answers whose end never reached this client were written off "
                f"and {row.unpaid} are unpaid, at or above the stake of {stake} plus "
                f"{WRITE_OFF_ALLOWANCE:.0%} of the {row.amount} paid"
            )
            if written_off < limit:
                return f"{what}: sign a voucher"
            return f"{what}: raise the channel's stake (cocoon wallet topup --stake)"
        uncovered = [rid for rid, _ in self._uncovered.get(channel, ()) if rid not in awaiting]
        # Vouchers cover the oldest answers first, but a client pays for answers in the order they
        # reach it, which need not be the order we billed them in (answers ending together, or
        # on two connections: one renewing the other). So what counts, when some answer looks
        # uncovered, is whether more is unpaid than the answers it still awaits were billed.
        if uncovered and row.unpaid > self._awaited_cost(channel, awaiting):
            return f"{len(uncovered)} delivered answer(s) are not covered by a voucher"
        return ""

    def _awaited_cost(self, channel: bytes, awaiting: Collection[bytes]) -> int:
        """What the billed answers among ``awaiting`` cost (those billed since this process
        started: a restart is followed by a reattach, which settles what came before)."""
        pending = self._pending.get(channel, {})
        return sum(pending[rid][0] for rid in awaiting if rid in pending)

    def charge(
        self,
        *,
        request_id: bytes,
        client_channel: bytes,
        worker_channel: bytes,
        worker_key: bytes,
        cost: int,
        commission: int,
        now: int,
        connection: int = NO_CONNECTION,
    ) -> Charge:
        """Bill one answer to the client and credit the worker's share, in one transaction,
        and sign the worker's new cumulative voucher. ``DuplicateRequest`` if already billed.
        ``connection`` names the client connection the answer goes out on."""
        share = cost - commission
        with self.store.transaction() as db:
            self.store.record_request(db, request_id, client_channel, cost, share, worker_channel, now)
            client_total = self.store.add_total(db, client_channel, cost).total
            worker = self.store.credit(db, worker_channel, "proxy_out", worker_key, share)
            payout = Voucher(TAG_WORKER_VOUCHER, worker_channel, worker.seqno + 1, worker.total, now + VOUCHER_VALIDITY)
            signed = payout.sign(self.key)
            self.store.set_voucher(db, worker_channel, payout.seqno, payout.amount, payout.expiry, signed.signature)
        self._uncovered.setdefault(client_channel, deque()).append((request_id, client_total))
        self._pending.setdefault(client_channel, {})[request_id] = (cost, connection)
        return Charge(cost, commission, signed)

    def note_awaiting(
        self, channel: bytes, awaiting: Collection[bytes], *, live: Collection[int], gone: Callable[[int], bool]
    ) -> int:
        """A client's ``Open`` names every request whose end it has not received, on all its
        connections (``live`` names those open here). A billed answer it does not name, sent on
        a connection still open, has ended there (paid for, or given up): it is forgotten. One
        sent on a connection that is ``gone`` can no longer reach the client: once the client no
        longer names it (it names one cut with its connection for a while, since its end may
        have arrived unread), what such answers left unpaid is written off, as a reattach would
        (``reconcile``), for a client that stays attached on another connection (it renewed the
        old one, which was cut at expiry with a request longer than the renewal's notice, or
        broke). The nanoTON written off."""
        pending = self._pending.get(channel)
        if not pending:
            return 0
        lost: dict[bytes, int] = {}
        for rid, (cost, connection) in list(pending.items()):
            if connection in live:
                if rid not in awaiting:
                    del pending[rid]
            elif rid not in awaiting and gone(connection):  # (named: its end may yet be read)
                lost[rid] = cost
                del pending[rid]
        row = self.store.channel(channel) if lost else None  # (this runs for every request)
        if row is None:
            return 0
        # at most what is unpaid beyond the answers still on their way (or that may still be)
        held = sum(cost for cost, _ in pending.values())
        return self._lower(channel, row, lost.items(), min(sum(lost.values()), row.unpaid - held))

    def give_up(self, channel: bytes, request_id: bytes) -> int:
        """The client cancelled a request whose answer was billed before the end reached it (its
        cancel and the end crossed): it never gets the receipt, so it cannot pay. What the
        answer left unpaid is written off, and counts against the stake as every write-off does
        (a client that cancels after taking the end only moves its free answers from unpaid to
        written off). The nanoTON written off; 0 for an answer billed before this process
        started (a reattach settles those)."""
        pending = self._pending.get(channel)
        billed = pending.get(request_id) if pending else None
        row = self.store.channel(channel) if billed is not None else None
        if billed is None or row is None:
            return 0
        return self._lower(channel, row, [(request_id, billed[0])], min(billed[0], row.unpaid))

    def accept_voucher(self, signed: SignedVoucher, now: int) -> int:
        """Take a client's voucher once it checks out; the amount it newly covers. It is
        written with the next transaction (``PaymentStore.stage_voucher``): call
        ``store.flush`` soon after, when no charge comes first."""
        return self._accept(signed, now)[0]

    def _accept(self, signed: SignedVoucher, now: int) -> tuple[int, ChannelRow]:
        """``accept_voucher``, and the channel's row after it. A voucher for more than was
        billed raises the total billed to its amount, in the same transaction: what a client
        signed for is owed (it lost none of our charges, or paid for an answer we wrote off),
        and what was paid can never exceed what was billed (else the unpaid answers would
        count negative against the stake, and the write-off allowance grow with the amount)."""
        channel = signed.voucher.channel
        row = self.store.channel(channel)
        if row is None or row.role != "proxy_in":
            raise VoucherError("wrong_channel", "no such client channel")
        previous = latest_voucher(row, TAG_CLIENT_VOUCHER)
        v = signed.voucher
        if previous is not None and v.seqno <= previous.voucher.seqno and v.amount <= previous.voucher.amount:
            # One we have, or an older one that came after it: a client with two connections to
            # us (one renewing the other) may send them on both. Nothing new, if it is genuine.
            check_next(None, signed, channel=channel, tag=TAG_CLIENT_VOUCHER, payer_key=row.peer_key, now=now)
            return 0, row
        check_next(
            previous,
            signed,
            channel=channel,
            tag=TAG_CLIENT_VOUCHER,
            payer_key=row.peer_key,
            now=now,
            min_validity=MIN_VALIDITY,
        )
        if row.total < v.amount:
            with self.store.transaction() as db:
                self.store.set_voucher(db, channel, v.seqno, v.amount, v.expiry, signed.signature)
                after = self.store.set_total(db, channel, at_least=v.amount)
        else:
            # written with the next charge (or the payee's ``flush``): if we die first, the
            # client names it again at its next attach (``reconcile``)
            after = self.store.stage_voucher(channel, v.seqno, v.amount, v.expiry, signed.signature)
        pending = self._uncovered.get(channel)
        while pending and pending[0][1] <= v.amount:
            pending.popleft()
        return v.amount - row.amount, after

    def reconcile(
        self, channel: bytes, newest: SignedVoucher | None, now: int, live: Collection[int] = frozenset()
    ) -> Reconciled:
        """At a client's (re)attach, bring our books in line with the client's; ``newest`` is
        the newest voucher it signed on this channel (None: none yet); ``live`` names the client
        connections still open (``charge``'s ``connection``).

        - A voucher newer than ours was lost in flight (we stopped after the client sent it and
          before we committed it): it is accepted after the checks every voucher gets, and
          ``VoucherError`` when it fails them. A client's word proves nothing about our
          database, so a newer voucher is never taken for a rollback; the chain and the workers'
          payouts, which this proxy signed, are what reveal one.
        - Answers billed beyond the client's newest voucher never reached it (the connection
          broke between our commit and their end), so they are written off rather than charged.
          We cannot tell a broken connection from a client that broke it on purpose, so what a
          channel had written off counts against its stake from then on (``refusal``). Answers
          that went out on a connection still open and that the client may still await are
          not: it renews its connection before our attestation expires in its eyes, attaches
          on the fresh one while the old one still delivers, and pays for them as they end.
        """
        row = self.store.channel(channel)
        if row is None:
            return Reconciled()
        if newest is not None and newest.voucher.channel != channel:
            raise VoucherError("wrong_channel", "the voucher names another channel")
        recovered = unbilled = 0
        if newest is not None and newest.voucher.seqno > row.seqno:
            billed = row.total
            recovered, row = self._accept(newest, now)
            unbilled = max(0, newest.voucher.amount - billed)
        excess = row.total - row.amount
        if excess <= 0:
            return Reconciled(recovered=recovered, unbilled=unbilled)
        pending = self._pending.get(channel, {})
        in_flight = {rid: cost for rid, (cost, connection) in pending.items() if connection in live}
        if in_flight:
            # the rest, taken from what went out on connections now gone, then from the newest
            # answers billed, but not from those in flight
            rest = excess - sum(in_flight.values())
            if rest <= 0:  # (a renewal's usual case: nothing but what is in flight is unpaid)
                return Reconciled(recovered=recovered, unbilled=unbilled)
            gone = [(rid, cost) for rid, (cost, _) in pending.items() if rid not in in_flight]

            def newest_first() -> Iterator[tuple[bytes, int]]:  # read only if ``gone`` falls short
                for rid, cost, _, _ in reversed(self.store.request_costs(channel)):
                    yield rid, cost

            candidates = _unique(itertools.chain(gone, newest_first()), skip=in_flight.keys())
            written_off = self._lower(channel, row, candidates, rest)
            return Reconciled(recovered=recovered, unbilled=unbilled, written_off=written_off)
        # exactly the excess, from the newest answers billed: an older answer the voucher paid
        # part of keeps the part it paid (the costs recorded add up to the total billed)
        self._pending.pop(channel, None)
        latest = ((rid, cost) for rid, cost, _, _ in reversed(self.store.request_costs(channel)))
        written_off = self._lower(channel, row, latest, excess)
        return Reconciled(recovered=recovered, unbilled=unbilled, written_off=written_off)

    def _lower(self, channel: bytes, row: ChannelRow, costs: Iterable[tuple[bytes, int]], amount: int) -> int:
        """Write off ``amount`` nanoTON of what was billed on ``channel``, taken from the
        requests of ``costs`` ((request id, its cost), in that order); what was written off."""
        lowered: dict[bytes, int] = {}
        left = amount
        for rid, cost in costs:
            if left <= 0:
                break
            if cost > 0:
                lowered[rid] = min(cost, left)
                left -= lowered[rid]
        amount -= left
        if amount <= 0:
            return 0
        before = self.written_off(channel)
        with self.store.transaction() as db:
            self.store.add_total(db, channel, -amount)
            # kept (so the id is never billed again), at what is left of its cost
            db.executemany(
                "UPDATE requests SET cost = cost - ? WHERE request_id = ?", [(v, k) for k, v in lowered.items()]
            )
            self.store.add_meta(db, "written_off", amount)
            self.store.add_meta(db, WRITTEN_OFF_KEY + channel.hex(), amount)
        self._written_off[channel] = before + amount
        pending = self._pending.get(channel, {})
        for rid in lowered:
            pending.pop(rid, None)
        # the uncovered answers' running totals move down by what was written off before them;
        # a request not among them was billed before all of them (its running total is covered)
        uncovered = self._uncovered.get(channel, deque())
        listed = {rid for rid, _ in uncovered}
        shift = sum(v for k, v in lowered.items() if k not in listed)
        moved: deque[tuple[bytes, int]] = deque()
        for rid, total in uncovered:
            shift += lowered.get(rid, 0)
            if total - shift > row.amount:
                moved.append((rid, total - shift))
        self._uncovered[channel] = moved
        return amount

    def client(self, channel: bytes) -> ChannelRow | None:
        return self.store.channel(channel)

    def payout(self, worker_channel: bytes) -> SignedVoucher | None:
        row = self.store.channel(worker_channel)
        return latest_voucher(row, TAG_WORKER_VOUCHER) if row else None


def _unique(items: Iterable[tuple[bytes, int]], skip: Collection[bytes]) -> Iterator[tuple[bytes, int]]:
    """``items`` without those whose key is in ``skip`` or came before."""
    seen = set(skip)
    for key, value in items:
        if key not in seen:
            seen.add(key)
            yield key, value


class ClientAccounts:
    """The client's channels (``client``): what it owes each proxy and the vouchers it signed."""

    def __init__(self, store: PaymentStore, key: Ed25519PrivateKey) -> None:
        self.store = store
        self.key = key

    def open(self, channel: bytes, proxy_key: bytes) -> ChannelRow:
        row = self.store.channel(channel)
        if row is None:
            return self.store.add_channel(channel, "client", proxy_key)
        return row

    def pay(self, channel: bytes, request_id: bytes, cost: int, now: int) -> SignedVoucher:
        """Add one verified answer's cost and sign the new cumulative voucher. An answer already
        paid for is not paid twice: the newest voucher is returned unchanged."""
        try:
            with self.store.transaction() as db:
                self.store.record_request(db, request_id, channel, cost, cost, None, now)
                owed = self.store.add_total(db, channel, cost)
                v = Voucher(TAG_CLIENT_VOUCHER, channel, owed.seqno + 1, owed.total, now + VOUCHER_VALIDITY)
                signed = v.sign(self.key)
                self.store.set_voucher(db, channel, v.seqno, v.amount, v.expiry, signed.signature)
        except DuplicateRequest:
            current = self.store.channel(channel)
            assert current is not None
            existing = latest_voucher(current, TAG_CLIENT_VOUCHER)
            assert existing is not None
            return existing
        return signed

    def latest(self, channel: bytes) -> SignedVoucher | None:
        row = self.store.channel(channel)
        return latest_voucher(row, TAG_CLIENT_VOUCHER) if row else None


class WorkerAccounts:
    """The worker's channels (``worker``): the newest payout voucher from each proxy."""

    def __init__(self, store: PaymentStore) -> None:
        self.store = store

    def accept(self, signed: SignedVoucher, proxy_key: bytes, now: int) -> int:
        """Store a payout voucher once it checks out; the amount it adds."""
        channel = signed.voucher.channel
        row = self.store.channel(channel) or self.store.add_channel(channel, "worker", proxy_key)
        if row.role != "worker" or row.peer_key != proxy_key:
            raise VoucherError("wrong_channel", "this channel belongs to another party")
        check_next(
            latest_voucher(row, TAG_WORKER_VOUCHER),
            signed,
            channel=channel,
            tag=TAG_WORKER_VOUCHER,
            payer_key=proxy_key,
            now=now,
            min_validity=MIN_VALIDITY,
        )
        v = signed.voucher
        with self.store.transaction() as db:
            self.store.set_voucher(db, channel, v.seqno, v.amount, v.expiry, signed.signature)
            self.store.set_total(db, channel, at_least=v.amount)
        return v.amount - row.amount

    def earned(self) -> int:
        return sum(row.amount for row in self.store.channels("worker"))
