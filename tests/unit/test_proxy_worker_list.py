"""The proxy's worker list names as many workers as one message may carry, the least loaded."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from cocoon.channel.peer import Peer
from cocoon.channel.verify import PeerIdentity
from cocoon.protocol.messages import MAX_WORKER_OFFERS, Announce, ListWorkers, WorkerList
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
    client = ClientConnection(b"c" * 32)
    proxy.list_workers(cast(Peer, client), ListWorkers(stream_id=1, model="m"))
    (answer,) = client.sent
    assert isinstance(answer, WorkerList)
    # and the client can read it: the message fits its limits and the frame limit
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
