"""A proxy that sends one request to a worker twice gets no second answer, and could not read or
splice two answers if it did: each answer is sealed under keys of its own."""

from __future__ import annotations

import asyncio
import os
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.attest.node import NodeAttestation
from cocoon.channel.peer import Peer
from cocoon.config import WorkerSettings
from cocoon.keys import public_bytes
from cocoon.protocol.errors import ErrorCode
from cocoon.protocol.messages import Data, End, Error, Open
from cocoon.seal.errors import SealError
from cocoon.seal.request import seal_request
from cocoon.seal.response import ChunkOpener
from cocoon.worker.replay import ReplayGuard
from cocoon.worker.service import Worker
from tests.unit.test_worker_coalescing import BODY, FakeAttestation, FakePeer, ScriptedEngine, chunk

Script = list[tuple[dict[str, Any], bool] | Exception | None]


class Sealed:
    """One request sealed by a client for one worker key."""

    def __init__(self, key: Ed25519PrivateKey, attestation: FakeAttestation) -> None:
        self.request_id = os.urandom(16)
        worker_id = public_bytes(key)
        self.body, secrets = seal_request(
            BODY, kind="chat", request_id=self.request_id, content_key=os.urandom(32),
            recipients=[(worker_id, attestation.hpke_recipient.public)],
        )  # fmt: skip
        self.secret = secrets[worker_id]

    def open_message(self, stream_id: int) -> Open:
        return Open(stream_id=stream_id, model="m", kind="chat", stream=True, max_tokens=0, body=self.body,
                    request_id=self.request_id)  # fmt: skip

    def opener(self) -> ChunkOpener:
        return ChunkOpener(self.secret, self.request_id)


def make_worker(
    script: Script, key: Ed25519PrivateKey, attestation: FakeAttestation, **settings: Any
) -> tuple[Worker, ScriptedEngine]:
    engine = ScriptedEngine(script)
    return Worker(WorkerSettings(**settings), engine, key, cast(NodeAttestation, attestation)), engine


def payloads(peer: FakePeer) -> list[bytes]:
    return [m.payload for m in peer.sent if isinstance(m, Data)]


def refused_as_replay(peer: FakePeer) -> bool:
    return (
        len(peer.sent) == 1
        and isinstance(error := peer.sent[0], Error)
        and error.code == ErrorCode.BAD_REQUEST
        and "already served" in error.message
    )


async def serve(worker: Worker, peer: FakePeer, message: Open) -> None:
    async with asyncio.timeout(5):  # (a replay that is run waits on the engine's gate)
        await worker._serve(cast(Peer, peer), message)


async def until(condition: Any) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition never held")


async def test_a_replayed_open_is_refused_on_another_stream_or_connection() -> None:
    key, attestation = Ed25519PrivateKey.generate(), FakeAttestation()
    worker, engine = make_worker([(chunk(0), False), None, (chunk(1), False)], key, attestation)
    sealed = Sealed(key, attestation)
    first = FakePeer()
    running = asyncio.create_task(worker._serve(cast(Peer, first), sealed.open_message(2)))
    await until(lambda: payloads(first))
    while_running = FakePeer()  # the same Open while the first still runs: another stream
    await serve(worker, while_running, sealed.open_message(4))
    assert refused_as_replay(while_running)
    engine.gate.set()
    await running
    assert isinstance(first.sent[-1], End)
    opener = sealed.opener()
    assert [opener.open(p)[1] for p in payloads(first)] == [False, False, True]
    opener.finish()
    served = FakePeer()  # and once it has been served: another connection
    await serve(worker, served, sealed.open_message(2))
    assert refused_as_replay(served)
    other = Sealed(key, attestation)  # another request is served as ever
    fresh = FakePeer()
    await serve(worker, fresh, other.open_message(6))
    assert isinstance(fresh.sent[-1], End)


async def test_a_request_refused_as_saturated_may_be_sent_again() -> None:
    """The proxy retries a request that found the worker full (``Attempt.BUSY``): it never ran,
    so it is no replay. Once it has run, it is one."""
    key, attestation = Ed25519PrivateKey.generate(), FakeAttestation()
    worker, engine = make_worker(
        [(chunk(0), False), None, (chunk(1), False)], key, attestation, capacity=1, queue_timeout=0.05
    )
    holding = FakePeer()
    running = asyncio.create_task(worker._serve(cast(Peer, holding), Sealed(key, attestation).open_message(2)))
    await until(lambda: payloads(holding))
    sealed = Sealed(key, attestation)
    full = FakePeer()
    await serve(worker, full, sealed.open_message(4))  # no slot within the queue timeout
    (error,) = full.sent
    assert isinstance(error, Error) and error.code == ErrorCode.SATURATED
    engine.gate.set()
    await running
    retried = FakePeer()
    await serve(worker, retried, sealed.open_message(6))
    assert isinstance(retried.sent[-1], End)
    opener = sealed.opener()
    for payload in payloads(retried):
        opener.open(payload)
    opener.finish()
    again = FakePeer()
    await serve(worker, again, sealed.open_message(8))
    assert refused_as_replay(again)


async def test_two_runs_of_one_request_are_sealed_apart() -> None:
    """A worker that has forgotten a request (it restarted) and runs it again seals the second
    answer under other keys: the proxy learns nothing from the pair, and cannot splice them."""
    key, attestation = Ed25519PrivateKey.generate(), FakeAttestation()
    script: Script = [(chunk(0), False), (chunk(1), False)]
    sealed = Sealed(key, attestation)
    runs = []
    for _ in range(2):
        worker, _ = make_worker(script, key, attestation)
        peer = FakePeer()
        await serve(worker, peer, sealed.open_message(2))
        runs.append(payloads(peer))
    first, second = runs
    assert len(first) == len(second) == 3
    for a, b in zip(first[:2], second[:2], strict=True):  # the same text, sealed apart
        assert len(a) == len(b) and a[-32:] != b[-32:]  # (the end of the ciphertext, and its tag)
    for run in runs:
        opener = sealed.opener()
        for payload in run:
            opener.open(payload)
        opener.finish()
    spliced = sealed.opener()
    spliced.open(first[0])
    with pytest.raises(SealError) as excinfo:
        for payload in second[1:]:
            spliced.open(payload)
        spliced.finish()
    assert excinfo.value.code == "tampered"


def test_the_replay_guard_remembers_running_and_served_requests_within_its_bound() -> None:
    guard = ReplayGuard(limit=2)
    a, b, c, d, e = (bytes([i]) * 16 for i in range(5))
    assert guard.claim(a) and not guard.claim(a)  # running
    guard.ended(a)
    assert not guard.claim(a)  # served
    assert guard.claim(b)
    guard.unclaim(b)  # refused before it ran
    guard.ended(b)  # (its task ends after the refusal: it stays forgotten)
    assert b not in guard and guard.claim(b)
    assert guard.claim(e)  # runs while more than the bound are served
    for rid in (b, c, d):
        if rid != b:
            assert guard.claim(rid)
        guard.ended(rid)
    assert a not in guard and b not in guard  # served longest ago, beyond the bound
    assert c in guard and d in guard and e in guard  # a running request is never forgotten
