"""Which worker gets a request (pure state: no I/O, no clock).

Least-loaded routing among live workers that serve the model, within each worker's announced
capacity. The market, prices and reputation plug in here later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cocoon.protocol.errors import ErrorCode
from cocoon.protocol.messages import MAX_MODELS, Announce, ModelInfo

# Models that workers served and none serves now are remembered (a request for one is told
# ``no_worker``, not ``unknown_model``), this many at most, the one gone longest forgotten first:
# a worker announcing name after name would otherwise grow the model list without end.
MAX_REMEMBERED = 256


class RouteError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class WorkerEntry:
    worker_id: int
    label: str
    offer: Announce
    key: str = ""  # the worker's public key (hex): what its reputation is kept under
    inflight: int = 0
    draining: bool = False
    # held while the worker redials to renew its attestation: takes no requests, which wait for
    # its fresh connection instead of failing (``Router.hold``)
    renewing: bool = False
    served: int = field(default=0)
    share: int | None = None  # what the worker last said it takes from us now (``Capacity``)

    @property
    def capacity(self) -> int:
        """Requests this worker takes from this proxy at once: as announced, or, while the
        worker is full (with other proxies' requests too), what it last said it holds for us."""
        return self.offer.capacity if self.share is None else min(self.share, self.offer.capacity)

    @property
    def load(self) -> float:
        capacity = self.capacity
        return self.inflight / capacity if capacity else math.inf

    @property
    def retired(self) -> bool:
        """Takes no more requests, and no fresh connection of its worker is awaited (``hold``)."""
        return self.draining and not self.renewing

    @property
    def has_room(self) -> bool:
        return not self.draining and self.inflight < self.capacity


class Router:
    def __init__(self, known_models: list[str] | None = None) -> None:
        self.workers: dict[int, WorkerEntry] = {}
        self.configured: frozenset[str] = frozenset(known_models or ())
        self._gone: dict[str, None] = {}  # models no worker serves any more, gone longest first

    @property
    def known_models(self) -> set[str]:
        """The models configured, served now, or served before (``MAX_REMEMBERED`` of those)."""
        return {*self.configured, *self._gone, *(w.offer.model for w in self.workers.values())}

    def announce(self, worker_id: int, label: str, offer: Announce, key: str = "") -> WorkerEntry:
        entry = self.workers.get(worker_id)
        if entry is None:
            entry = self.workers[worker_id] = WorkerEntry(worker_id, label, offer, key)
        else:
            before, entry.offer = entry.offer.model, offer
            self._left(before)
        self._gone.pop(offer.model, None)
        return entry

    def _left(self, model: str) -> None:
        """A worker stopped serving ``model``: remember it if no other serves it."""
        if model in self.configured or any(w.offer.model == model for w in self.workers.values()):
            return
        self._gone.pop(model, None)
        self._gone[model] = None
        while len(self._gone) > MAX_REMEMBERED:
            del self._gone[next(iter(self._gone))]

    def set_capacity(self, worker_id: int, share: int) -> bool:
        """The worker's share for us now; True when it has more room than before."""
        entry = self.workers.get(worker_id)
        if entry is None:
            return False
        before = entry.capacity
        entry.share = share
        return entry.capacity > before

    def remove(self, worker_id: int) -> None:
        entry = self.workers.pop(worker_id, None)
        if entry is not None:
            self._left(entry.offer.model)

    def drain(self, worker_id: int) -> None:
        if entry := self.workers.get(worker_id):
            entry.draining = True
            entry.renewing = False

    def hold(self, worker_id: int) -> None:
        """The connection takes no more requests, and its worker's fresh one is on its way: until
        it comes (or this one closes), requests for the worker wait for room (``SATURATED``),
        and the worker is still listed."""
        if entry := self.workers.get(worker_id):
            entry.draining = entry.renewing = True

    def resume(self, worker_id: int) -> None:
        """A connection held for its worker's fresh one (``hold``) takes requests again."""
        if (entry := self.workers.get(worker_id)) and entry.renewing:
            entry.draining = entry.renewing = False

    def serving(self, model: str) -> list[WorkerEntry]:
        """Live workers for ``model``, least loaded first; raises ``RouteError`` when none."""
        live = [w for w in self.workers.values() if w.offer.model == model and not w.retired]
        if not live:
            if model in self.known_models:
                raise RouteError(ErrorCode.NO_WORKER, f"no worker is available for model {model!r}")
            raise RouteError(ErrorCode.UNKNOWN_MODEL, f"The model `{model}` does not exist")
        return sorted(live, key=lambda w: (w.load, w.served, w.worker_id))

    def pick(
        self, model: str, exclude: frozenset[int] = frozenset(), only: frozenset[int] | None = None
    ) -> WorkerEntry:
        """The least-loaded worker with room for ``model`` (among ``only``, if given: the
        workers the request is sealed for); raises ``RouteError``."""
        return min(self.eligible(model, exclude, only), key=lambda w: (w.load, w.served, w.worker_id))

    def eligible(
        self, model: str, exclude: frozenset[int] = frozenset(), only: frozenset[int] | None = None
    ) -> list[WorkerEntry]:
        """Every worker with room for ``model`` (among ``only``, if given); raises ``RouteError``
        when there is none, saying whether the model is unknown, unserved or saturated."""
        serving = [
            w
            for w in self.workers.values()
            if w.offer.model == model and w.worker_id not in exclude and (only is None or w.worker_id in only)
        ]
        if not serving:
            if model in self.known_models:
                raise RouteError(ErrorCode.NO_WORKER, f"no worker is available for model {model!r}")
            raise RouteError(ErrorCode.UNKNOWN_MODEL, f"The model `{model}` does not exist")
        free = [w for w in serving if w.has_room]
        if not free:
            if all(w.retired for w in serving):
                raise RouteError(ErrorCode.NO_WORKER, f"no worker is available for model {model!r}")
            raise RouteError(ErrorCode.SATURATED, f"all workers for model {model!r} are busy")
        return free

    def acquire(self, entry: WorkerEntry) -> None:
        entry.inflight += 1
        entry.served += 1

    def release(self, entry: WorkerEntry) -> None:
        entry.inflight = max(0, entry.inflight - 1)

    def models(self) -> list[ModelInfo]:
        infos: dict[str, ModelInfo] = {m: ModelInfo(id=m, workers=0, capacity=0) for m in self.known_models}
        for w in self.workers.values():
            if w.retired:  # (one held for its fresh connection still counts)
                continue
            old = infos[w.offer.model]
            infos[w.offer.model] = ModelInfo(
                id=w.offer.model,
                workers=old.workers + 1,
                capacity=old.capacity + w.capacity,
                max_tokens=max(old.max_tokens, w.offer.max_tokens),
            )
        listed = [infos[m] for m in sorted(infos)]
        if len(listed) > MAX_MODELS:
            # a longer list is one the client cannot decode (it drops the connection): the models
            # served now first, then the configured ones
            kept = sorted(listed, key=lambda i: (not i.workers, i.id not in self.configured, i.id))[:MAX_MODELS]
            listed = sorted(kept, key=lambda i: i.id)
        return listed
