"""CPU accounting of the processes a benchmark measures (Linux).

``cpu_seconds`` reads a process's CPU-time clock, the one ``clock_getcpuclockid(3)`` names:
the scheduler's count, to the nanosecond, of all its threads, those that have ended too.
``/proc/PID/stat`` counts in clock ticks of 10 ms, and a batch of the relay scenario lasts a
tenth of a second on a fast machine: the proxy's share of it was three or four ticks, and
"tokens per proxy CPU-second" moved by a third between repeats for that alone. (The threads'
own ``schedstat`` sums are as precise but lose the threads that ended: llama.cpp's, and the
load generator's executor threads between two batches.)
"""

from __future__ import annotations

import os
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def ticks_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, ended threads included (in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15)


def _process_clock(pid: int) -> int:
    """The clock id of a process's CPU time (Linux: ``MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)``,
    what glibc's ``clock_getcpuclockid`` returns)."""
    return ((~pid) << 3) | 2


def cpu_seconds(pid: int) -> float:
    """CPU time of a process so far, all its threads, to the nanosecond; in clock ticks where
    its CPU-time clock cannot be read."""
    try:
        return time.clock_gettime(_process_clock(pid))
    except OSError:
        return ticks_cpu_seconds(pid)


def _schedstat(pid: int, field: int) -> float:
    """One field of ``schedstat`` (nanoseconds), summed over the process's live threads."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[field])
    return total / 1e9


def runqueue_seconds(pid: int) -> float:
    """Time the process's threads have spent runnable but waiting for a CPU; NaN where the
    kernel keeps no such statistics."""
    try:
        return _schedstat(pid, 1)
    except (OSError, IndexError, ValueError):
        return float("nan")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    found = [pid]
    for tid_dir in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (tid_dir / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found.extend(descendants(int(child)))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (``cpu_seconds``) of a process and its living descendants."""
    total = 0.0
    for p in descendants(pid):
        try:
            total += cpu_seconds(p)
        except OSError:
            continue
    return total
