"""The benchmarks' CPU accounting: precise where the scheduler counts, whole trees in ticks."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from benchmarks import cpu


def burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_a_few_milliseconds_of_cpu_are_counted_to_well_under_a_clock_tick() -> None:
    # clock ticks (/proc/PID/stat) would count 5 ms as 0 or 10 ms
    misses = []
    for _ in range(5):
        before, own_before = cpu.cpu_seconds(os.getpid()), time.process_time()
        burn(0.005)
        counted, burnt = cpu.cpu_seconds(os.getpid()) - before, time.process_time() - own_before
        misses.append(abs(counted - burnt))
    assert min(misses) < 0.001


def test_without_scheduler_statistics_it_counts_in_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(pid: int, field: int) -> float:
        raise FileNotFoundError("no schedstat")

    monkeypatch.setattr(cpu, "_schedstat", missing)
    assert cpu.cpu_seconds(os.getpid()) == pytest.approx(cpu.ticks_cpu_seconds(os.getpid()), abs=0.02)
    assert cpu.runqueue_seconds(os.getpid()) != cpu.runqueue_seconds(os.getpid())  # NaN


def test_a_process_tree_counts_its_children() -> None:
    script = (
        "import sys, time\nend = time.process_time() + 0.3\n"
        "while time.process_time() < end: pass\nprint('done', flush=True)\nsys.stdin.read()"
    )
    with subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as child:
        try:
            assert child.stdout is not None and child.stdout.readline() == b"done\n"
            assert child.pid in cpu.descendants(os.getpid())
            others = cpu.tree_cpu_seconds(os.getpid()) - cpu.ticks_cpu_seconds(os.getpid())
            assert others >= 0.25
        finally:
            child.kill()
