"""Choosing among eligible workers (pure: randomness comes in as a ``Random``).

Each routing preference is a score (lower is better) over price, queue and measured speed and
reliability; the power of two choices (score two random eligible workers, take the better)
spreads load and gives new workers traffic while still favouring the best.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal, TypeVar

from cocoon.proxy.reputation import WorkerStats
from cocoon.proxy.router import WorkerEntry

Preference = Literal["balanced", "cheapest", "fastest"]
T = TypeVar("T")
PREFERENCES: tuple[Preference, ...] = ("balanced", "cheapest", "fastest")
# A worker not measured yet is assumed to be good (optimism in the face of uncertainty), so it
# gets traffic, gets measured, and keeps traffic only if it earns it.
UNMEASURED_TTFT = 0.05  # seconds
UNMEASURED_SPEED = 500.0  # tokens per second
EXPLORE = 0.05
"""Share of the requests routed by measured speed (``balanced``, ``fastest``) that go to an
eligible worker picked at random: the worse of two choices never wins, so without it the worker
measured worst (perhaps on one bad moment, and kept across restarts) would get no traffic, and
no new measurement, for as long as the others are there. ``cheapest`` ranks by announced
prices, which need no measuring."""


def score(entry: WorkerEntry, stats: WorkerStats, preference: Preference) -> float:
    return raw_score(
        entry.offer.price_milli / 1000,
        entry.load,
        stats.ttft,
        stats.tokens_per_second,
        stats.success_rate,
        preference,
    )


def raw_score(price: float, queue: float, ttft: float, speed: float, success: float, preference: str) -> float:
    """Lower is better. ``queue`` is the share of capacity in use; zero speed or time to first
    token mean "not measured yet" and get optimistic assumed values."""
    ttft = ttft or UNMEASURED_TTFT
    speed = speed or UNMEASURED_SPEED
    stats_success = success
    slowness = ttft + 100.0 / speed  # time to first token plus time for 100 more tokens
    unreliability = 1.0 - stats_success
    if preference == "cheapest":
        return price * 10 + queue + unreliability
    if preference == "fastest":
        return slowness * (1 + queue) + unreliability * 10
    return price * slowness * (1 + queue) * (1 + 5 * unreliability)


def shortlist(ranked: Sequence[T], k: int, preference: str, rng: random.Random) -> list[T]:
    """The ``k`` best of ``ranked`` (best first) that a client seals a request for, except that a
    share ``EXPLORE`` of the requests routed by speed put one of the others, at random, in the
    place of the k-th: the proxy routes only to the workers a request is sealed for, so a worker
    never among a client's k best would never be measured again."""
    chosen = list(ranked[:k])
    if len(ranked) > k > 0 and preference != "cheapest" and rng.random() < EXPLORE:
        chosen[-1] = ranked[rng.randrange(k, len(ranked))]
    return chosen


def choose(
    entries: Sequence[WorkerEntry], stats: Sequence[WorkerStats], preference: Preference, rng: random.Random
) -> int:
    """Index of the chosen entry: the better of two random picks (power of two choices). A
    caller who asked for ``cheapest`` or ``fastest`` gets the best worker outright half of the
    time, so the preference dominates while every worker still gets some traffic; a share
    ``EXPLORE`` of the requests routed by speed goes to any of them, so that each keeps being
    measured."""
    if len(entries) == 1:
        return 0
    if preference != "cheapest" and rng.random() < EXPLORE:
        return rng.randrange(len(entries))
    if preference != "balanced" and rng.random() < 0.5:
        return min(range(len(entries)), key=lambda i: score(entries[i], stats[i], preference))
    first, second = rng.sample(range(len(entries)), 2)
    scored = [(score(entries[i], stats[i], preference), i) for i in (first, second)]
    return min(scored)[1]
