"""The benchmarks' CPU accounting: to the nanosecond, ended threads and whole process trees
included."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

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


def test_a_thread_that_ended_still_counts() -> None:
    # llama.cpp starts and stops threads as it works, and so does an event loop's executor
    import threading

    before = cpu.cpu_seconds(os.getpid())
    thread = threading.Thread(target=burn, args=(0.2,))
    thread.start()
    thread.join()
    assert cpu.cpu_seconds(os.getpid()) - before >= 0.19


@contextlib.contextmanager
def child_that_burnt(seconds: float) -> Iterator[tuple[int, float]]:
    """A child process that has used ``seconds`` of CPU and waits: its pid and the CPU time it
    counted itself."""
    script = (
        f"import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n"
        "print(time.process_time(), flush=True)\ninput()"
    )
    with subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as child:
        try:
            assert child.stdout is not None
            yield child.pid, float(child.stdout.readline())
        finally:
            child.kill()


def test_another_processs_time_is_read_as_precisely() -> None:
    with child_that_burnt(0.123) as (pid, own):
        assert own <= cpu.cpu_seconds(pid) < own + 0.005


def test_without_a_cpu_clock_it_counts_in_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(clock: int) -> float:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(cpu.time, "clock_gettime", unsupported)
    # (read between two readings of the ticks: a tick may pass between any two of them)
    before = cpu.ticks_cpu_seconds(os.getpid())
    counted = cpu.cpu_seconds(os.getpid())
    assert before <= counted <= cpu.ticks_cpu_seconds(os.getpid())


def test_a_process_tree_counts_its_children() -> None:
    with child_that_burnt(0.3) as (pid, own):
        assert pid in cpu.descendants(os.getpid())
        assert cpu.tree_cpu_seconds(os.getpid()) - cpu.cpu_seconds(os.getpid()) >= own
