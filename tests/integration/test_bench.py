"""``cocoon bench`` runs end to end: a quick pass of the relay and request-rate scenarios
starts real networks, prints progress and writes its JSON and Markdown results. Only that the
figures exist and are sane is checked here; whether targets are met is for the benchmark's own
report, since timings on a shared test machine say nothing."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_quick_bench_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results"
    command = ["bench", "--quick", "--repeats", "1", "--only", "relay", "--only", "rate", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "cocoon", *command],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COCOON_HOME": str(tmp_path / "home")},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "relay: half load:" in done.stderr  # progress while it runs

    results = json.loads((out / "bench.json").read_text())
    rows = {(row["scenario"], row["metric"]): row for row in results["results"]}
    for key in [
        ("relay", "64 streams: per proxy CPU-second"),
        ("relay", "half load: added inter-token latency (p99 per run)"),
        ("relay", "low load, 1 stream: added inter-token latency (p99 per run)"),
        ("rate", "payments on: per proxy CPU-second"),
    ]:
        assert key in rows, f"{key} missing from {sorted(rows)}"
        assert math.isfinite(rows[key]["value"]), rows[key]
    assert rows[("relay", "64 streams: per proxy CPU-second")]["value"] > 0
    assert rows[("rate", "payments on: per proxy CPU-second")]["ratio"] > 0  # against payments off, same run
    half = rows[("relay", "half load: added inter-token latency (p99 per run)")]
    assert half["target"] == "p99 ≤ 2 ms" and isinstance(half["met"], bool)
    failed = rows[("rate", "payments on: failed requests")]
    assert failed["value"] == 0 and failed["met"] is True
    assert "no stream failed" in half["note"]
    errors = re.findall(r"(\d+) errors", done.stderr)
    assert errors and set(errors) == {"0"}, done.stderr[-3000:]  # every batch answered every request
    table = (out / "bench.md").read_text()
    assert "half load: added inter-token latency" in table and "payments on" in table
