"""The proxy's worker list names as many workers as one message may carry, the least loaded."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import cast

from cocoon.channel.peer import Peer
from cocoon.channel.verify import PeerIdentity
from cocoon.protocol.messages import MAX_TOKENS_PER_SECOND, MAX_WORKER_OFFERS, Announce, ListWorkers, WorkerList
from cocoon.proxy.reputation import Reputation
from cocoon.proxy.router import Router
from cocoon.proxy.service import Proxy
from tests.unit.test_peer_relay import open_connections
from tests.unit.test_proxy_client_limits import ClientConnection


class WorkerConnection:
    """Test double of a worker's connection: who it is, as its handshake showed."""

    def __init__(self, index: int, evidence: bytes) -> None:
        self.identity = PeerIdentity("worker", index.to_bytes(32, "big"), evidence=evidence)


def listed(tmp_path: Path, workers: int, evidence: bytes) -> WorkerList:
    proxy = Proxy.__new__(Proxy)  # only the list is exercised: no listener
    proxy.router = Router(["m"])
    proxy.reputation = Reputation(tmp_path / "reputation.json")
    proxy.worker_peers = {}
    for i in range(workers):
        proxy.router.announce(i, f"w{i}", Announce(model="m", engine="e", capacity=4, max_tokens=100), f"{i:064x}")
        proxy.worker_peers[i] = cast(Peer, WorkerConnection(i, evidence))
    for i in range(workers // 2):  # the first half busy: they come last
        proxy.router.acquire(proxy.router.workers[i])
    return readable(proxy)


def readable(proxy: Proxy) -> WorkerList:
    """The proxy's worker list for model "m", checked to be one the client can read."""
    client = ClientConnection(b"c" * 32)
    proxy.list_workers(cast(Peer, client), ListWorkers(stream_id=1, model="m"))
    (answer,) = client.sent
    assert isinstance(answer, WorkerList)
    # the client can read it: the message fits its limits and the frame limit (a message it
    # cannot decode would make it drop the connection, with every request on it)
    dialer, listener = open_connections(0.0)
    listener.receive_data(dialer.send(ListWorkers(stream_id=1, model="m")), 0.0)
    assert listener.next_event() is not None
    dialer.receive_data(listener.send(answer), 0.0)
    assert dialer.next_event() == answer
    return answer


def test_a_long_list_is_cut_to_the_least_loaded_that_fit_one_message(tmp_path: Path) -> None:
    answer = listed(tmp_path, 300, b"e" * 1000)
    assert len(answer.workers) == MAX_WORKER_OFFERS
    assert all(o.inflight == 0 for o in answer.workers[:150])


def test_a_list_is_cut_before_its_evidence_outgrows_a_frame(tmp_path: Path) -> None:
    answer = listed(tmp_path, 20, b"e" * 1_000_000)  # about a megabyte of evidence each
    assert 1 <= len(answer.workers) < 20


def one_worker(reputation: Reputation) -> Proxy:
    proxy = Proxy.__new__(Proxy)
    proxy.router = Router(["m"])
    proxy.reputation = reputation
    proxy.router.announce(0, "w0", Announce(model="m", engine="e", capacity=4), KEY)
    proxy.worker_peers = {0: cast(Peer, WorkerConnection(0, b"evidence"))}
    return proxy


KEY = f"{0:064x}"


def test_a_worker_claiming_absurd_token_counts_gets_a_speed_a_list_can_carry(tmp_path: Path) -> None:
    """The speed is computed from the token counts the worker signs: a billion billion tokens in
    a microsecond must not put a speed in the list that the client's decoder refuses."""
    reputation = Reputation(tmp_path / "reputation.json")
    reputation.success(KEY, ttft=None, tokens=2**40, duration=1e-6)
    reputation.success(KEY, ttft=0.001, tokens=2**40, duration=0.001001)
    (offer,) = readable(one_worker(reputation)).workers
    assert 0 < offer.tokens_per_second <= MAX_TOKENS_PER_SECOND


def test_a_damaged_reputation_file_brings_back_no_value_a_list_cannot_carry(tmp_path: Path) -> None:
    path = tmp_path / "reputation.json"
    saved = {
        "tokens_per_second": 1e300,
        "ttft": float("inf"),  # (Python's json writes and reads Infinity and NaN)
        "success_rate": 5,
        "errors": -3,
        "timeouts": 2**70,
        "suspensions": 10**9,
        "failures_in_row": float("nan"),
        "suspended_until": 1e300,
        "banned": "no",
        "successes": "many",
    }
    path.write_text(json.dumps({KEY: saved}))
    reputation = Reputation(path)
    stats = reputation.stats(KEY)
    assert stats.tokens_per_second == MAX_TOKENS_PER_SECOND and stats.success_rate == 1.0 and stats.errors == 0
    assert stats.banned is False and stats.successes == 0 and stats.failures_in_row == 0 and stats.ttft == 0.0
    reputation.failure(KEY, time.time())  # (its suspension count stays within what the arithmetic takes)
    reputation.failure(KEY, time.time())
    reputation.failure(KEY, time.time())
    (offer,) = readable(one_worker(reputation)).workers
    assert offer.suspended_until > 0


def test_a_worker_with_two_connections_is_listed_once(tmp_path: Path) -> None:
    """Renewing its connection, a worker has two for a moment (the fresh one announced, the old
    one not yet told goodbye): a client sealing for both could open no answer."""
    proxy = one_worker(Reputation(tmp_path / "reputation.json"))
    proxy.router.announce(1, "w0 again", Announce(model="m", engine="e", capacity=4), KEY)
    proxy.worker_peers[1] = cast(Peer, WorkerConnection(0, b"fresher evidence"))  # the same worker's key
    proxy.router.acquire(proxy.router.workers[0])  # the old connection busy: the fresh one is listed
    answer = readable(proxy)
    assert [(o.worker_id, o.evidence) for o in answer.workers] == [(bytes(32), b"fresher evidence")]
