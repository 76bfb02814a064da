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
from cocoon.proxy.router import RouteError, Router
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
