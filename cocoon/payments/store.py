"""Durable payment state in SQLite (WAL): counters and the newest voucher of every channel.

Every change that matters is one transaction, committed before the answer it pays for is
released, so a crash loses no count. The exception is the vouchers a proxy's clients send: the
proxy stages them (``stage_voucher``) and the next transaction writes them, so a crash can lose
the newest of a channel; its client names it again at its next attach. ``state_seq`` increases
with every commit; the proxy publishes it on chain to detect a database restored from an old
copy.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- one row per payment channel this node is a party of (as payer or payee)
CREATE TABLE IF NOT EXISTS channels (
    channel BLOB PRIMARY KEY,      -- account id of the channel contract
    role TEXT NOT NULL,            -- 'client' (we pay a proxy), 'proxy_in' (a client pays us),
                                   -- 'proxy_out' (we pay a worker), 'worker' (a proxy pays us)
    peer_key BLOB NOT NULL,        -- the other side's key
    total INTEGER NOT NULL DEFAULT 0,   -- cumulative amount owed through this channel, nanoTON
    seqno INTEGER NOT NULL DEFAULT 0,   -- newest voucher
    amount INTEGER NOT NULL DEFAULT 0,
    expiry INTEGER NOT NULL DEFAULT 0,
    signature BLOB NOT NULL DEFAULT x'',
    redeemed INTEGER NOT NULL DEFAULT 0 -- as last seen on chain
);
-- every billed request, once: a request id is never charged twice
CREATE TABLE IF NOT EXISTS requests (
    request_id BLOB PRIMARY KEY,
    channel BLOB NOT NULL,
    cost INTEGER NOT NULL,
    share INTEGER NOT NULL,        -- the worker's share (proxy), or the cost (client)
    worker_channel BLOB,
    at INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class ChannelRow:
    """A ``channels`` row; the fields are in the table's column order (``SELECT *``)."""

    channel: bytes
    role: str
    peer_key: bytes
    total: int
    seqno: int
    amount: int
    expiry: int
    signature: bytes
    redeemed: int

    @property
    def unpaid(self) -> int:
        """Owed but not covered by a voucher."""
        return self.total - self.amount

    @property
    def unredeemed(self) -> int:
        """Covered by a voucher but not yet redeemed on chain."""
        return self.amount - self.redeemed


# rows kept in memory; past this many, the cache starts over (it is only a cache)
MAX_CACHED_ROWS = 100_000


class DuplicateRequest(Exception):
    """The request id was already billed."""


class PaymentStore:
    def __init__(self, path: Path, synchronous: str = "NORMAL") -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self.path = path
        # autocommit off by hand: BEGIN IMMEDIATE … COMMIT around every change
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL survives a killed process (committed WAL frames are in the OS); FULL also a
        # power cut, at an fsync per commit.
        self._db.execute(f"PRAGMA synchronous={'FULL' if synchronous.upper() == 'FULL' else 'NORMAL'}")
        self._db.executescript(SCHEMA)
        # Channel rows as committed, and as changed by the open transaction. Every write to
        # ``channels`` goes through this class and returns the new row (RETURNING), so the
        # per-request reads (is this client within its deposit? which voucher came last?) cost
        # no query. A commit by another connection (``cocoon wallet redeem`` while the node
        # runs) changes ``data_version``, which empties the cache.
        self._rows: dict[bytes, ChannelRow] = {}
        self._changed: dict[bytes, ChannelRow] = {}
        # vouchers written at the start of the next transaction (``stage_voucher``)
        self._staged: dict[bytes, tuple[int, int, int, bytes]] = {}
        self._data_version = self._version()

    def close(self) -> None:
        self.flush()
        self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for channel, (seqno, amount, expiry, signature) in self._staged.items():
                self.set_voucher(self._db, channel, seqno, amount, expiry, signature)
            yield self._db
            self.add_meta(self._db, "state_seq", 1)
            self._db.execute("COMMIT")
        except BaseException:
            self._changed.clear()
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._staged.clear()
        if len(self._rows) + len(self._changed) > MAX_CACHED_ROWS:
            self._rows.clear()
        self._rows.update(self._changed)
        self._changed.clear()

    def stage_voucher(self, channel: bytes, seqno: int, amount: int, expiry: int, signature: bytes) -> ChannelRow:
        """``set_voucher`` without a commit of its own: the voucher is written at the start of
        the next transaction, whatever it is for (``flush`` makes one), and ``channel`` shows it
        meanwhile. For vouchers whose loss with the process costs nothing: the proxy stages
        those its clients send, since a client names its newest voucher again at its next
        attach, and a paid answer then takes one commit instead of two."""
        row = self.channel(channel)
        if row is None:
            raise KeyError(f"no channel {channel.hex()[:16]}…")
        self._staged[channel] = (seqno, amount, expiry, signature)
        return self._with_staged(row)

    @property
    def staged(self) -> int:
        """How many staged vouchers wait for a transaction."""
        return len(self._staged)

    def flush(self) -> None:
        """Write the staged vouchers now."""
        if self._staged:
            with self.transaction():
                pass

    def _with_staged(self, row: ChannelRow) -> ChannelRow:
        staged = self._staged.get(row.channel)
        if staged is None:
            return row
        seqno, amount, expiry, signature = staged
        return ChannelRow(
            row.channel, row.role, row.peer_key, row.total, seqno, amount, expiry, signature, row.redeemed
        )

    # --- meta ---

    @property
    def state_seq(self) -> int:
        return self.meta("state_seq")

    def meta(self, key: str, default: int = 0) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else default

    @staticmethod
    def add_meta(db: sqlite3.Connection, key: str, delta: int) -> None:
        """Add ``delta`` to a counter, inside the caller's transaction."""
        db.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
            (key, delta),
        )

    def set_meta(self, key: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # --- channels ---

    def _version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def channel(self, channel: bytes) -> ChannelRow | None:
        row = self._channel(channel)
        return self._with_staged(row) if row is not None and self._staged else row

    def _channel(self, channel: bytes) -> ChannelRow | None:
        changed = self._changed.get(channel)
        if changed is not None:
            return changed
        if self._rows and not self._db.in_transaction:
            version = self._version()
            if version != self._data_version:
                self._rows.clear()
                self._data_version = version
        cached = self._rows.get(channel)
        if cached is not None:
            return cached
        row = self._db.execute("SELECT * FROM channels WHERE channel = ?", (channel,)).fetchone()
        if row is None:
            return None
        found = ChannelRow(*row)
        if not self._db.in_transaction:
            self._rows[channel] = found
        return found

    def last_paid_channel(self, proxy_key: bytes) -> bytes | None:
        """A client's books: of our channels to the proxy with ``proxy_key``, the one whose
        request was recorded last (None: no request yet). The client signs each voucher with
        its request, so this is the channel of its newest voucher to that proxy, whatever the
        seqnos of older channels."""
        found = self._db.execute(
            "SELECT r.channel FROM requests r JOIN channels c ON c.channel = r.channel"
            " WHERE c.role = 'client' AND c.peer_key = ? ORDER BY r.rowid DESC LIMIT 1",
            (proxy_key,),
        ).fetchone()
        return found[0] if found else None

    def channels(self, role: str) -> list[ChannelRow]:
        rows = self._db.execute("SELECT * FROM channels WHERE role = ? ORDER BY channel", (role,)).fetchall()
        return [self._with_staged(ChannelRow(*row)) for row in rows]

    def _changed_row(self, returned: tuple[object, ...] | None, channel: bytes) -> ChannelRow:
        if returned is None:
            raise KeyError(f"no channel {channel.hex()[:16]}…")
        row = ChannelRow(*returned)  # type: ignore[arg-type]
        self._changed[channel] = row
        return row

    def ensure_channel(self, db: sqlite3.Connection, channel: bytes, role: str, peer_key: bytes) -> None:
        db.execute(
            "INSERT INTO channels(channel, role, peer_key) VALUES(?, ?, ?) ON CONFLICT(channel) DO NOTHING",
            (channel, role, peer_key),
        )

    def add_channel(self, channel: bytes, role: str, peer_key: bytes) -> ChannelRow:
        with self.transaction() as db:
            self.ensure_channel(db, channel, role, peer_key)
        row = self.channel(channel)
        assert row is not None
        return row

    def record_request(
        self,
        db: sqlite3.Connection,
        request_id: bytes,
        channel: bytes,
        cost: int,
        share: int,
        worker_channel: bytes | None,
        at: int,
    ) -> None:
        try:
            db.execute(
                "INSERT INTO requests(request_id, channel, cost, share, worker_channel, at) VALUES(?, ?, ?, ?, ?, ?)",
                (request_id, channel, cost, share, worker_channel, at),
            )
        except sqlite3.IntegrityError as exc:
            raise DuplicateRequest(request_id.hex()) from exc

    def add_total(self, db: sqlite3.Connection, channel: bytes, amount: int) -> ChannelRow:
        """Add to a channel's total; the changed row."""
        returned = db.execute(
            "UPDATE channels SET total = total + ? WHERE channel = ? RETURNING *", (amount, channel)
        ).fetchone()
        return self._changed_row(returned, channel)

    def credit(self, db: sqlite3.Connection, channel: bytes, role: str, peer_key: bytes, amount: int) -> ChannelRow:
        """``add_total``, creating the channel first if it is new (one statement: this is on the
        proxy's per-answer path)."""
        returned = db.execute(
            "INSERT INTO channels(channel, role, peer_key, total) VALUES(?, ?, ?, ?)"
            " ON CONFLICT(channel) DO UPDATE SET total = total + excluded.total RETURNING *",
            (channel, role, peer_key, amount),
        ).fetchone()
        return self._changed_row(returned, channel)

    def set_total(self, db: sqlite3.Connection, channel: bytes, *, at_least: int | None = None) -> ChannelRow:
        """Raise the total to ``at_least``; without it, lower it to what the newest voucher covers."""
        if at_least is None:
            returned = db.execute(
                "UPDATE channels SET total = amount WHERE channel = ? RETURNING *", (channel,)
            ).fetchone()
        else:
            returned = db.execute(
                "UPDATE channels SET total = MAX(total, ?) WHERE channel = ? RETURNING *", (at_least, channel)
            ).fetchone()
        return self._changed_row(returned, channel)

    def set_voucher(
        self, db: sqlite3.Connection, channel: bytes, seqno: int, amount: int, expiry: int, signature: bytes
    ) -> ChannelRow:
        returned = db.execute(
            "UPDATE channels SET seqno = ?, amount = ?, expiry = ?, signature = ? WHERE channel = ? RETURNING *",
            (seqno, amount, expiry, signature, channel),
        ).fetchone()
        return self._changed_row(returned, channel)

    def set_redeemed(self, channel: bytes, redeemed: int) -> None:
        """Raise the redeemed amount as seen on chain. Nothing is written when it did not move:
        settlement reads every channel each round, and a write would count as a change of state
        (``state_seq``), which the proxy then commits on chain."""
        known = self.channel(channel)
        if known is not None and known.redeemed >= redeemed:
            return
        with self.transaction() as db:
            returned = db.execute(
                "UPDATE channels SET redeemed = MAX(redeemed, ?) WHERE channel = ? RETURNING *",
                (redeemed, channel),
            ).fetchone()
            if returned is not None:
                self._changed_row(returned, channel)

    def request_billed(self, request_id: bytes) -> bool:
        return self._db.execute("SELECT 1 FROM requests WHERE request_id = ?", (request_id,)).fetchone() is not None

    def request_costs(self, channel: bytes | None = None) -> list[tuple[bytes, int, int, bytes | None]]:
        """(request id, cost, share, worker channel) of billed requests, oldest first."""
        query = "SELECT request_id, cost, share, worker_channel FROM requests"
        args: tuple[bytes, ...] = ()
        if channel is not None:
            query += " WHERE channel = ?"
            args = (channel,)
        return [tuple(row) for row in self._db.execute(query + " ORDER BY rowid", args).fetchall()]
