"""When to try an on-chain operation again after it failed: per channel, the wait doubles from
``first`` up to ``most`` with each failure in a row, and a success resets it. A redeem the chain
refuses costs fees every time it is sent, and a settlement round comes every few seconds."""

from __future__ import annotations

from collections.abc import Hashable


class Backoff:
    def __init__(self, first: float, most: float) -> None:
        self.first = first
        self.most = most
        self._waits: dict[Hashable, tuple[float, float]] = {}  # key → (not before, last wait)

    def ready(self, key: Hashable, now: float) -> bool:
        entry = self._waits.get(key)
        return entry is None or now >= entry[0]

    def failed(self, key: Hashable, now: float) -> float:
        """Note a failure; the seconds until the next try."""
        last = self._waits.get(key, (0.0, 0.0))[1]
        wait = min(self.most, max(self.first, 2 * last))
        self._waits[key] = (now + wait, wait)
        return wait

    def succeeded(self, key: Hashable) -> None:
        self._waits.pop(key, None)
