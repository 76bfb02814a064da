"""The payment store's cached channel rows never differ from the database."""

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
