"""``cocoon bench``: the benchmark suite of ``benchmarks/``, one scenario after another, with
progress lines, a JSON result file and a Markdown table (docs/benchmarks.md has the method)."""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

from cocoon.cli_tools import fail

REPO = Path(__file__).resolve().parents[1]

# name → module in benchmarks/, in the order the default suite runs them
SCENARIOS = {
    "micro": "benchmarks.micro",
    "overhead": "benchmarks.overhead",
    "relay": "benchmarks.relay",
    "rate": "benchmarks.request_rate",
    "scaling": "benchmarks.scaling",
}


def bench(
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help=f"Run only this scenario; repeat it. One of: {', '.join(SCENARIOS)}."),
    ] = None,
    repeats: Annotated[int, typer.Option(help="Runs of each measurement; the spread between them is reported.")] = 3,
    quick: Annotated[bool, typer.Option("--quick", help="Fewer and shorter runs: a smoke test of the suite.")] = False,
    out: Annotated[Path, typer.Option(help="Directory for bench.json and bench.md.")] = Path("bench-results"),
) -> None:
    """Measure what the network costs over the bare engine (and the baselines, in the same run)."""
    if not (REPO / "benchmarks" / "harness.py").exists():
        fail("the benchmarks are not here: run `cocoon bench` from a checkout of the project")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from benchmarks.harness import Suite

    names = only or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        fail(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    if repeats < 1:
        fail("--repeats must be at least 1")
    suite = Suite(out, repeats=1 if quick else repeats, quick=quick)
    failed = []
    for name in names:
        suite.scenario = name
        suite.progress("starting")
        try:
            importlib.import_module(SCENARIOS[name]).run(suite)
        except Exception as exc:  # noqa: BLE001 - one broken scenario must not lose the others' figures
            failed.append(name)
            suite.progress(f"FAILED: {exc!r}")
            traceback.print_exc()
            # in the results too: the figures it recorded before failing are partial
            why = f"FAILED: {type(exc).__name__}: {str(exc)[:200]}; its figures above are partial"
            suite.record("scenario completed", "", [], target="yes", met=False, note=why)
    json_path, md_path = suite.write()
    typer.echo(md_path.read_text())
    typer.echo(f"results: {json_path} and {md_path}", err=True)
    if failed:
        fail(f"scenario(s) failed: {', '.join(failed)}")
