"""Usage records as the proxy and the client check them, and the choice of workers to seal to."""

from __future__ import annotations

import datetime
import os
import time

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from msgspec.structs import replace

from cocoon.attest.policy import development_policy
from cocoon.attest.provider import SimQuoteSource, make_node_evidence
from cocoon.attest.sim import SimAuthority
from cocoon.attest.verifier import EvidenceVerifier
from cocoon.client.sealing import Candidate, SealedCall, SealingFailed, verified_candidates
from cocoon.keys import public_bytes
from cocoon.protocol.messages import End, Open, Usage, WorkerOffer
from cocoon.proxy.service import check_receipt
from cocoon.seal.request import open_request, sealed_hash
from cocoon.seal.response import ChunkSealer
from cocoon.seal.usage import UsageRecord, sign_usage
from tests.unit.seal.test_seal import Worker

MODEL_HASH = bytes(range(32))


class Setup:
    """One request sealed by a client to one worker, answered by that worker."""

    def __init__(self, max_tokens: int | None = 50) -> None:
        self.worker = Worker()
        self.key = Ed25519PrivateKey.generate()
        self.worker.id = public_bytes(self.key)
        self.call = SealedCall(
            "chat", b'{"x": 1}', [Candidate(self.worker.id, self.worker.public, MODEL_HASH)], max_tokens
        )
        _, _, secret = open_request(self.call.sealed, worker_id=self.worker.id, hpke_key=self.worker.recipient)
        self.sealer = ChunkSealer(secret, self.call.request_id, os.urandom(32))

    def receipt(self, completion: int = 10, **changes: object) -> bytes:
        record = UsageRecord(
            1,
            self.call.request_id,
            sealed_hash(self.call.sealed),
            MODEL_HASH,
            self.worker.id,
            20,
            0,
            completion,
            0,
            "stop",
            1,
            2,
        )
        return sign_usage(msgspec.structs.replace(record, **changes), self.key)

    def answer(self, receipt: bytes) -> None:
        assert self.call.open_chunk(self.sealer.seal(b'{"choices": []}')) is not None
        assert self.call.open_chunk(self.sealer.seal(receipt, final=True)) is None

    def open_message(self) -> Open:
        return Open(
            stream_id=1, model="m", kind="chat", stream=False, max_tokens=50, body=self.call.sealed,
            request_id=self.call.request_id, candidates=[self.worker.id],
        )  # fmt: skip


def end(receipt: bytes, completion: int = 10) -> End:
    return End(
        stream_id=1, usage=Usage(prompt_tokens=20, completion_tokens=completion), finish_reason="stop", receipt=receipt
    )


def test_an_honest_receipt_passes_both_checks() -> None:
    setup = Setup()
    receipt = setup.receipt()
    record, problem = check_receipt(end(receipt), setup.open_message(), setup.worker.id)
    assert problem == "" and record is not None and record.completion_tokens > 0
    setup.answer(receipt)
    assert setup.call.check_end(end(receipt)).completion_tokens == 10


def test_inflated_clear_usage_is_refused_by_the_proxy_and_the_client() -> None:
    setup = Setup()
    receipt = setup.receipt()
    assert (
        "differs from the signed record" in check_receipt(end(receipt, 999), setup.open_message(), setup.worker.id)[1]
    )
    setup.answer(receipt)
    with pytest.raises(SealingFailed) as excinfo:
        setup.call.check_end(end(receipt, 999))
    assert excinfo.value.code == "bad_receipt"


@pytest.mark.parametrize("field", ["cached_tokens", "reasoning_tokens"])
def test_cached_and_reasoning_tokens_shown_to_the_application_must_match_the_signed_record(field: str) -> None:
    """The application is shown the relayed usage whole: every field of it is checked."""
    setup = Setup()
    receipt = setup.receipt(cached_tokens=4, reasoning_tokens=6)
    usage = Usage(prompt_tokens=20, completion_tokens=10, cached_tokens=4, reasoning_tokens=6)
    honest = End(stream_id=1, usage=usage, finish_reason="stop", receipt=receipt)
    setup.answer(receipt)
    assert setup.call.check_end(honest).cached_tokens == 4
    setup = Setup()
    receipt = setup.receipt(cached_tokens=4, reasoning_tokens=6)
    setup.answer(receipt)
    altered = End(stream_id=1, usage=msgspec.structs.replace(usage, **{field: 1000}), receipt=receipt)
    with pytest.raises(SealingFailed, match="differs from the signed record") as excinfo:
        setup.call.check_end(altered)
    assert excinfo.value.code == "bad_receipt"


def test_a_record_with_a_bad_signature_is_refused() -> None:
    setup = Setup()
    envelope = msgspec.msgpack.decode(setup.receipt())
    inflated_record = msgspec.msgpack.decode(msgspec.msgpack.decode(setup.receipt(completion=999))[0])
    forged = msgspec.msgpack.encode([msgspec.msgpack.encode(inflated_record), envelope[1]])
    assert "bad_signature" in check_receipt(end(forged, 999), setup.open_message(), setup.worker.id)[1]
    setup.answer(forged)
    with pytest.raises(SealingFailed, match="bad_signature"):
        setup.call.check_end(end(forged, 999))


def test_the_proxy_does_not_bill_more_tokens_than_the_request_allowed() -> None:
    """The client refuses such an answer and pays nothing for it: billing it would leave it
    delivered and unpaid in the proxy's books."""
    setup = Setup(max_tokens=5)
    receipt = setup.receipt(completion=6)
    opened = replace(setup.open_message(), max_tokens=5)
    record, problem = check_receipt(end(receipt, 6), opened, setup.worker.id)
    assert record is None and "above the request's max_tokens" in problem
    assert check_receipt(end(receipt, 6), replace(opened, max_tokens=6), setup.worker.id)[0] is not None


def test_a_relayed_receipt_must_equal_the_sealed_one() -> None:
    setup = Setup()
    setup.answer(setup.receipt())
    with pytest.raises(SealingFailed, match="differs from the sealed one"):
        setup.call.check_end(end(setup.receipt(completion=11), 11))


def test_the_client_bounds_and_binds_the_record() -> None:
    for changes, message in (
        ({"completion": 60}, "more tokens than were allowed"),
        ({"model_hash": bytes(32)}, "another model"),
        ({"request_id": os.urandom(16)}, "another request"),
    ):
        setup = Setup(max_tokens=50)
        completion = int(changes.pop("completion", 10))  # type: ignore[call-overload]
        receipt = setup.receipt(completion=completion, **changes)
        setup.answer(receipt)
        with pytest.raises(SealingFailed, match=message):
            setup.call.check_end(end(receipt, completion))


def test_a_truncated_answer_is_refused() -> None:
    setup = Setup()
    assert setup.call.open_chunk(setup.sealer.seal(b"{}")) is not None
    with pytest.raises(SealingFailed, match="truncated"):
        setup.call.check_end(end(setup.receipt()))


def test_an_answer_for_another_request_is_refused() -> None:
    setup, other = Setup(), Setup()
    with pytest.raises(SealingFailed, match="no candidate"):
        setup.call.open_chunk(other.sealer.seal(b"{}"))


def test_only_workers_with_valid_evidence_are_sealed_to() -> None:
    authority = SimAuthority.generate(datetime.datetime.now(datetime.UTC))
    verifier = EvidenceVerifier(development_policy(), sim_root_der=authority.root_der)
    now = int(time.time())
    good_key, bad_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    good = make_node_evidence(
        SimQuoteSource(authority), role="worker", channel_key=public_bytes(good_key), hpke_key=os.urandom(32), now=now
    )
    stranger = SimAuthority.generate(datetime.datetime.now(datetime.UTC))  # not our dev root
    bad = make_node_evidence(
        SimQuoteSource(stranger), role="worker", channel_key=public_bytes(bad_key), hpke_key=os.urandom(32), now=now
    )
    offers = [
        WorkerOffer(worker_id=public_bytes(bad_key), evidence=bad.raw, capacity=1, inflight=0, price_milli=1000),
        WorkerOffer(worker_id=public_bytes(good_key), evidence=good.raw, capacity=1, inflight=0, price_milli=1000),
        WorkerOffer(worker_id=os.urandom(32), evidence=good.raw, capacity=1, inflight=0, price_milli=1000),
    ]
    chosen, reasons = verified_candidates(offers, verifier, now)
    assert [c.worker_id for c in chosen] == [public_bytes(good_key)]
    assert chosen[0].hpke_key == good.claims.hpke_key
    assert "untrusted_root" in reasons[0] and "key_mismatch" in reasons[1]
    # a worker listed twice (renewing its connection, or a proxy's mistake) is sealed for once:
    # sealed for twice, it would open the first key and the answer come under the second's secret
    chosen, _ = verified_candidates([offers[1], offers[1]], verifier, now)
    assert [c.worker_id for c in chosen] == [public_bytes(good_key)]


def test_with_a_registry_only_workers_attesting_the_requested_model_are_sealed_to() -> None:
    """A worker announces a model's name, and the proxy lists it under that name; only its
    attestation says which model it runs. A cheap model offered under a dear one's name, by the
    worker or by the proxy's list, is not sealed to."""
    authority = SimAuthority.generate(datetime.datetime.now(datetime.UTC))
    verifier = EvidenceVerifier(development_policy(), sim_root_der=authority.root_der)
    now = int(time.time())
    key = Ed25519PrivateKey.generate()
    evidence = make_node_evidence(
        SimQuoteSource(authority), role="worker", channel_key=public_bytes(key), hpke_key=os.urandom(32), now=now
    )
    offers = [WorkerOffer(worker_id=public_bytes(key), evidence=evidence.raw, capacity=1, inflight=0, price_milli=1000)]
    names = {evidence.claims.model_hash: "small", os.urandom(32): "large"}
    chosen, _ = verified_candidates(offers, verifier, now, model="small", names=names)
    assert [c.worker_id for c in chosen] == [public_bytes(key)]
    chosen, reasons = verified_candidates(offers, verifier, now, model="large", names=names)
    assert chosen == [] and "runs 'small', not 'large'" in reasons[0]
    chosen, reasons = verified_candidates(offers, verifier, now, model="small", names={})
    assert chosen == [] and "does not list" in reasons[0]
