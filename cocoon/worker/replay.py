"""The request ids a worker has taken to run, so that it refuses a request sent to it again.

A proxy may send one sealed request to a worker twice (on two streams or two connections). The
answers' fresh response nonces (``cocoon.seal.response``) already keep the two apart; refusing the
second keeps the worker from running a request twice besides (a second sample of one prompt,
whose lengths and timing the proxy would see), and makes a replay an error that names itself.

Pure: no I/O, no clock. Ids of running requests are kept until they end, then among the last
``limit`` served; a request refused for want of room before it ran is forgotten, since an
honest proxy sends it again (the worker told it ``saturated``).
"""

from __future__ import annotations

from collections import OrderedDict

SERVED_REMEMBERED = 16_384  # ended requests' ids kept (16 B each, with the dict's ~100 B overhead)


class ReplayGuard:
    def __init__(self, limit: int = SERVED_REMEMBERED) -> None:
        self.limit = limit
        self._running: set[bytes] = set()  # bounded by the requests the worker takes at once
        self._served: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._running or request_id in self._served

    def claim(self, request_id: bytes) -> bool:
        """Take ``request_id`` to run; False if it is running or was served (and is remembered)."""
        if request_id in self:
            return False
        self._running.add(request_id)
        return True

    def unclaim(self, request_id: bytes) -> None:
        """Forget a claimed request that never ran (refused as saturated): it may come again."""
        self._running.discard(request_id)

    def ended(self, request_id: bytes) -> None:
        """A claimed request ran (or began to): it is served, and refused from now on. The ids
        served longest ago go first; one forgotten could be replayed, which its answer's fresh
        response nonce keeps harmless to the answer's secrecy and integrity."""
        if request_id not in self._running:
            return  # (unclaimed: refused before it ran)
        self._running.discard(request_id)
        self._served[request_id] = None
        while len(self._served) > self.limit:
            self._served.popitem(last=False)
