"""Worker reputation (pure: time comes in as ``now``): measured speed and reliability.

Per worker, exponentially weighted time to first token and tokens per second, a success rate,
error and timeout counts, and usage-record disputes. Repeated failures suspend a worker for a
growing interval (after which one probe request may test it); a worker caught signing usage
that does not match what it sent is banned. Keyed by the worker's public key (hex), so it
survives reconnects, and saved to a JSON file, so it survives proxy restarts.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from cocoon.protocol.messages import MAX_TOKENS_PER_SECOND

ALPHA = 0.2  # weight of the newest sample in the moving averages
FAILURES_TO_SUSPEND = 3
SUSPEND_BASE = 5.0  # seconds; doubles with every suspension in a row
SUSPEND_MAX = 600.0
# What a worker list may carry (the client drops a connection whose message it cannot decode):
# a speed computed from the token counts a worker claims, or a value read back from a damaged
# file, is held within these.
MAX_COUNT = 2**40
MAX_SECONDS = 1e6  # a time to first token, at most
MAX_UNIX_TIME = 2**40  # a suspension's end, at most


@dataclass
class WorkerStats:
    ttft: float = 0.0  # seconds, moving average (0 = not measured yet)
    tokens_per_second: float = 0.0
    success_rate: float = 1.0  # moving average of 1 (success) / 0 (failure)
    successes: int = 0
    errors: int = 0
    timeouts: int = 0
    disputes: int = 0
    failures_in_row: int = 0
    suspensions: int = 0
    suspended_until: float = 0.0
    banned: bool = False

    def _average(self, current: float, sample: float) -> float:
        return sample if current == 0.0 else (1 - ALPHA) * current + ALPHA * sample

    def eligible(self, now: float) -> bool:
        return not self.banned and now >= self.suspended_until


class Reputation:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.workers: dict[str, WorkerStats] = {}
        if path is not None and path.exists():
            self._load(path)

    def stats(self, key: str) -> WorkerStats:
        return self.workers.setdefault(key, WorkerStats())

    def success(self, key: str, ttft: float | None, tokens: int, duration: float) -> None:
        """A completed request. ``ttft`` is None for a non-streamed answer (its first chunk is
        the whole answer), whose speed is then taken over the whole duration."""
        stats = self.stats(key)
        stats.successes += 1
        stats.failures_in_row = 0
        stats.suspensions = 0
        stats.success_rate = stats._average(stats.success_rate, 1.0)
        # (the token count is the worker's claim: a huge one over a short time must not make a
        # speed that a worker list cannot carry)
        if ttft is None:
            if tokens > 0 and duration > 0:
                speed = min(MAX_TOKENS_PER_SECOND, tokens / duration)
                stats.tokens_per_second = stats._average(stats.tokens_per_second, speed)
            return
        if ttft > 0:
            stats.ttft = stats._average(stats.ttft, min(MAX_SECONDS, ttft))
        generating = duration - ttft
        if tokens > 1 and generating > 0:
            speed = min(MAX_TOKENS_PER_SECOND, (tokens - 1) / generating)
            stats.tokens_per_second = stats._average(stats.tokens_per_second, speed)

    def failure(self, key: str, now: float, *, timeout: bool = False) -> None:
        stats = self.stats(key)
        if timeout:
            stats.timeouts += 1
        else:
            stats.errors += 1
        stats.success_rate = (1 - ALPHA) * stats.success_rate
        stats.failures_in_row += 1
        if stats.failures_in_row >= FAILURES_TO_SUSPEND:
            stats.suspensions += 1
            # (the exponent is capped: after a thousand suspensions in a row, a week of failing,
            # the power would be too large for a float)
            doubling = 2 ** min(stats.suspensions - 1, 32)
            stats.suspended_until = now + min(SUSPEND_MAX, SUSPEND_BASE * doubling)
            stats.failures_in_row = FAILURES_TO_SUSPEND - 1  # a failed probe suspends it again

    def dispute(self, key: str) -> None:
        """The worker signed usage that does not match what it sent: banned at this proxy."""
        stats = self.stats(key)
        stats.disputes += 1
        stats.banned = True

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({key: asdict(stats) for key, stats in self.workers.items()}))
        os.replace(tmp, self.path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
            self.workers = {str(key): _stats_from_file(value) for key, value in data.items()}
        except (ValueError, TypeError, AttributeError):
            self.workers = {}  # a damaged file costs the history, not the proxy


# the bound of each number field of ``WorkerStats`` (its lower bound is 0)
LIMITS: dict[str, float] = {
    "ttft": MAX_SECONDS,
    "tokens_per_second": MAX_TOKENS_PER_SECOND,
    "success_rate": 1.0,
    "suspended_until": MAX_UNIX_TIME,
}


def _stats_from_file(value: dict[str, object]) -> WorkerStats:
    """A worker's stats as saved, each field within what this code writes: a damaged or edited
    file must not bring back a value that breaks the arithmetic or a worker list (a field that
    is no finite number gets its default; one out of range, the nearest bound)."""
    stats = WorkerStats()
    for field in fields(WorkerStats):
        saved = value.get(field.name)
        default = getattr(stats, field.name)
        if isinstance(default, bool):
            setattr(stats, field.name, saved is True)
        elif isinstance(saved, (int, float)) and not isinstance(saved, bool) and math.isfinite(saved):
            bounded = min(max(saved, 0), LIMITS.get(field.name, MAX_COUNT))
            setattr(stats, field.name, float(bounded) if isinstance(default, float) else int(bounded))
    return stats
