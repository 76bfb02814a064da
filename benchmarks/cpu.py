"""CPU accounting of the processes a benchmark measures (Linux ``/proc``).

``cpu_seconds`` adds up each live thread's time on a CPU as the scheduler counts it
(``/proc/PID/task/TID/schedstat``, in nanoseconds). ``/proc/PID/stat`` counts in clock ticks of
10 ms, and a batch of the relay scenario lasts a tenth of a second on a fast machine: the proxy's
share of it was three or four ticks, and "tokens per proxy CPU-second" moved by a third between
repeats for that alone. A thread that ended during the measurement is not in the scheduler's
sum, so processes that start and stop threads as they work (llama.cpp's) are read in ticks
(``tree_cpu_seconds``), which count the ended threads too.
"""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def ticks_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, ended threads included (in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15)


def _schedstat(pid: int, field: int) -> float:
    """One field of ``schedstat`` (nanoseconds), summed over the process's live threads."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[field])
    return total / 1e9


def cpu_seconds(pid: int) -> float:
    """Time the process's live threads have spent on a CPU, to the nanosecond; in clock ticks
    where the kernel keeps no scheduler statistics."""
    try:
        return _schedstat(pid, 0)
    except (OSError, IndexError, ValueError):
        return ticks_cpu_seconds(pid)


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
    """User + system CPU time of a process and its living descendants, in clock ticks."""
    total = 0.0
    for p in descendants(pid):
        try:
            total += ticks_cpu_seconds(p)
        except OSError:
            continue
    return total
