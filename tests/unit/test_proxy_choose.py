"""The proxy's choice of a worker: suspended workers are left out before looking for room, and
the workers a request is sealed for are found on whichever connection they have now."""

from __future__ import annotations

import asyncio
import math
import random
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from cocoon.protocol.errors import ErrorCode
from cocoon.protocol.messages import Announce
from cocoon.proxy.reputation import FAILURES_TO_SUSPEND, Reputation
from cocoon.proxy.router import RouteError, Router, WorkerEntry
from cocoon.proxy.service import Proxy, Wanted

BOTH = Wanted(frozenset({"aa", "bb"}), 0)
OFFER = Announce(model="m", engine="e", capacity=1, max_tokens=100)


def chooser(tmp_path: Path) -> Proxy:
    proxy = Proxy.__new__(Proxy)  # only the choice is exercised: no settings, no listener
    proxy.router = Router(["m"])
    proxy.reputation = Reputation(tmp_path / "reputation.json")
    proxy._rng = random.Random(1)
    return proxy


def test_an_idle_suspended_worker_does_not_hide_that_the_good_ones_are_busy(tmp_path: Path) -> None:
    proxy = chooser(tmp_path)
    good = proxy.router.announce(1, "good", Announce(model="m", engine="e", capacity=1, max_tokens=100), "aa")
    proxy.router.announce(2, "bad", Announce(model="m", engine="e", capacity=1, max_tokens=100), "bb")
    for _ in range(FAILURES_TO_SUSPEND):
        proxy.reputation.failure("bb", time.time())
    assert proxy._choose("m", BOTH, "balanced") is good
    proxy.router.acquire(good)  # the good one is busy, the suspended one idle
    with pytest.raises(RouteError) as busy:
        proxy._choose("m", BOTH, "balanced")
    assert busy.value.code is ErrorCode.SATURATED  # so the request waits for a slot
    proxy.router.release(good)
    proxy.reputation.failure("aa", time.time())
    for _ in range(FAILURES_TO_SUSPEND):
        proxy.reputation.failure("aa", time.time())
    with pytest.raises(RouteError) as none:
        proxy._choose("m", BOTH, "balanced")
    assert none.value.code is ErrorCode.NO_WORKER and "suspended" in str(none.value)


def test_a_request_waiting_for_a_worker_finds_it_on_its_fresh_connection(tmp_path: Path) -> None:
    # the worker renews its connection (its attestation) while the request waits for it: the
    # fresh connection has another id, and the old one takes no more requests
    proxy = chooser(tmp_path)
    old = proxy.router.announce(1, "worker", OFFER, "aa")
    proxy.router.acquire(old)
    wanted = Wanted(frozenset({"aa"}), 0)
    with pytest.raises(RouteError) as busy:
        proxy._choose("m", wanted, "balanced")
    assert busy.value.code is ErrorCode.SATURATED
    fresh = proxy.router.announce(2, "worker", OFFER, "aa")
    proxy.router.drain(1)
    assert proxy._choose("m", wanted, "balanced") is fresh


def test_a_worker_tried_is_not_tried_again_on_its_fresh_connection(tmp_path: Path) -> None:
    proxy = chooser(tmp_path)
    proxy.router.announce(1, "worker", OFFER, "aa")
    other = proxy.router.announce(3, "other", OFFER, "bb")
    wanted = Wanted(frozenset({"aa", "bb"}), 0, tried={"aa"})
    proxy.router.announce(2, "worker", OFFER, "aa")
    proxy.router.drain(1)
    assert proxy._choose("m", wanted, "balanced") is other
    with pytest.raises(RouteError):
        proxy._choose("m", Wanted(frozenset({"aa"}), 0, tried={"aa"}), "balanced")


def test_only_the_workers_sealed_for_within_the_price_cap_are_chosen(tmp_path: Path) -> None:
    proxy = chooser(tmp_path)
    cheap = proxy.router.announce(1, "cheap", OFFER, "aa")
    dear = Announce(model="m", engine="e", capacity=1, max_tokens=100, price_milli=2000)
    proxy.router.announce(2, "dear", dear, "bb")
    proxy.router.announce(3, "not sealed for", OFFER, "cc")
    for _ in range(20):
        assert proxy._choose("m", Wanted(frozenset({"aa", "bb"}), 1000), "cheapest") is cheap
    with pytest.raises(RouteError):
        proxy._choose("m", Wanted(frozenset({"bb"}), 1000), "balanced")


async def test_a_request_waiting_for_room_takes_a_worker_as_its_suspension_ends(tmp_path: Path) -> None:
    # nothing notifies the waiters when a suspension ends: they look again at that time, instead
    # of waiting for a busy worker (or the queue timeout, then a 429) with an idle one eligible
    proxy = chooser(tmp_path)
    proxy.settings = SimpleNamespace(queue_timeout=5.0, max_queue=10)  # type: ignore[assignment]
    proxy._slot_freed, proxy._waiting = asyncio.Condition(), {}
    proxy.router.acquire(proxy.router.announce(1, "busy", OFFER, "aa"))
    proxy.router.announce(2, "suspended", OFFER, "bb")
    proxy.reputation.stats("bb").suspended_until = time.time() + 0.3
    assert proxy._next_reinstatement("m") == pytest.approx(0.3, abs=0.1)
    started = time.monotonic()
    entry = await proxy._acquire("m", BOTH)
    assert entry.key == "bb" and time.monotonic() - started < 2.0
    assert proxy._next_reinstatement("m") == math.inf


class WorkerConnectionDouble:
    """Test double of a worker's connection to the proxy: who it is, and whether it was closed."""

    def __init__(self, label: str, key: bytes = b"a" * 32) -> None:
        self.label = label
        self.identity = SimpleNamespace(public_key=key)
        self.closed_because = ""

    async def aclose(self, reason: str = "") -> None:
        self.closed_because = reason


def renewing(tmp_path: Path) -> tuple[Proxy, WorkerConnectionDouble, WorkerEntry]:
    """A proxy whose worker ("aa") was asked to redial (``_expiring``) on its only connection."""
    proxy = chooser(tmp_path)
    proxy.settings = SimpleNamespace(queue_timeout=5.0, max_queue=10)  # type: ignore[assignment]
    proxy._slot_freed, proxy._waiting = asyncio.Condition(), {}
    proxy._retiring, proxy._background, proxy._last_called = set(), [], set()
    old_peer = WorkerConnectionDouble("old")  # connections go by their id()
    proxy.worker_peers = {id(old_peer): old_peer}  # type: ignore[dict-item]
    proxy._renewing = {id(old_peer)}
    return proxy, old_peer, proxy.router.announce(id(old_peer), "worker", OFFER, "aa")


async def test_requests_wait_for_a_workers_fresh_connection_after_the_last_call(tmp_path: Path) -> None:
    # half the notice before the old connection's evidence ends, the worker's fresh connection
    # is there and has not announced: the old one takes no more requests (one started there now
    # could be cut at the expiry), and a request for the worker waits for the fresh one to
    # announce instead of failing with 503
    proxy, old_peer, old = renewing(tmp_path)
    wanted = Wanted(frozenset({"aa"}), 0)
    proxy._last_call(old_peer)  # type: ignore[arg-type]
    assert proxy._choose("m", wanted, "balanced") is old  # no fresh connection yet: still routed
    fresh_peer = WorkerConnectionDouble("fresh")
    proxy.worker_peers[id(fresh_peer)] = fresh_peer  # type: ignore[assignment]
    proxy._hold_for_fresh(b"a" * 32)  # (as its connection is served)
    assert old.draining and old.renewing
    with pytest.raises(RouteError) as held:
        proxy._choose("m", wanted, "balanced")
    assert held.value.code is ErrorCode.SATURATED  # so the request waits for a slot
    assert proxy.router.serving("m") == [old]  # and clients still find the worker listed
    assert proxy.router.models()[0].workers == 1
    waiting = asyncio.ensure_future(proxy._acquire("m", wanted))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    fresh = proxy.router.announce(id(fresh_peer), "worker", OFFER, "aa")
    proxy.renewed(fresh_peer)  # type: ignore[arg-type]
    await proxy._notify_slot()
    assert await asyncio.wait_for(waiting, 1.0) is fresh
    assert old.draining and not old.renewing  # drained for good, and closed as it has no request
    await asyncio.gather(*proxy._background)
    assert old_peer.closed_because == "no longer used: drained"


async def test_a_held_connection_takes_requests_again_if_the_fresh_one_goes_before_it_announced(
    tmp_path: Path,
) -> None:
    # else the requests sealed for the worker would wait and get 429s until the old connection
    # ends, where they were served before
    proxy, old_peer, old = renewing(tmp_path)
    proxy._last_call(old_peer)  # type: ignore[arg-type]
    fresh_peer = WorkerConnectionDouble("fresh")
    proxy.worker_peers[id(fresh_peer)] = fresh_peer  # type: ignore[assignment]
    proxy._hold_for_fresh(b"a" * 32)
    assert old.renewing
    del proxy.worker_peers[id(fresh_peer)]
    proxy._hold_for_fresh(b"a" * 32)  # (as that connection's serving ends)
    assert not old.draining and not old.renewing
    assert proxy._choose("m", Wanted(frozenset({"aa"}), 0), "balanced") is old
    other = WorkerConnectionDouble("another worker", b"b" * 32)  # a fresh connection of another worker
    proxy.worker_peers[id(other)] = other  # type: ignore[assignment]
    proxy._hold_for_fresh(b"b" * 32)
    assert not old.draining


def test_the_last_call_leaves_a_replaced_or_closed_connection_alone(tmp_path: Path) -> None:
    proxy, old_peer, old = renewing(tmp_path)
    proxy.router.drain(id(old_peer))  # replaced by the fresh connection before the last call
    proxy._last_call(old_peer)  # type: ignore[arg-type]
    assert old.draining and not old.renewing and id(old_peer) not in proxy._last_called
    gone = WorkerConnectionDouble("gone")
    entry = proxy.router.announce(id(gone), "gone", OFFER, "bb")
    proxy._last_call(gone)  # type: ignore[arg-type]  # closed: no longer among the connections
    assert not entry.draining and not entry.renewing


def test_a_connection_held_for_its_workers_fresh_one_is_not_closed_when_its_requests_end(tmp_path: Path) -> None:
    proxy = chooser(tmp_path)
    peer = SimpleNamespace(label="worker")
    proxy.worker_peers, proxy._retiring = {1: peer}, set()  # type: ignore[dict-item]
    proxy.router.announce(1, "worker", OFFER, "aa")
    proxy.router.hold(1)
    proxy._close_if_drained(1)  # (its last request ended): the waiters' worker must stay listed
    assert 1 not in proxy._retiring
