"""The books of each role over a real SQLite store: billing, vouchers, refusals, write-offs."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.keys import public_bytes
from cocoon.payments.accounts import ClientAccounts, ProxyAccounts, Reconciled, WorkerAccounts
from cocoon.payments.store import DuplicateRequest, PaymentStore
from cocoon.payments.vouchers import TAG_CLIENT_VOUCHER, TAG_WORKER_VOUCHER, Voucher, VoucherError

NOW = 1_800_000_000
CLIENT_CHANNEL = b"\x01" * 32
WORKER_CHANNEL = b"\x02" * 32


@pytest.fixture
def keys() -> dict[str, Ed25519PrivateKey]:
    return {name: Ed25519PrivateKey.generate() for name in ("client", "proxy", "worker")}


@pytest.fixture
def books(tmp_path: Path, keys: dict[str, Ed25519PrivateKey]) -> tuple[ProxyAccounts, ClientAccounts]:
    proxy = ProxyAccounts(PaymentStore(tmp_path / "proxy.db"), keys["proxy"])
    client = ClientAccounts(PaymentStore(tmp_path / "client.db"), keys["client"])
    proxy.open_client(CLIENT_CHANNEL, public_bytes(keys["client"]))
    client.open(CLIENT_CHANNEL, public_bytes(keys["proxy"]))
    return proxy, client


def bill(proxy: ProxyAccounts, keys: dict[str, Ed25519PrivateKey], request_id: bytes, cost: int) -> None:
    proxy.charge(
        request_id=request_id,
        client_channel=CLIENT_CHANNEL,
        worker_channel=WORKER_CHANNEL,
        worker_key=public_bytes(keys["worker"]),
        cost=cost,
        commission=cost // 10,
        now=NOW,
    )


def test_the_store_is_private_in_wal_mode_and_counts_its_commits(tmp_path: Path) -> None:
    store = PaymentStore(tmp_path / "p.db")
    assert os.stat(tmp_path / "p.db").st_mode & 0o777 == 0o600
    mode = sqlite3.connect(tmp_path / "p.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    before = store.state_seq
    store.add_channel(b"\x09" * 32, "client", b"\x00" * 32)
    assert store.state_seq == before + 1


def test_a_charge_bills_the_client_credits_the_worker_and_signs_its_payout(
    books: tuple[ProxyAccounts, ClientAccounts], keys: dict[str, Ed25519PrivateKey]
) -> None:
    proxy, _ = books
    bill(proxy, keys, b"r1".ljust(16, b"\0"), 1000)
    charge = proxy.charge(
        request_id=b"r2".ljust(16, b"\0"),
        client_channel=CLIENT_CHANNEL,
        worker_channel=WORKER_CHANNEL,
        worker_key=public_bytes(keys["worker"]),
        cost=500,
        commission=50,
        now=NOW,
    )
    charge.payout.verify(public_bytes(keys["proxy"]))
    assert (charge.payout.voucher.seqno, charge.payout.voucher.amount) == (2, 900 + 450)
    client_row = proxy.client(CLIENT_CHANNEL)
    assert client_row is not None and client_row.total == 1500
    with pytest.raises(DuplicateRequest):  # a request id is billed once
        bill(proxy, keys, b"r1".ljust(16, b"\0"), 1000)
    assert proxy.client(CLIENT_CHANNEL).total == 1500  # type: ignore[union-attr]


def test_unpaid_answers_stop_service_until_a_voucher_covers_them(
    books: tuple[ProxyAccounts, ClientAccounts], keys: dict[str, Ed25519PrivateKey]
) -> None:
    proxy, client = books
    r1, r2 = b"a" * 16, b"b" * 16
    assert proxy.refusal(CLIENT_CHANNEL, awaiting=set(), stake=10**9, available=10**10) == ""
    bill(proxy, keys, r1, 700)
    # the client may not have seen r1's end yet: then it is still awaited, and that is fine
    assert proxy.refusal(CLIENT_CHANNEL, awaiting={r1}, stake=10**9, available=10**10) == ""
    assert "not covered by a voucher" in proxy.refusal(CLIENT_CHANNEL, awaiting=set(), stake=10**9, available=10**10)
    added = proxy.accept_voucher(client.pay(CLIENT_CHANNEL, r1, 700, NOW), NOW)
    assert added == 700
    assert proxy.refusal(CLIENT_CHANNEL, awaiting=set(), stake=10**9, available=10**10) == ""
    bill(proxy, keys, r2, 300)
    assert "stake" in proxy.refusal(CLIENT_CHANNEL, awaiting={r2}, stake=300, available=10**10)
    assert "top up" in proxy.refusal(CLIENT_CHANNEL, awaiting={r2}, stake=10**9, available=1000)


def test_the_proxy_refuses_bad_vouchers(
    books: tuple[ProxyAccounts, ClientAccounts], keys: dict[str, Ed25519PrivateKey]
) -> None:
    proxy, client = books
    bill(proxy, keys, b"a" * 16, 700)
    good = client.pay(CLIENT_CHANNEL, b"a" * 16, 700, NOW)
    forged = Voucher(TAG_CLIENT_VOUCHER, CLIENT_CHANNEL, 1, 700, NOW + 10**6).sign(keys["proxy"])
    with pytest.raises(VoucherError) as caught:
        proxy.accept_voucher(forged, NOW)
    assert caught.value.code == "bad_signature"
    short = Voucher(TAG_CLIENT_VOUCHER, CLIENT_CHANNEL, 1, 700, NOW + 60).sign(keys["client"])
    with pytest.raises(VoucherError) as caught:
        proxy.accept_voucher(short, NOW)  # expires before the proxy could redeem it
    assert caught.value.code == "expired"
    proxy.accept_voucher(good, NOW)
    # again, or an older one after it (a client renewing its connection sends on both): nothing new
    assert proxy.accept_voucher(good, NOW) == 0
    with pytest.raises(VoucherError) as caught:
        proxy.accept_voucher(forged, NOW)  # but it must be genuine
    assert caught.value.code == "bad_signature"
    bolder = Voucher(TAG_CLIENT_VOUCHER, CLIENT_CHANNEL, 1, 800, NOW + 10**7).sign(keys["client"])
    with pytest.raises(VoucherError) as caught:
        proxy.accept_voucher(bolder, NOW)  # an old seqno for more
    assert caught.value.code == "stale"
    lower = Voucher(TAG_CLIENT_VOUCHER, CLIENT_CHANNEL, 2, 600, NOW + 10**7).sign(keys["client"])
    with pytest.raises(VoucherError) as caught:
        proxy.accept_voucher(lower, NOW)
    assert caught.value.code == "amount_decreased"


def test_the_client_pays_each_answer_once_with_cumulative_vouchers(
    books: tuple[ProxyAccounts, ClientAccounts], keys: dict[str, Ed25519PrivateKey]
) -> None:
    _, client = books
    first = client.pay(CLIENT_CHANNEL, b"a" * 16, 100, NOW)
    second = client.pay(CLIENT_CHANNEL, b"b" * 16, 50, NOW)
    again = client.pay(CLIENT_CHANNEL, b"b" * 16, 50, NOW)  # the same answer: not paid twice
    assert (first.voucher.seqno, first.voucher.amount) == (1, 100)
    assert (second.voucher.seqno, second.voucher.amount) == (2, 150)
    assert again == second
    second.verify(public_bytes(keys["client"]))


def test_answers_billed_but_never_delivered_are_written_off_at_reattach(
    books: tuple[ProxyAccounts, ClientAccounts], keys: dict[str, Ed25519PrivateKey]
) -> None:
    proxy, client = books
    bill(proxy, keys, b"a" * 16, 100)
    paid = client.pay(CLIENT_CHANNEL, b"a" * 16, 100, NOW)
    proxy.accept_voucher(paid, NOW)
    bill(proxy, keys, b"b" * 16, 40)  # committed, then the connection broke before its end
    assert proxy.reconcile(CLIENT_CHANNEL, paid, NOW) == Reconciled(written_off=40)
    row = proxy.client(CLIENT_CHANNEL)
    assert row is not None and row.total == row.amount == 100
    assert proxy.refusal(CLIENT_CHANNEL, awaiting=set(), stake=10**9, available=10**10) == ""
    with pytest.raises(DuplicateRequest):
        bill(proxy, keys, b"b" * 16, 40)  # written off, still never billed again


def test_a_voucher_lost_in_flight_is_accepted_at_reattach(
    books: tuple[ProxyAccounts, ClientAccounts], keys: dict[str, Ed25519PrivateKey]
) -> None:
    proxy, client = books
    bill(proxy, keys, b"a" * 16, 100)
    proxy.accept_voucher(client.pay(CLIENT_CHANNEL, b"a" * 16, 100, NOW), NOW)
    bill(proxy, keys, b"b" * 16, 40)
    lost = client.pay(CLIENT_CHANNEL, b"b" * 16, 40, NOW)  # the proxy stopped before it came
    bill(proxy, keys, b"c" * 16, 30)  # and before this answer's end left
    assert proxy.reconcile(CLIENT_CHANNEL, lost, NOW + 60) == Reconciled(recovered=40, written_off=30)
    row = proxy.client(CLIENT_CHANNEL)
    assert row is not None
    assert (row.seqno, row.amount, row.total, row.signature) == (2, 140, 140, lost.signature)
    assert proxy.refusal(CLIENT_CHANNEL, awaiting=set(), stake=10**9, available=10**10) == ""
    # the next voucher follows on from the recovered one
    bill(proxy, keys, b"d" * 16, 5)
    assert proxy.accept_voucher(client.pay(CLIENT_CHANNEL, b"d" * 16, 5, NOW + 60), NOW + 60) == 5


def test_a_newer_voucher_that_does_not_verify_changes_nothing_and_is_no_rollback(
    books: tuple[ProxyAccounts, ClientAccounts], keys: dict[str, Ed25519PrivateKey]
) -> None:
    # A client's word proves nothing about the proxy's database: before, a bare claim of a newer
    # seqno made the proxy stop serving everyone.
    proxy, _ = books
    bill(proxy, keys, b"a" * 16, 100)
    forged = Voucher(TAG_CLIENT_VOUCHER, CLIENT_CHANNEL, 3, 500, NOW + 10**7).sign(keys["proxy"])
    # a real voucher of the same client, on another of its channels with this proxy
    proxy.open_client(b"\x07" * 32, public_bytes(keys["client"]))
    other_channel = Voucher(TAG_CLIENT_VOUCHER, b"\x07" * 32, 3, 100, NOW + 10**7).sign(keys["client"])
    expired = Voucher(TAG_CLIENT_VOUCHER, CLIENT_CHANNEL, 3, 100, NOW + 60).sign(keys["client"])
    before = proxy.client(CLIENT_CHANNEL)
    for claim in (forged, other_channel, expired):
        with pytest.raises(VoucherError):
            proxy.reconcile(CLIENT_CHANNEL, claim, NOW)
        assert proxy.client(CLIENT_CHANNEL) == before
    assert proxy.reconcile(CLIENT_CHANNEL, None, NOW) == Reconciled(written_off=100)


def test_a_voucher_paying_beyond_what_was_billed_raises_the_total_with_it(
    books: tuple[ProxyAccounts, ClientAccounts], keys: dict[str, Ed25519PrivateKey]
) -> None:
    proxy, client = books  # this database never billed the answer the client paid for
    paid = client.pay(CLIENT_CHANNEL, b"a" * 16, 100, NOW)
    assert proxy.reconcile(CLIENT_CHANNEL, paid, NOW) == Reconciled(recovered=100, unbilled=100)
    row = proxy.client(CLIENT_CHANNEL)
    assert row is not None and row.total == row.amount == 100


def test_a_live_voucher_for_more_than_was_billed_is_counted_as_billed_and_switches_no_limit_off(
    books: tuple[ProxyAccounts, ClientAccounts], keys: dict[str, Ed25519PrivateKey]
) -> None:
    """A client that signs far more than it was billed must not make its later answers look paid
    in advance (unpaid below zero) nor widen its write-off allowance (1 % of what it paid): the
    total billed rises to the amount, and the deposit check sees it."""
    proxy, _ = books
    bill(proxy, keys, b"a" * 16, 100)
    inflated = Voucher(TAG_CLIENT_VOUCHER, CLIENT_CHANNEL, 1, 10**12, NOW + 30 * 86400).sign(keys["client"])
    assert proxy.accept_voucher(inflated, NOW) == 10**12
    row = proxy.client(CLIENT_CHANNEL)
    assert row is not None and row.total == row.amount == 10**12 and row.unpaid == 0
    assert "top up" in proxy.refusal(CLIENT_CHANNEL, awaiting=set(), stake=100, available=10**9)
    bill(proxy, keys, b"b" * 16, 300)  # (an answer already under way): unpaid again, against the stake
    assert "stake" in proxy.refusal(CLIENT_CHANNEL, awaiting=set(), stake=300, available=10**13)


def test_a_reattach_writes_off_exactly_what_the_newest_voucher_left_unpaid(
    books: tuple[ProxyAccounts, ClientAccounts], keys: dict[str, Ed25519PrivateKey], tmp_path: Path
) -> None:
    """The excess comes off the newest answers: an older one the voucher paid in part keeps that
    part, so the costs on record still add up to the total billed (a restart rebuilds from them)."""
    proxy, client = books
    bill(proxy, keys, b"a" * 16, 10)
    bill(proxy, keys, b"b" * 16, 20)
    client.pay(CLIENT_CHANNEL, b"a" * 16, 10, NOW)
    paid = client.pay(CLIENT_CHANNEL, b"c" * 16, 5, NOW)  # paid 15 of the 30 billed
    assert proxy.reconcile(CLIENT_CHANNEL, paid, NOW) == Reconciled(recovered=15, written_off=15)
    costs = {rid: cost for rid, cost, _, _ in proxy.store.request_costs(CLIENT_CHANNEL)}
    row = proxy.client(CLIENT_CHANNEL)
    assert row is not None and row.total == row.amount == 15
    assert costs == {b"a" * 16: 10, b"b" * 16: 5} and sum(costs.values()) == row.total
    bill(proxy, keys, b"d" * 16, 7)  # delivered, not paid: after a restart it still counts as uncovered
    restarted = ProxyAccounts(proxy.store, keys["proxy"])
    restarted.open_client(CLIENT_CHANNEL, public_bytes(keys["client"]))
    assert "not covered" in restarted.refusal(CLIENT_CHANNEL, awaiting=set(), stake=10**9, available=10**10)


def test_the_worker_keeps_only_valid_newer_payouts(tmp_path: Path, keys: dict[str, Ed25519PrivateKey]) -> None:
    worker = WorkerAccounts(PaymentStore(tmp_path / "worker.db"))
    proxy_key = public_bytes(keys["proxy"])
    first = Voucher(TAG_WORKER_VOUCHER, WORKER_CHANNEL, 1, 90, NOW + 10**7).sign(keys["proxy"])
    assert worker.accept(first, proxy_key, NOW) == 90
    wrong_tag = Voucher(TAG_CLIENT_VOUCHER, WORKER_CHANNEL, 2, 200, NOW + 10**7).sign(keys["proxy"])
    with pytest.raises(VoucherError):
        worker.accept(wrong_tag, proxy_key, NOW)
    with pytest.raises(VoucherError):
        worker.accept(first, proxy_key, NOW)
    other_proxy = Voucher(TAG_WORKER_VOUCHER, WORKER_CHANNEL, 2, 200, NOW + 10**7).sign(keys["client"])
    with pytest.raises(VoucherError):
        worker.accept(other_proxy, public_bytes(keys["client"]), NOW)
    assert worker.earned() == 90


def test_a_client_voucher_is_written_with_the_next_charge(
    books: tuple[ProxyAccounts, ClientAccounts], keys: dict[str, Ed25519PrivateKey]
) -> None:
    proxy, client = books
    bill(proxy, keys, b"a" * 16, 100)
    seq = proxy.store.state_seq
    assert proxy.accept_voucher(client.pay(CLIENT_CHANNEL, b"a" * 16, 100, NOW), NOW) == 100
    assert proxy.store.staged == 1 and proxy.store.state_seq == seq  # no commit of its own
    assert proxy.refusal(CLIENT_CHANNEL, awaiting=set(), stake=10**9, available=10**10) == ""
    bill(proxy, keys, b"b" * 16, 40)
    assert proxy.store.staged == 0 and proxy.store.state_seq == seq + 1  # one commit for both
    reopened = PaymentStore(proxy.store.path)
    row = reopened.channel(CLIENT_CHANNEL)
    assert row is not None and (row.seqno, row.amount, row.total) == (1, 100, 140)


def test_a_staged_voucher_lost_with_the_proxy_is_recovered_at_reattach(
    tmp_path: Path, books: tuple[ProxyAccounts, ClientAccounts], keys: dict[str, Ed25519PrivateKey]
) -> None:
    proxy, client = books
    bill(proxy, keys, b"a" * 16, 100)
    paid = client.pay(CLIENT_CHANNEL, b"a" * 16, 100, NOW)
    proxy.accept_voucher(paid, NOW)  # staged; then the process dies without writing it
    restarted = ProxyAccounts(PaymentStore(proxy.store.path), keys["proxy"])
    row = restarted.open_client(CLIENT_CHANNEL, public_bytes(keys["client"]))
    assert (row.seqno, row.amount, row.total) == (0, 0, 100)
    assert restarted.reconcile(CLIENT_CHANNEL, paid, NOW) == Reconciled(recovered=100)
    restarted.store.close()
    row = PaymentStore(proxy.store.path).channel(CLIENT_CHANNEL)
    assert row is not None and (row.seqno, row.amount, row.total) == (1, 100, 100)


def test_what_reattaches_wrote_off_counts_against_the_stake_for_good(
    tmp_path: Path, books: tuple[ProxyAccounts, ClientAccounts], keys: dict[str, Ed25519PrivateKey]
) -> None:
    """A client that breaks every connection before the answer's end gets each answer written
    off; once those reach its stake (plus 1 % of what it paid), it is refused, also by a
    restarted proxy."""
    proxy, client = books
    bill(proxy, keys, b"a" * 16, 40)
    assert proxy.reconcile(CLIENT_CHANNEL, None, NOW) == Reconciled(written_off=40)
    assert proxy.refusal(CLIENT_CHANNEL, awaiting=set(), stake=100, available=10**10) == ""
    bill(proxy, keys, b"b" * 16, 50)
    assert proxy.refusal(CLIENT_CHANNEL, awaiting={b"b" * 16}, stake=100, available=10**10) == ""  # 90 < 100
    assert proxy.reconcile(CLIENT_CHANNEL, None, NOW) == Reconciled(written_off=50)
    assert proxy.refusal(CLIENT_CHANNEL, awaiting=set(), stake=100, available=10**10) == ""  # 90 < 100
    bill(proxy, keys, b"c" * 16, 20)  # in flight: 90 written off and 20 unpaid reach the stake
    reason = proxy.refusal(CLIENT_CHANNEL, awaiting={b"c" * 16}, stake=100, available=10**10)
    assert "90 nanoTON" in reason and "written off" in reason and "20 are unpaid" in reason
    assert reason.endswith("sign a voucher")  # paying the answer in flight is enough
    assert proxy.reconcile(CLIENT_CHANNEL, None, NOW) == Reconciled(written_off=20)
    reason = proxy.refusal(CLIENT_CHANNEL, awaiting=set(), stake=100, available=10**10)
    assert "110 nanoTON" in reason and "stake of 100" in reason and "raise the channel's stake" in reason
    assert proxy.refusal(CLIENT_CHANNEL, awaiting=set(), stake=1000, available=10**10) == ""  # a higher stake
    proxy.store.close()
    restarted = ProxyAccounts(PaymentStore(tmp_path / "proxy.db"), keys["proxy"])
    restarted.open_client(CLIENT_CHANNEL, public_bytes(keys["client"]))
    assert "written off" in restarted.refusal(CLIENT_CHANNEL, awaiting=set(), stake=100, available=10**10)
    # a client that pays earns an allowance of 1 % of what it paid: rare write-offs never add up
    bill(restarted, keys, b"d" * 16, 10_000)
    restarted.accept_voucher(client.pay(CLIENT_CHANNEL, b"d" * 16, 10_000, NOW), NOW)
    assert restarted.refusal(CLIENT_CHANNEL, awaiting=set(), stake=100, available=10**10) == ""  # 110 < 100 + 100
    other = b"\x05" * 32  # another client channel starts with nothing written off
    restarted.open_client(other, public_bytes(keys["client"]))
    assert restarted.refusal(other, awaiting=set(), stake=100, available=10**10) == ""


def bill_on(proxy: ProxyAccounts, keys: dict[str, Ed25519PrivateKey], rid: bytes, cost: int, connection: int) -> None:
    proxy.charge(request_id=rid, client_channel=CLIENT_CHANNEL, worker_channel=WORKER_CHANNEL,
                 worker_key=public_bytes(keys["worker"]), cost=cost, commission=0, now=NOW,
                 connection=connection)  # fmt: skip


def test_a_client_renewing_its_connection_is_not_written_off_or_refused_for_what_the_old_one_delivers(
    books: tuple[ProxyAccounts, ClientAccounts], keys: dict[str, Ed25519PrivateKey]
) -> None:
    """A client renews its connection before the proxy's attestation expires: it attaches on
    the fresh connection while answers billed on the old one are on their way to it, and pays
    for them as they arrive, in whatever order they come. What went out on a connection that
    is gone and was not paid for is written off, and nothing else."""
    proxy, client = books
    old, fresh, third = 1, 2, 3
    r1, r2, r3, r4, r5, r6 = (bytes([i]) * 16 for i in range(1, 7))
    bill_on(proxy, keys, r1, 100, old)
    bill_on(proxy, keys, r2, 50, old)
    assert proxy.reconcile(CLIENT_CHANNEL, None, NOW, live={old, fresh}) == Reconciled()  # the fresh attach
    paid_r1 = client.pay(CLIENT_CHANNEL, r1, 100, NOW)
    bill_on(proxy, keys, r3, 30, fresh)
    paid_r3 = client.pay(CLIENT_CHANNEL, r3, 30, NOW)
    assert proxy.accept_voucher(paid_r3, NOW) == 130  # it came on the fresh connection first
    assert proxy.accept_voucher(paid_r1, NOW) == 0  # the older one, from the old connection, is no error
    # r2 is on its way on the old connection: a request on the fresh one that names it is served,
    # though r3, billed after it, was paid before it
    assert proxy.note_awaiting(CLIENT_CHANNEL, {r2}, live={old, fresh}, gone=lambda c: False) == 0
    assert proxy.refusal(CLIENT_CHANNEL, awaiting={r2}, stake=10**9, available=10**10) == ""
    # the old connection is cut before r2 reaches the client: not written off while it may still
    # be paid for (it just closed, or the client still names it: its end may have come unread),
    # then written off
    assert proxy.note_awaiting(CLIENT_CHANNEL, {r2}, live={fresh}, gone=lambda c: False) == 0
    assert proxy.note_awaiting(CLIENT_CHANNEL, {r2}, live={fresh}, gone=lambda c: c == old) == 0
    assert proxy.note_awaiting(CLIENT_CHANNEL, set(), live={fresh}, gone=lambda c: c == old) == 50
    row = proxy.client(CLIENT_CHANNEL)
    assert row is not None and (row.total, row.amount) == (130, 130) and proxy.written_off(CLIENT_CHANNEL) == 50
    assert proxy.refusal(CLIENT_CHANNEL, awaiting=set(), stake=10**9, available=10**10) == ""

    # the next renewal: r4 was given up (the client names it no more and never pays it), r5 is on
    # its way on the open connection: only r4 is written off
    bill_on(proxy, keys, r4, 40, fresh)
    assert proxy.note_awaiting(CLIENT_CHANNEL, {r5}, live={fresh}, gone=lambda c: c == old) == 0
    bill_on(proxy, keys, r5, 7, fresh)
    assert proxy.reconcile(CLIENT_CHANNEL, None, NOW, live={fresh, third}) == Reconciled(written_off=40)
    assert proxy.refusal(CLIENT_CHANNEL, awaiting={r5}, stake=10**9, available=10**10) == ""
    proxy.accept_voucher(client.pay(CLIENT_CHANNEL, r5, 7, NOW), NOW)
    # r6 reaches the client just before its connection closes, and is paid on the next one
    bill_on(proxy, keys, r6, 20, fresh)
    proxy.accept_voucher(client.pay(CLIENT_CHANNEL, r6, 20, NOW), NOW)
    assert proxy.note_awaiting(CLIENT_CHANNEL, set(), live={third}, gone=lambda c: c != third) == 0
    row = proxy.client(CLIENT_CHANNEL)
    assert row is not None and (row.total, row.amount) == (157, 157) and proxy.written_off(CLIENT_CHANNEL) == 90
    assert proxy.refusal(CLIENT_CHANNEL, awaiting=set(), stake=10**9, available=10**10) == ""
    # the requests' costs still add up to the total (a restarted proxy rebuilds from them)
    assert sum(cost for _, cost, _, _ in proxy.store.request_costs(CLIENT_CHANNEL)) == 157


def test_an_answer_whose_client_gave_it_up_before_its_end_came_is_written_off_and_counted(
    books: tuple[ProxyAccounts, ClientAccounts], keys: dict[str, Ed25519PrivateKey]
) -> None:
    """Its cancel crossed the end: the client never got the receipt and cannot pay. Left as it
    was, the answer stayed delivered-and-unpaid in the books, and every later request was
    refused until the client attached again."""
    proxy, client = books
    kept, given_up = b"k" * 16, b"g" * 16
    bill(proxy, keys, kept, 100)
    bill(proxy, keys, given_up, 40)
    proxy.accept_voucher(client.pay(CLIENT_CHANNEL, kept, 100, NOW), NOW)
    assert "not covered" in proxy.refusal(CLIENT_CHANNEL, awaiting=set(), stake=10**9, available=10**10)
    assert proxy.give_up(CLIENT_CHANNEL, given_up) == 40
    assert proxy.refusal(CLIENT_CHANNEL, awaiting=set(), stake=10**9, available=10**10) == ""
    row = proxy.client(CLIENT_CHANNEL)
    assert row is not None and (row.total, row.amount) == (100, 100)
    assert proxy.written_off(CLIENT_CHANNEL) == 40  # against the stake, as every write-off
    assert proxy.give_up(CLIENT_CHANNEL, given_up) == 0  # once
    assert proxy.give_up(CLIENT_CHANNEL, kept) == 0  # a paid answer has nothing to write off
    # a client that cancels after each end instead of paying is refused once its stake is used up
    for i in range(3):
        rid = bytes([i]) * 16
        bill(proxy, keys, rid, 100)
        proxy.give_up(CLIENT_CHANNEL, rid)
    assert "written off" in proxy.refusal(CLIENT_CHANNEL, awaiting=set(), stake=300, available=10**10)
