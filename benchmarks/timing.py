"""Timing helper shared by the benchmarks: the median of several timed batches."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def per_call(fn: Callable[[], object], calls: int, batches: int = 7) -> float:
    """Seconds per call: the median over ``batches`` runs of ``calls`` calls each."""
    timings = []
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        timings.append((time.perf_counter() - start) / calls)
    return statistics.median(timings)
