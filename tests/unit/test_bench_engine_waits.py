"""The overhead scenario's 4-stream "time to first token added": each request's wait for the one
engine busy with the others is told from what the network adds."""

from __future__ import annotations

import time

from benchmarks.overhead import EngineRun, engine_waits
from benchmarks.overhead_servers import Trace


def trace(start: float, first: float) -> Trace:
    t = Trace(start=start)
    t.add("x", first)
    return t


def test_a_queued_request_is_charged_only_what_the_engine_did_not_spend_on_the_others() -> None:
    offset = time.perf_counter() - time.monotonic()
    # three requests sent at 0; the engine takes them one after the other, 2 ms of network before
    # the first and 3 ms of hand-over between them; each takes 100 ms, its first chunk after 10 ms
    runs = [
        EngineRun(0.010, 0.002 - offset, 0.102 - offset),
        EngineRun(0.010, 0.105 - offset, 0.205 - offset),
        EngineRun(0.010, 0.208 - offset, 0.308 - offset),
    ]
    traces = [trace(0.0, 0.218 + 0.001), trace(0.0, 0.012 + 0.001), trace(0.0, 0.115 + 0.001)]
    engine_waits(traces, runs)
    first, second, third = sorted(traces, key=lambda t: t.times[0])
    assert [t.engine_first for t in (first, second, third)] == [0.010] * 3
    assert abs(first.engine_wait - 0.0) < 1e-9
    assert abs(second.engine_wait - 0.100) < 1e-9
    assert abs(third.engine_wait - 0.200) < 1e-9
    added = [t.ttft - t.engine_wait - t.engine_first for t in (first, second, third)]
    # 2 ms before the engine + 1 ms after its first chunk; the queued ones also their hand-overs
    assert [round(a * 1e3, 6) for a in added] == [3.0, 6.0, 9.0]


def test_a_run_that_began_before_its_request_was_sent_is_not_taken_for_it() -> None:
    offset = time.perf_counter() - time.monotonic()
    runs = [EngineRun(0.010, -1.0 - offset, -0.9 - offset)]
    traces = [trace(0.0, 0.05)]
    engine_waits(traces, runs)
    assert traces[0].engine_first is None and traces[0].engine_wait is None


def test_a_run_pairs_only_with_a_request_under_way_while_it_ran() -> None:
    run = EngineRun(first=0.05, start=10.0, end=10.5)
    assert run.within(9.9, 10.6)
    assert not run.within(10.1, 10.6)  # the engine took it before this request was sent
    assert not run.within(9.9, 10.4)  # or finished it after this request was answered
