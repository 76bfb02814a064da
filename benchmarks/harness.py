"""What every benchmark scenario shares: latency distributions, repeated runs, in-run ratios,
progress lines, and the JSON and Markdown results of one ``cocoon bench`` run.

A scenario is a module with ``run(suite: Suite) -> None`` that measures, and calls
``suite.record`` once per figure. Baselines are measured in the same run, and ratios are
computed here from those same-run numbers: the machines are shared and noisy.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any


def percentile(samples: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation; NaN for no samples."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Distribution:
    p50: float
    p90: float
    p99: float
    count: int

    @classmethod
    def of(cls, samples: list[float]) -> Distribution:
        return cls(percentile(samples, 0.5), percentile(samples, 0.9), percentile(samples, 0.99), len(samples))


@dataclass
class Result:
    scenario: str
    metric: str
    unit: str
    value: float  # the median over repeats
    runs: list[float] = field(default_factory=list)  # one value per repeat
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    baseline: str = ""  # the metric this one is compared with, measured in the same run
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def spread(self) -> float:
        """(max − min) / median over the repeats: how much the figure moved within this run."""
        if len(self.runs) < 2 or not self.value:
            return 0.0
        return (max(self.runs) - min(self.runs)) / abs(self.value)


class Suite:
    def __init__(self, out_dir: Path, *, repeats: int = 3, quick: bool = False, stream: Any = None) -> None:
        self.out_dir = out_dir
        self.repeats = repeats
        self.quick = quick
        self.results: list[Result] = []
        self.started = time.monotonic()
        self._stream = stream or sys.stderr
        self.scenario = ""

    def progress(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.1f} s] {self.scenario}: {message}", file=self._stream, flush=True)

    def find(self, metric: str, scenario: str | None = None) -> Result | None:
        for result in self.results:
            if result.metric == metric and (scenario is None or result.scenario == scenario):
                return result
        return None

    def record(
        self,
        metric: str,
        unit: str,
        runs: list[float],
        *,
        samples: list[float] | None = None,
        baseline: str = "",
        target: str = "",
        met: bool | None = None,
        note: str = "",
        scenario: str | None = None,
        paired: bool = False,
    ) -> Result:
        """One figure: its value per repeat (``runs``), optionally its latency ``samples`` (all
        repeats pooled, for p50/p90/p99), and the baseline it is compared with, by name.

        ``paired``: repeat i of this figure and of its baseline were measured side by side (taking
        turns within the same minute), so the ratio is the median of the per-repeat ratios; the
        machine's speed, which drifts between repeats, then cancels out. Otherwise (or when a
        repeat is missing on either side) it is the ratio of the medians."""
        value = statistics.median(runs) if runs else float("nan")
        result = Result(scenario or self.scenario, metric, unit, value, list(runs), target=target, met=met, note=note)
        if samples:
            dist = Distribution.of(samples)
            result.p50, result.p90, result.p99 = dist.p50, dist.p90, dist.p99
        if baseline:
            base = self.find(baseline)
            if base is not None and base.value:
                result.baseline = baseline
                if paired and runs and len(base.runs) == len(runs) and all(base.runs):
                    result.ratio = statistics.median(r / b for r, b in zip(runs, base.runs, strict=True))
                else:
                    result.ratio = value / base.value
        self.results.append(result)
        self.progress(
            f"{metric}: {format_value(value, unit)}" + (f" ({result.ratio:.3f} × {baseline})" if result.ratio else "")
        )
        return result

    # --- output ---

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": machine(),
            "repeats": self.repeats,
            "quick": self.quick,
            "duration_s": round(time.monotonic() - self.started, 1),
            "results": [{**asdict(r), "spread": round(r.spread, 4)} for r in self.results],
        }

    def markdown(self) -> str:
        lines = [
            "| scenario | metric | value | p50 / p90 / p99 | spread | ratio | target |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.results:
            dist = ""
            if r.p50 is not None:
                dist = " / ".join(format_value(v, r.unit) for v in (r.p50, r.p90 or 0.0, r.p99 or 0.0))
            ratio = f"{r.ratio:.3f} × {r.baseline}" if r.ratio is not None else ""
            mark = "" if r.met is None else (" ✓ met" if r.met else " ✗ missed")
            target = f"{r.target}{mark}" + (f" ({r.note})" if r.note else "")
            spread = f"±{r.spread * 50:.0f} %" if r.spread else ""
            value = format_value(r.value, r.unit)
            lines.append(f"| {r.scenario} | {r.metric} | {value} | {dist} | {spread} | {ratio} | {target} |")
        return "\n".join(lines) + "\n"

    def write(self) -> tuple[Path, Path]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        json_path = self.out_dir / "bench.json"
        md_path = self.out_dir / "bench.md"
        json_path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        info = machine()
        header = (
            f"Machine: {info['cpu']} ({info['cores']} cores), {info['system']}, Python {info['python']}; "
            f"{self.repeats} repeats per figure; run took {time.monotonic() - self.started:.0f} s.\n\n"
        )
        md_path.write_text(header + self.markdown())
        return json_path, md_path


def format_value(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "n/a"
    if unit == "s":
        if abs(value) < 1e-3:
            return f"{value * 1e6:.1f} µs"
        if abs(value) < 1:
            return f"{value * 1e3:.2f} ms"
        return f"{value:.2f} s"
    if unit in ("tokens/s", "requests/s"):
        return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    if unit == "x":
        return f"{value:.3f} ×"
    return f"{value:g} {unit}".strip()


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("cocoon", "llama-cpp-python", "cryptography", "msgspec", "uvicorn", "httpx", "pytoniq-core"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu,
        # the CPUs this run may use (a run pinned to some of a machine's cores counts those)
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": versions,
    }


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
