"""The payment store's cached channel rows never differ from the database, and staged vouchers
are seen at once and written with the next transaction."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from cocoon.payments.store import DuplicateRequest, PaymentStore

CHANNEL = bytes([1]) * 32
PEER = bytes([2]) * 32


def test_reads_follow_own_writes(tmp_path: Path) -> None:
    store = PaymentStore(tmp_path / "p.db")
    assert store.channel(CHANNEL) is None
    store.add_channel(CHANNEL, "proxy_in", PEER)
    with store.transaction() as db:
        store.add_total(db, CHANNEL, 70)
        store.set_voucher(db, CHANNEL, 1, 50, 99, bytes(64))
    row = store.channel(CHANNEL)
    assert row is not None
    assert (row.total, row.seqno, row.amount, row.expiry, row.unpaid) == (70, 1, 50, 99, 20)
    store.set_redeemed(CHANNEL, 40)
    assert store.channel(CHANNEL).redeemed == 40  # type: ignore[union-attr]
    assert [r.total for r in store.channels("proxy_in")] == [70]


def test_a_rolled_back_change_is_not_seen(tmp_path: Path) -> None:
    store = PaymentStore(tmp_path / "p.db")
    store.add_channel(CHANNEL, "proxy_in", PEER)
    with store.transaction() as db:
        store.record_request(db, b"r" * 16, CHANNEL, 5, 5, None, 0)
        store.add_total(db, CHANNEL, 5)
    with pytest.raises(DuplicateRequest), store.transaction() as db:
        store.add_total(db, CHANNEL, 1000)  # changed in this transaction…
        store.record_request(db, b"r" * 16, CHANNEL, 5, 5, None, 0)  # …which then fails
    assert store.channel(CHANNEL).total == 5  # type: ignore[union-attr]
    reopened = PaymentStore(tmp_path / "p.db")
    assert reopened.channel(CHANNEL).total == 5  # type: ignore[union-attr]


def test_a_commit_by_another_connection_is_seen(tmp_path: Path) -> None:
    # a node running while `cocoon wallet redeem` writes the same database
    node = PaymentStore(tmp_path / "p.db")
    node.add_channel(CHANNEL, "worker", PEER)
    assert node.channel(CHANNEL).redeemed == 0  # type: ignore[union-attr]  (now cached)
    with contextlib.closing(PaymentStore(tmp_path / "p.db")) as cli:
        cli.set_redeemed(CHANNEL, 123)
    assert node.channel(CHANNEL).redeemed == 123  # type: ignore[union-attr]


def test_add_total_of_an_unknown_channel(tmp_path: Path) -> None:
    store = PaymentStore(tmp_path / "p.db")
    with pytest.raises(KeyError), store.transaction() as db:
        store.add_total(db, CHANNEL, 1)
    assert store.channel(CHANNEL) is None


def test_an_unchanged_redeemed_amount_is_not_a_change_of_state(tmp_path: Path) -> None:
    store = PaymentStore(tmp_path / "p.db")
    store.add_channel(CHANNEL, "proxy_in", PEER)
    store.set_redeemed(CHANNEL, 40)
    seq = store.state_seq
    store.set_redeemed(CHANNEL, 40)  # settlement saw the same figure again
    store.set_redeemed(CHANNEL, 10)  # an older figure never lowers it
    assert store.state_seq == seq
    assert store.channel(CHANNEL).redeemed == 40  # type: ignore[union-attr]
    store.set_redeemed(CHANNEL, 41)
    assert store.state_seq == seq + 1


def on_disk(path: Path) -> tuple[int, int, int] | None:
    """(seqno, amount, total) of the channel as another connection reads it."""
    with contextlib.closing(PaymentStore(path)) as other:
        row = other.channel(CHANNEL)
        return (row.seqno, row.amount, row.total) if row else None


def test_a_staged_voucher_is_seen_at_once_and_written_by_the_next_transaction(tmp_path: Path) -> None:
    store = PaymentStore(tmp_path / "p.db")
    store.add_channel(CHANNEL, "proxy_in", PEER)
    staged = store.stage_voucher(CHANNEL, 1, 50, 99, bytes([7]) * 64)
    assert (staged.seqno, staged.amount, staged.expiry, staged.signature) == (1, 50, 99, bytes([7]) * 64)
    assert store.channel(CHANNEL) == staged
    assert store.channels("proxy_in") == [staged]
    assert store.staged == 1 and on_disk(tmp_path / "p.db") == (0, 0, 0)
    with store.transaction() as db:
        changed = store.add_total(db, CHANNEL, 70)  # a charge: it sees the voucher, and writes it
    assert (changed.seqno, changed.amount, changed.total) == (1, 50, 70)
    assert store.staged == 0 and on_disk(tmp_path / "p.db") == (1, 50, 70)
    assert store.channel(CHANNEL) == changed


def test_a_staged_voucher_outlives_a_failed_transaction(tmp_path: Path) -> None:
    store = PaymentStore(tmp_path / "p.db")
    store.add_channel(CHANNEL, "proxy_in", PEER)
    with store.transaction() as db:
        store.record_request(db, b"r" * 16, CHANNEL, 5, 5, None, 0)
    store.stage_voucher(CHANNEL, 1, 50, 99, bytes(64))
    with pytest.raises(DuplicateRequest), store.transaction() as db:
        store.record_request(db, b"r" * 16, CHANNEL, 5, 5, None, 0)
    assert store.staged == 1 and store.channel(CHANNEL).amount == 50  # type: ignore[union-attr]
    assert on_disk(tmp_path / "p.db") == (0, 0, 0)
    store.flush()
    assert store.staged == 0 and on_disk(tmp_path / "p.db") == (1, 50, 0)


def test_closing_the_store_writes_what_is_staged(tmp_path: Path) -> None:
    store = PaymentStore(tmp_path / "p.db")
    store.add_channel(CHANNEL, "proxy_in", PEER)
    store.stage_voucher(CHANNEL, 2, 80, 99, bytes(64))
    with pytest.raises(KeyError):
        store.stage_voucher(bytes([9]) * 32, 1, 1, 99, bytes(64))  # no such channel
    store.close()
    assert on_disk(tmp_path / "p.db") == (2, 80, 0)
