"""Worker reputation and the routing score."""

from __future__ import annotations

import random
from pathlib import Path

from cocoon.protocol.messages import Announce
from cocoon.proxy.reputation import FAILURES_TO_SUSPEND, SUSPEND_BASE, Reputation, WorkerStats
from cocoon.proxy.router import WorkerEntry
from cocoon.proxy.scoring import EXPLORE, choose, raw_score, score, shortlist


def test_non_streamed_answers_measure_speed_over_the_whole_request() -> None:
    rep = Reputation()
    rep.success("w", ttft=None, tokens=20, duration=2.0)
    assert rep.stats("w").tokens_per_second == 10.0 and rep.stats("w").ttft == 0.0


def test_moving_averages_and_success() -> None:
    rep = Reputation()
    rep.success("w", ttft=0.2, tokens=11, duration=1.2)
    stats = rep.stats("w")
    assert stats.ttft == 0.2 and stats.tokens_per_second == 10.0 and stats.successes == 1
    rep.success("w", ttft=0.4, tokens=11, duration=0.9)
    assert 0.2 < stats.ttft < 0.4 and stats.tokens_per_second > 10.0


def test_repeated_failures_suspend_for_growing_intervals_and_a_success_clears_them() -> None:
    rep = Reputation()
    for _ in range(FAILURES_TO_SUSPEND - 1):
        rep.failure("w", now=100.0)
    assert rep.stats("w").eligible(100.0)
    rep.failure("w", now=100.0, timeout=True)
    stats = rep.stats("w")
    assert not stats.eligible(100.0) and stats.eligible(100.0 + SUSPEND_BASE)
    assert stats.timeouts == 1 and stats.errors == FAILURES_TO_SUSPEND - 1 and stats.success_rate < 1
    rep.failure("w", now=200.0)  # the probe after the suspension fails: suspended twice as long
    assert not stats.eligible(200.0 + SUSPEND_BASE) and stats.eligible(200.0 + 2 * SUSPEND_BASE)
    rep.success("w", ttft=0.1, tokens=2, duration=0.2)
    assert stats.failures_in_row == 0 and stats.suspensions == 0


def test_a_disputed_worker_is_banned_and_it_all_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "reputation.json"
    rep = Reputation(path)
    rep.dispute("liar")
    rep.success("good", ttft=0.3, tokens=5, duration=1.0)
    rep.save()
    again = Reputation(path)
    assert again.stats("liar").banned and not again.stats("liar").eligible(0.0)
    assert again.stats("good").ttft == 0.3
    path.write_text("{not json")
    assert Reputation(path).workers == {}  # a damaged file costs the history, not the proxy


def entry(worker_id: int, price: float, inflight: int = 0) -> WorkerEntry:
    offer = Announce(model="m", engine="e", capacity=4, price_milli=round(price * 1000))
    return WorkerEntry(worker_id, f"w{worker_id}", offer, inflight=inflight)


def test_preferences_rank_price_and_speed() -> None:
    fast = WorkerStats(ttft=0.1, tokens_per_second=100)
    slow = WorkerStats(ttft=1.0, tokens_per_second=10)
    cheap_slow, dear_fast = entry(1, 1.0), entry(2, 3.0)
    assert score(cheap_slow, slow, "cheapest") < score(dear_fast, fast, "cheapest")
    assert score(dear_fast, fast, "fastest") < score(cheap_slow, slow, "fastest")
    flaky = WorkerStats(ttft=0.1, tokens_per_second=100, success_rate=0.3)
    assert score(entry(3, 1.0), fast, "balanced") < score(entry(3, 1.0), flaky, "balanced")
    # a worker not measured yet is assumed good, so that it gets traffic and gets measured
    assert raw_score(1.0, 0.0, 0.0, 0.0, 1.0, "fastest") < raw_score(1.0, 0.0, 0.1, 100.0, 1.0, "fastest")


def test_two_choices_favour_the_best_but_spread_the_load() -> None:
    entries = [entry(i, 1.0) for i in range(4)]
    stats = [WorkerStats(ttft=0.1 * (i + 1), tokens_per_second=100 / (i + 1)) for i in range(4)]
    rng = random.Random(7)
    counts = [0] * 4
    for _ in range(2000):
        counts[choose(entries, stats, "fastest", rng)] += 1
    assert counts[0] > counts[1] > counts[2] > counts[3] > 0
    # the slowest never wins a pair: what it gets is the exploration share, so it is measured again
    assert counts[3] < 2000 * EXPLORE / 4 * 1.5
    assert 2000 * 0.6 < counts[0] < 2000 * 0.85  # the fastest dominates but does not take all
    balanced = [0] * 4
    for _ in range(2000):
        balanced[choose(entries, stats, "balanced", rng)] += 1
    assert balanced[0] < 2000 * 0.6 and balanced[2] > 0  # balanced spreads more
    assert choose(entries[:1], stats[:1], "fastest", rng) == 0


def test_a_worker_measured_slow_once_is_measured_again_and_wins_back_its_traffic() -> None:
    """One slow measurement (a bad moment) must not cost a worker its traffic for ever: the
    worst of two choices never wins, so only the exploration share measures it again."""
    rep, rng = Reputation(), random.Random(3)
    entries = [entry(i, 1.0) for i in range(3)]
    real_ttft = [0.05, 0.2, 0.3]  # worker 0 is the fastest
    rep.success("w0", ttft=2.0, tokens=2, duration=2.1)  # ... but its one measurement was slow
    for key, ttft in (("w1", 0.2), ("w2", 0.3)):
        rep.success(key, ttft=ttft, tokens=2, duration=ttft + 0.1)
    counts = [0] * 3
    for _ in range(2000):
        chosen = choose(entries, [rep.stats(f"w{i}") for i in range(3)], "fastest", rng)
        counts[chosen] += 1
        rep.success(f"w{chosen}", ttft=real_ttft[chosen], tokens=2, duration=real_ttft[chosen] + 0.1)
    assert counts[0] == max(counts) and counts[0] > 2000 * 0.6, counts


def test_cheapest_goes_by_the_announced_price_without_exploring() -> None:
    entries = [entry(i, 1.0 + i) for i in range(3)]
    stats = [WorkerStats(ttft=0.1, tokens_per_second=100) for _ in range(3)]
    rng = random.Random(5)
    counts = [0] * 3
    for _ in range(2000):
        counts[choose(entries, stats, "cheapest", rng)] += 1
    assert counts[2] == 0 and counts[0] > counts[1]  # the dearest never wins a pair


def test_clients_seal_now_and_then_for_a_worker_outside_their_best() -> None:
    """The proxy routes only among the workers a request is sealed for: a worker never among a
    client's K best would never be measured again, whatever the proxy explores."""
    ranked, rng = ["best", "second", "third", "fourth", "fifth"], random.Random(11)
    counts = dict.fromkeys(ranked, 0)
    for _ in range(4000):
        chosen = shortlist(ranked, 3, "fastest", rng)
        assert len(chosen) == 3 and chosen[:2] == ["best", "second"] and len(set(chosen)) == 3
        for name in chosen:
            counts[name] += 1
    assert 0 < counts["fourth"] < 4000 * EXPLORE and 0 < counts["fifth"] < 4000 * EXPLORE
    assert counts["third"] > 4000 * (1 - 2 * EXPLORE)
    assert all(shortlist(ranked, 3, "cheapest", rng) == ranked[:3] for _ in range(200))  # prices need no measuring
    assert shortlist(ranked[:2], 3, "balanced", rng) == ranked[:2]
