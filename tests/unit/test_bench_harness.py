"""The benchmark harness: percentiles, in-run ratios, and the files one run writes."""

from __future__ import annotations

import io
import json
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
