"""The overhead scenario's 'no slower than nginx and LiteLLM' verdict: it holds only where nginx
was measured and every baseline's own log shows the requests sent through it."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness import Result, Suite
from benchmarks.overhead import Scenario


def scenario(tmp_path: Path, *, logged: dict[str, bool], available: str = "bcde") -> Scenario:
    test = Scenario(Suite(tmp_path, repeats=2, stream=io.StringIO()), tmp_path)

    async def send(body: bytes) -> Any:
        raise AssertionError("not sent in this test")

    for key, config in test.configs.items():
        if key in available or key == "a":
            config.send = send
            config.single = [{0: None}]  # type: ignore[dict-item]
        config.logged = logged.get(key)
    return test


def figures(faster: bool) -> dict[tuple[str, str], Result]:
    ours = [0.080, 0.081] if faster else [0.090, 0.091]
    values = {}
    for key, runs in (("e", ours), ("c", [0.085, 0.086]), ("d", [0.095, 0.096])):
        values[key, "time to first token, 1 stream"] = Result("overhead", "ttft", "s", runs[0], runs)
    return values


def verdict(test: Scenario) -> Result:
    return next(r for r in test.suite.results if r.metric == "(e) slower than (c), (d): figures")


ALL = {"b": True, "c": True, "d": True, "e": True}


def test_faster_than_both_with_every_log_showing_its_requests_is_met(tmp_path: Path) -> None:
    test = scenario(tmp_path, logged=ALL)
    test.compare(figures(faster=True))
    assert verdict(test).met is True and verdict(test).value == 0


def test_slower_than_nginx_is_missed(tmp_path: Path) -> None:
    test = scenario(tmp_path, logged=ALL)
    test.compare(figures(faster=False))
    assert verdict(test).met is False and verdict(test).value == 1


@pytest.mark.parametrize("unlogged", ["b", "c", "d"])
def test_a_baseline_whose_log_does_not_show_the_requests_proves_nothing(tmp_path: Path, unlogged: str) -> None:
    test = scenario(tmp_path, logged={**ALL, unlogged: False})
    test.compare(figures(faster=True))
    assert verdict(test).met is False
    assert f"({unlogged}) not shown in the path by its log" in verdict(test).note


def test_without_nginx_there_is_no_verdict_to_meet(tmp_path: Path) -> None:
    test = scenario(tmp_path, logged=ALL, available="bde")
    test.compare(figures(faster=True))
    assert verdict(test).met is False and "(c) not available" in verdict(test).note


def test_without_litellm_nginx_alone_decides(tmp_path: Path) -> None:
    # LiteLLM is compared with where it installs
    test = scenario(tmp_path, logged=ALL, available="bce")
    test.compare(figures(faster=True))
    assert verdict(test).met is True and "(d) not available" in verdict(test).note


def test_the_difference_to_nginx_is_paired_by_prompt(tmp_path: Path) -> None:
    """Each prompt's time to first token through (e) less the same prompt's through (c), within
    each repeat: prompts of different lengths no longer move the figure as a median over them does."""

    class Timed:
        def __init__(self, ttft: float) -> None:
            self.ttft = ttft

    test = scenario(tmp_path, logged=ALL)
    c, e = test.configs["c"], test.configs["e"]
    # two repeats; prompt 1 short, prompt 2 long; (e) 2 ms behind (c) on each, 1 ms on the third
    c.probes, c.single = [{1: Timed(0.070)}, {1: Timed(0.072)}], [{2: Timed(0.090), 3: Timed(0.080)}, {2: Timed(0.091)}]
    e.probes, e.single = [{1: Timed(0.072)}, {1: Timed(0.074)}], [{2: Timed(0.092), 3: Timed(0.081)}, {2: Timed(0.093)}]
    test.paired_against_nginx()
    (row,) = [r for r in test.suite.results if r.metric.startswith("(e) − (c)")]
    assert row.runs == pytest.approx([0.002, 0.002]) and row.value == pytest.approx(0.002)
    assert row.p50 == pytest.approx(0.002) and row.p90 is not None  # over the 5 prompts' differences
