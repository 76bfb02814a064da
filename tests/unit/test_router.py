"""Least-loaded routing within announced capacity."""

from __future__ import annotations

from collections import Counter

import pytest

from cocoon.protocol.errors import ErrorCode
from cocoon.protocol.messages import MAX_MODELS, Announce, ModelInfo, ModelList, decode_message, encode_message
from cocoon.proxy.router import MAX_REMEMBERED, RouteError, Router


def offer(model: str = "m", capacity: int = 2, max_tokens: int = 2048) -> Announce:
    return Announce(model=model, engine="llama_cpp", capacity=capacity, max_tokens=max_tokens)


def route_error(router: Router, model: str, exclude: frozenset[int] = frozenset()) -> ErrorCode:
    with pytest.raises(RouteError) as info:
        router.pick(model, exclude)
    return info.value.code


def test_single_worker_is_picked() -> None:
    router = Router()
    entry = router.announce(1, "w1", offer())
    assert router.pick("m") is entry
    assert entry.label == "w1"


def test_least_loaded_worker_is_picked() -> None:
    router = Router()
    a = router.announce(1, "a", offer(capacity=4))
    b = router.announce(2, "b", offer(capacity=4))
    router.acquire(a)
    router.acquire(a)
    router.acquire(b)
    assert router.pick("m") is b
    router.acquire(b)
    router.acquire(b)
    assert router.pick("m") is a


def test_load_is_relative_to_capacity() -> None:
    router = Router()
    small = router.announce(1, "small", offer(capacity=2))
    big = router.announce(2, "big", offer(capacity=10))
    router.acquire(small)  # 1/2 busy
    for _ in range(3):
        router.acquire(big)  # 3/10 busy
    assert router.pick("m") is big
    assert small.load == 0.5
    assert big.load == pytest.approx(0.3)


def test_ties_spread_the_work() -> None:
    router = Router()
    entries = [router.announce(i, f"w{i}", offer(capacity=1)) for i in (1, 2, 3)]
    picks = []
    for _ in range(6):  # one request at a time: every worker is idle at each pick
        entry = router.pick("m")
        router.acquire(entry)
        picks.append(entry.worker_id)
        router.release(entry)
    assert Counter(picks) == {1: 2, 2: 2, 3: 2}
    assert [e.served for e in entries] == [2, 2, 2]


def test_concurrent_requests_fill_workers_evenly() -> None:
    router = Router()
    for i in (1, 2):
        router.announce(i, f"w{i}", offer(capacity=2))
    picked = []
    for _ in range(4):
        entry = router.pick("m")
        router.acquire(entry)
        picked.append(entry.worker_id)
    assert Counter(picked) == {1: 2, 2: 2}


def test_capacity_is_respected() -> None:
    router = Router()
    entry = router.announce(1, "w", offer(capacity=2))
    router.acquire(router.pick("m"))
    router.acquire(router.pick("m"))
    assert entry.inflight == 2
    assert not entry.has_room
    assert route_error(router, "m") is ErrorCode.SATURATED
    router.release(entry)
    assert router.pick("m") is entry


def test_unknown_model() -> None:
    router = Router(known_models=["configured"])
    router.announce(1, "w", offer("m"))
    assert route_error(router, "never-seen") is ErrorCode.UNKNOWN_MODEL


def test_configured_model_without_worker_is_no_worker() -> None:
    router = Router(known_models=["configured"])
    assert route_error(router, "configured") is ErrorCode.NO_WORKER


def test_previously_announced_model_is_no_worker_once_its_worker_left() -> None:
    router = Router()
    router.announce(1, "w", offer("m"))
    router.remove(1)
    assert 1 not in router.workers
    assert route_error(router, "m") is ErrorCode.NO_WORKER


def test_remove_unknown_worker_is_harmless() -> None:
    router = Router()
    router.remove(42)
    router.drain(42)
    assert router.workers == {}


def test_draining_workers_get_no_new_requests() -> None:
    router = Router()
    a = router.announce(1, "a", offer())
    b = router.announce(2, "b", offer())
    router.acquire(b)  # a is less loaded...
    router.drain(1)  # ...but going away
    assert a.draining
    assert router.pick("m") is b


def test_all_draining_is_no_worker_not_saturated() -> None:
    router = Router()
    router.announce(1, "a", offer())
    router.drain(1)
    assert route_error(router, "m") is ErrorCode.NO_WORKER


def test_draining_and_full_workers_is_saturated() -> None:
    router = Router()
    router.announce(1, "a", offer())
    full = router.announce(2, "b", offer(capacity=1))
    router.acquire(full)
    router.drain(1)
    assert route_error(router, "m") is ErrorCode.SATURATED


def test_exclude() -> None:
    router = Router()
    a = router.announce(1, "a", offer())
    b = router.announce(2, "b", offer())
    router.acquire(b)
    assert router.pick("m", exclude=frozenset({1})) is b
    assert router.pick("m", exclude=frozenset({2})) is a
    assert route_error(router, "m", exclude=frozenset({1, 2})) is ErrorCode.NO_WORKER


def test_workers_of_other_models_are_not_picked() -> None:
    router = Router()
    router.announce(1, "a", offer("m1"))
    b = router.announce(2, "b", offer("m2"))
    assert router.pick("m2") is b
    router.acquire(b)
    router.acquire(b)
    assert route_error(router, "m2") is ErrorCode.SATURATED


def test_release_never_goes_negative() -> None:
    router = Router()
    entry = router.announce(1, "w", offer())
    router.acquire(entry)
    router.release(entry)
    router.release(entry)
    assert entry.inflight == 0
    assert entry.served == 1


def test_reannounce_updates_the_offer_and_keeps_the_load() -> None:
    router = Router()
    entry = router.announce(1, "w", offer("m", capacity=1))
    router.acquire(entry)
    again = router.announce(1, "w", offer("m2", capacity=3))
    assert again is entry
    assert entry.inflight == 1
    assert router.pick("m2") is entry
    assert router.known_models == {"m", "m2"}
    assert route_error(router, "m") is ErrorCode.NO_WORKER


def test_models_aggregation() -> None:
    router = Router(known_models=["configured"])
    router.announce(1, "a", offer("m", capacity=2, max_tokens=1024))
    router.announce(2, "b", offer("m", capacity=3, max_tokens=4096))
    router.announce(3, "c", offer("other", capacity=1))
    router.announce(4, "d", offer("m", capacity=50, max_tokens=9999))
    router.drain(4)  # a draining worker is not counted
    assert router.models() == [
        ModelInfo(id="configured", workers=0, capacity=0, max_tokens=0),
        ModelInfo(id="m", workers=2, capacity=5, max_tokens=4096),
        ModelInfo(id="other", workers=1, capacity=1, max_tokens=2048),
    ]


def test_models_keeps_models_whose_workers_left() -> None:
    router = Router()
    router.announce(1, "a", offer("gone"))
    router.remove(1)
    assert router.models() == [ModelInfo(id="gone", workers=0, capacity=0)]


def test_models_no_worker_serves_are_remembered_only_so_many() -> None:
    """A worker may announce name after name (on one connection, or reconnecting): the names no
    worker serves any more are forgotten, the longest gone first, past ``MAX_REMEMBERED``."""
    router = Router(known_models=["configured"])
    router.announce(1, "a", offer("kept"))
    for i in range(MAX_REMEMBERED + 10):
        router.announce(2, "b", offer(f"name-{i}"))  # each replaces the one before
    router.remove(2)
    assert len(router.known_models) == MAX_REMEMBERED + 2  # and the configured one, and the one served
    assert route_error(router, "name-0") is ErrorCode.UNKNOWN_MODEL  # forgotten
    assert route_error(router, f"name-{MAX_REMEMBERED + 9}") is ErrorCode.NO_WORKER  # still remembered
    assert route_error(router, "configured") is ErrorCode.NO_WORKER
    router.announce(3, "c", offer("name-20"))  # served again: no longer among those gone
    router.remove(1)
    assert "name-20" in router.known_models and "kept" in router.known_models


def test_the_model_list_never_outgrows_what_the_client_decodes() -> None:
    """More models than one list may carry (the client drops a connection whose message it
    cannot decode): the served ones first, then the configured ones."""
    router = Router(known_models=[f"configured-{i}" for i in range(MAX_MODELS)])
    for i in range(MAX_MODELS + 100):
        router.announce(i, f"w{i}", offer(f"served-{i}"))
    models = router.models()
    assert len(models) == MAX_MODELS and all(m.workers == 1 for m in models)
    message = ModelList(stream_id=1, models=models)
    assert decode_message(encode_message(message)) == message
    router = Router(known_models=[f"configured-{i}" for i in range(MAX_MODELS + 5)])
    router.announce(1, "w", offer("served"))
    ids = [m.id for m in router.models()]
    assert len(ids) == MAX_MODELS and "served" in ids and ids == sorted(ids)


def test_route_error_message() -> None:
    router = Router()
    with pytest.raises(RouteError, match="The model `x` does not exist"):
        router.pick("x")


def test_a_worker_shared_with_other_proxies_is_offered_only_its_share() -> None:
    """A worker serving several proxies tells each what it takes from it now (``Capacity``):
    its slots and queue less what it holds for the others."""
    router = Router()
    shared = router.announce(1, "shared", offer(capacity=2))
    assert not router.set_capacity(1, 1)  # busy elsewhere: less room than before
    router.acquire(shared)
    assert not shared.has_room and route_error(router, "m") is ErrorCode.SATURATED
    assert not router.set_capacity(1, 0)
    assert shared.load == float("inf") and router.models()[0].capacity == 0
    assert router.set_capacity(1, 5)  # more room: never more than announced
    assert shared.capacity == 2 and router.pick("m") is shared
    assert not router.set_capacity(99, 1)  # an unknown worker: nothing to change
