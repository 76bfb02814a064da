"""The proxy's choice of a worker leaves suspended workers out before looking for room."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from cocoon.protocol.errors import ErrorCode
from cocoon.protocol.messages import Announce
from cocoon.proxy.reputation import FAILURES_TO_SUSPEND, Reputation
from cocoon.proxy.router import RouteError, Router
from cocoon.proxy.service import Proxy


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
    assert proxy._choose("m", frozenset(), None, "balanced") is good
    proxy.router.acquire(good)  # the good one is busy, the suspended one idle
    with pytest.raises(RouteError) as busy:
        proxy._choose("m", frozenset(), None, "balanced")
    assert busy.value.code is ErrorCode.SATURATED  # so the request waits for a slot
    proxy.router.release(good)
    proxy.reputation.failure("aa", time.time())
    for _ in range(FAILURES_TO_SUSPEND):
        proxy.reputation.failure("aa", time.time())
    with pytest.raises(RouteError) as none:
        proxy._choose("m", frozenset(), None, "balanced")
    assert none.value.code is ErrorCode.NO_WORKER and "suspended" in str(none.value)
