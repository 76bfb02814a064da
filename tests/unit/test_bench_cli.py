"""`cocoon bench` keeps the figures of the scenarios that ran, and marks one that failed."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cocoon import cli_bench
from cocoon.cli import app


def test_a_scenario_that_fails_midway_is_marked_in_the_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = types.ModuleType("broken_scenario_double")

    def run(suite: object) -> None:  # test double: records one figure, then breaks
        suite.record("first figure", "s", [0.001])  # type: ignore[attr-defined]
        raise RuntimeError("the network did not start")

    broken.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "broken_scenario_double", broken)
    monkeypatch.setitem(cli_bench.SCENARIOS, "micro", "broken_scenario_double")
    result = CliRunner().invoke(app, ["bench", "--only", "micro", "--repeats", "1", "--out", str(tmp_path)])
    assert result.exit_code == 2
    rows = {row["metric"]: row for row in json.loads((tmp_path / "bench.json").read_text())["results"]}
    assert "first figure" in rows
    completed = rows["scenario completed"]
    assert completed["met"] is False and "the network did not start" in completed["note"]
    assert "partial" in (tmp_path / "bench.md").read_text()
