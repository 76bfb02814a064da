"""The worker follows the sealed request, not the proxy's clear copy of its fields, and what it
says about a bad request in the clear names no value from it."""

from __future__ import annotations

import os
from typing import cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.attest.node import NodeAttestation
from cocoon.channel.peer import Peer
from cocoon.config import WorkerSettings
from cocoon.keys import public_bytes
from cocoon.protocol.errors import ErrorCode
from cocoon.protocol.messages import Data, Error, Open
from cocoon.seal.request import seal_request
from cocoon.worker.service import Worker
from tests.unit.test_worker_coalescing import FakeAttestation, FakePeer, ScriptedEngine, chunk


async def serve(body: bytes, *, clear_stream: bool) -> FakePeer:
    attestation = FakeAttestation()
    key = Ed25519PrivateKey.generate()
    worker = Worker(WorkerSettings(), ScriptedEngine([(chunk(0), False)]), key, cast(NodeAttestation, attestation))
    request_id = os.urandom(16)
    public = attestation.hpke_recipient.public
    sealed, _ = seal_request(
        body, kind="chat", request_id=request_id, content_key=os.urandom(32), recipients=[(public_bytes(key), public)]
    )
    message = Open(stream_id=2, model="m", kind="chat", stream=clear_stream, max_tokens=0, body=sealed,
                   request_id=request_id)  # fmt: skip
    peer = FakePeer()
    await worker._serve(cast(Peer, peer), message)
    return peer


async def test_a_stream_flag_flipped_in_the_clear_is_refused() -> None:
    streamed = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}'
    whole = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    for body, clear in ((streamed, False), (whole, True)):
        peer = await serve(body, clear_stream=clear)
        assert not any(isinstance(m, Data) for m in peer.sent)  # nothing generated
        (error,) = peer.sent
        assert isinstance(error, Error) and error.code == ErrorCode.SEAL_ERROR and "stream flag" in error.message
    peer = await serve(whole, clear_stream=False)  # matching: answered
    assert any(isinstance(m, Data) for m in peer.sent)


async def test_a_bad_request_is_refused_without_its_values_in_the_clear() -> None:
    body = b'{"model": "m", "messages": [{"role": "SECRETROLE", "content": "secret prompt"}]}'
    (error,) = (await serve(body, clear_stream=False)).sent
    assert isinstance(error, Error) and error.code == ErrorCode.BAD_REQUEST
    assert "SECRET" not in error.message and "secret" not in error.message
    assert "messages[0].role" in error.message
