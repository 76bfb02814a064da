"""A worker replacing its connection to a proxy: when it renews by itself, and when it closes
the old connection should the proxy not (only once a fresh one is up, and idle since)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest

import cocoon.worker.service as service
from cocoon.channel.peer import renewal_delay
from cocoon.protocol.errors import ErrorCode
from cocoon.protocol.messages import Error, Open
from cocoon.worker.service import Worker
from tests.unit.test_peer_relay import Pair

GRACE = 0.1


@dataclass
class IdentityStub:
    expires_at: float | None = None


@dataclass
class PeerStub:
    """Test double: what ``_close_when_idle`` and ``renewal_delay`` read of a connection."""

    identity: IdentityStub = field(default_factory=IdentityStub)
    label: str = "proxy"
    closed: bool = False

    async def aclose(self, reason: str = "") -> None:
        self.closed = True


def worker(monkeypatch: pytest.MonkeyPatch) -> Worker:
    monkeypatch.setattr(service, "CLOSE_GRACE", GRACE)
    monkeypatch.setattr(service, "IDLE_POLL", GRACE / 10)
    w = Worker.__new__(Worker)  # only the closing is exercised: no engine, no keys
    w.connected, w.active, w._retiring = {}, {}, set()
    return w


async def test_the_old_connection_closes_only_once_a_fresh_one_is_up_and_idle_since(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = worker(monkeypatch)
    old, fresh = PeerStub(), PeerStub()
    w.connected["p"] = old  # type: ignore[assignment]
    closing = asyncio.create_task(w._close_when_idle(old, "p"))  # type: ignore[arg-type]
    await asyncio.sleep(3 * GRACE)
    assert not old.closed  # idle, but nothing replaces it yet: the proxy still routes here
    w.connected["p"] = fresh  # type: ignore[assignment]
    await asyncio.sleep(GRACE / 2)
    assert not old.closed  # the grace counts from the fresh connection, not from the idleness
    w.active[(id(old), 1)] = None  # type: ignore[assignment]  # a request the proxy sent meanwhile
    await asyncio.sleep(2 * GRACE)
    assert not old.closed
    del w.active[(id(old), 1)]
    await asyncio.sleep(3 * GRACE)
    assert old.closed and closing.done() and not w._retiring


async def test_the_old_connection_stays_when_the_fresh_one_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    w = worker(monkeypatch)
    old, fresh = PeerStub(), PeerStub()
    w.connected["p"] = fresh  # type: ignore[assignment]
    closing = asyncio.create_task(w._close_when_idle(old, "p"))  # type: ignore[arg-type]
    await asyncio.sleep(GRACE / 2)
    del w.connected["p"]  # the fresh connection closed before the proxy took it up
    await asyncio.sleep(3 * GRACE)
    assert not old.closed  # the only connection the proxy routes to
    closing.cancel()


def test_a_worker_renews_before_the_proxys_evidence_expires_in_its_eyes() -> None:
    now = time.time()
    assert renewal_delay(PeerStub(IdentityStub(now + 1000)), None, "proxy") == pytest.approx(940, abs=2)  # type: ignore[arg-type]
    assert renewal_delay(PeerStub(IdentityStub(now + 40)), None, "proxy") == pytest.approx(30, abs=2)  # type: ignore[arg-type]
    assert renewal_delay(PeerStub(IdentityStub(None)), None, "proxy") is None  # type: ignore[arg-type]
    assert renewal_delay(PeerStub(IdentityStub(now + 1)), None, "proxy") is None  # type: ignore[arg-type]
    # a fresh connection trusted no longer than the old one: its evidence itself ends then
    old = PeerStub(IdentityStub(now + 1000))
    assert renewal_delay(PeerStub(IdentityStub(now + 1000)), old, "proxy") is None  # type: ignore[arg-type]
    assert renewal_delay(PeerStub(IdentityStub(now + 2000)), old, "proxy") is not None  # type: ignore[arg-type]


async def test_a_request_that_crosses_the_workers_goodbye_is_refused_and_nothing_else_is_cut() -> None:
    """The proxy routes to the old connection until it reads the goodbye: what it sends there
    meanwhile is refused as ``shutting_down`` (which it retries elsewhere, at no cost to the
    worker), not a protocol error that would close the connection with its running requests."""
    w = Worker.__new__(Worker)  # the request never reaches it: no engine, no settings
    async with Pair(dialer_handler=w) as pair:  # the worker dialed the proxy
        w._say_goodbye(pair.dialer)
        crossing = await pair.listener.open(
            lambda sid: Open(stream_id=sid, model="m", kind="chat", stream=True, max_tokens=0, body=b"{}")
        )
        refused = await crossing.receive(5)
        assert isinstance(refused, Error) and refused.code == ErrorCode.SHUTTING_DOWN
        assert pair.listener.conn.goodbye_received
        assert not pair.dialer.closed and not pair.listener.closed
