"""The benchmark harness: percentiles, in-run ratios, and the files one run writes."""

from __future__ import annotations

import io
import json
import statistics
from pathlib import Path

from benchmarks.harness import Suite, percentile


def test_percentiles_interpolate() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert percentile([1.0, 2.0], 0.99) == 1.99
    assert percentile([], 0.5) != percentile([], 0.5)  # NaN for no samples


def test_ratios_come_from_the_same_run_and_are_written_out(tmp_path: Path) -> None:
    suite = Suite(tmp_path, repeats=3, stream=io.StringIO())
    suite.scenario = "demo"
    suite.record("baseline", "s", [0.002, 0.001, 0.003])
    result = suite.record("ours", "s", [0.004, 0.004, 0.005], samples=[0.001, 0.002, 0.010],
                          baseline="baseline", target="≤ 5 ms", met=True)  # fmt: skip
    assert result.ratio == 2.0 and result.p50 == 0.002
    assert result.spread == (0.005 - 0.004) / 0.004
    json_path, md_path = suite.write()
    document = json.loads(json_path.read_text())
    assert [r["metric"] for r in document["results"]] == ["baseline", "ours"]
    assert document["machine"]["cores"] >= 1
    assert "2.000 × baseline" in md_path.read_text() and "✓ met" in md_path.read_text()


def test_paired_ratios_cancel_the_drift_between_repeats(tmp_path: Path) -> None:
    suite = Suite(tmp_path, repeats=3, stream=io.StringIO())
    suite.scenario = "demo"
    # the machine slows down from repeat to repeat; ours is 0.9 × the baseline in every repeat
    suite.record("baseline", "tokens/s", [100.0, 50.0, 20.0])
    paired = suite.record("ours, paired", "tokens/s", [90.0, 45.0, 18.0], baseline="baseline", paired=True)
    unpaired = suite.record("ours", "tokens/s", [90.0, 45.0, 18.0], baseline="baseline")
    assert paired.ratio is not None and abs(paired.ratio - 0.9) < 1e-12
    assert unpaired.ratio == 45.0 / 50.0  # the same here, by the medians
    # a missing repeat: back to the ratio of the medians
    short = suite.record("ours, one repeat lost", "tokens/s", [90.0, 45.0], baseline="baseline", paired=True)
    assert short.ratio == statistics.median([90.0, 45.0]) / 50.0
    drift = suite.record("ours, drifting", "tokens/s", [95.0, 40.0, 19.0], baseline="baseline", paired=True)
    assert drift.ratio == statistics.median([0.95, 0.8, 0.95])
