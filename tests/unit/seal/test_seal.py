"""Sealed requests, sealed chunked answers and signed usage records, with every tampering."""

from __future__ import annotations

import hmac
import os

import msgspec
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.client.sealing import Candidate, PreparedSenders, SealedCall
from cocoon.keys import public_bytes
from cocoon.seal.errors import SealError
from cocoon.seal.hpke import RecipientKey, hkdf_expand, hmac_sha256, prepare_sender
from cocoon.seal.request import decode_sealed, open_request, seal_request, sealed_hash
from cocoon.seal.response import FIRST_HEADER, HEADER, LABEL, RESPONSE_NONCE_SIZE, ChunkOpener, ChunkSealer
from cocoon.seal.usage import UsageRecord, sign_usage, verify_usage

BODY = b'{"model": "m", "messages": [{"role": "user", "content": "secret canary"}]}'


class Worker:
    def __init__(self) -> None:
        self.hpke = X25519PrivateKey.generate()
        self.id = os.urandom(32)

    @property
    def public(self) -> bytes:
        return self.hpke.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def recipient(self) -> RecipientKey:
        return RecipientKey(self.hpke)


def seal_for(*workers: Worker, request_id: bytes | None = None) -> tuple[bytes, dict[bytes, bytes], bytes]:
    rid = request_id or os.urandom(16)
    sealed, secrets = seal_request(
        BODY, kind="chat", request_id=rid, content_key=os.urandom(32), recipients=[(w.id, w.public) for w in workers]
    )
    return sealed, secrets, rid


def test_any_candidate_opens_the_request_and_shares_the_response_secret() -> None:
    workers = [Worker() for _ in range(3)]
    sealed, secrets, rid = seal_for(*workers)
    assert b"secret canary" not in sealed and BODY not in sealed
    for worker in workers:
        request, body, secret = open_request(sealed, worker_id=worker.id, hpke_key=worker.recipient)
        assert body == BODY and request.request_id == rid and secret == secrets[worker.id]
    assert len(set(secrets.values())) == 3  # one answer key per candidate


def test_a_worker_named_twice_is_refused_as_it_is_sealed() -> None:
    # it would open the first key wrapped for it, and seal its answer under that one's secret,
    # which is not the one the client keeps for it (the last): no answer would open
    worker = Worker()
    with pytest.raises(SealError) as excinfo:
        seal_for(worker, Worker(), worker)
    assert excinfo.value.code == "no_candidates" and "twice" in str(excinfo.value)


def test_a_worker_that_is_not_a_candidate_cannot_open() -> None:
    sealed, _, _ = seal_for(Worker())
    outsider = Worker()
    with pytest.raises(SealError) as excinfo:
        open_request(sealed, worker_id=outsider.id, hpke_key=outsider.recipient)
    assert excinfo.value.code == "not_a_candidate"


def test_a_wrapped_key_relabelled_for_another_worker_fails() -> None:
    """The proxy cannot move a candidate's entry to another worker id."""
    alice, mallory = Worker(), Worker()
    sealed, _, _ = seal_for(alice)
    request = decode_sealed(sealed)
    entry = request.keys[0]
    forged = msgspec.structs.replace(request, keys=[msgspec.structs.replace(entry, worker_id=mallory.id)])
    with pytest.raises(SealError) as excinfo:
        open_request(msgspec.msgpack.encode(forged), worker_id=mallory.id, hpke_key=mallory.recipient)
    assert excinfo.value.code == "unwrap_failed"


def test_sealing_to_a_key_that_is_not_x25519_fails() -> None:
    worker = Worker()
    with pytest.raises(SealError) as excinfo:
        seal_request(
            BODY, kind="chat", request_id=os.urandom(16), content_key=os.urandom(32), recipients=[(worker.id, b"x")]
        )
    assert excinfo.value.code == "bad_key"
    with pytest.raises(SealError) as excinfo:
        seal_request(BODY, kind="chat", request_id=os.urandom(16), content_key=os.urandom(32), recipients=[])
    assert excinfo.value.code == "no_candidates"


def test_a_flipped_byte_in_the_sealed_body_is_detected() -> None:
    worker = Worker()
    sealed, _, _ = seal_for(worker)
    request = decode_sealed(sealed)
    flipped = bytearray(request.ciphertext)
    flipped[5] ^= 1
    tampered = msgspec.msgpack.encode(msgspec.structs.replace(request, ciphertext=bytes(flipped)))
    with pytest.raises(SealError) as excinfo:
        open_request(tampered, worker_id=worker.id, hpke_key=worker.recipient)
    assert excinfo.value.code == "tampered"
    with pytest.raises(SealError) as excinfo:
        open_request(b"\x00garbage", worker_id=worker.id, hpke_key=worker.recipient)
    assert excinfo.value.code == "malformed"


def test_a_request_of_another_version_is_refused_before_it_is_opened() -> None:
    """Version 1 answers had no response nonce: a worker a version apart fails at once."""
    worker = Worker()
    sealed, _, _ = seal_for(worker)
    request = decode_sealed(sealed)
    assert request.version == 2
    old = msgspec.msgpack.encode(msgspec.structs.replace(request, version=1))
    with pytest.raises(SealError) as excinfo:
        open_request(old, worker_id=worker.id, hpke_key=worker.recipient)
    assert excinfo.value.code == "unsupported_version"


def answer(secret: bytes, rid: bytes, parts: list[bytes]) -> list[bytes]:
    sealer = ChunkSealer(secret, rid, os.urandom(RESPONSE_NONCE_SIZE))
    return [sealer.seal(p, final=i == len(parts) - 1) for i, p in enumerate(parts)]


def test_chunks_open_in_order_and_end_final() -> None:
    secret, rid = os.urandom(32), os.urandom(16)
    chunks = answer(secret, rid, [b"one", b"two", b"usage"])
    opener = ChunkOpener(secret, rid)
    assert [opener.open(c) for c in chunks] == [(b"one", False), (b"two", False), (b"usage", True)]
    opener.finish()
    assert all(b"two" not in c for c in chunks)


@settings(max_examples=300)
@given(st.binary(max_size=200), st.binary(max_size=300))
def test_hmac_sha256_is_the_standard_librarys(key: bytes, message: bytes) -> None:
    assert hmac_sha256(key, message) == hmac.digest(key, message, "sha256")  # keys past 64 bytes too


def test_hkdf_expand_is_rfc_5869() -> None:
    # RFC 5869, A.1 (SHA-256): its PRK and info give its OKM
    prk = bytes.fromhex("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5")
    okm = "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    assert hkdf_expand(prk, bytes(range(0xF0, 0xFA)), 42).hex() == okm
    # and, for the lengths the answer keys use, what `cryptography` derives (answers stay compatible)
    for length in (12, 32, 64):
        info = LABEL + b"key"
        assert hkdf_expand(prk, info, length) == HKDFExpand(hashes.SHA256(), length, info).derive(prk)


def opening(secret: bytes, rid: bytes, chunks: list[bytes]) -> str:
    opener = ChunkOpener(secret, rid)
    with pytest.raises(SealError) as excinfo:
        for chunk in chunks:
            opener.open(chunk)
        opener.finish()
    return excinfo.value.code


def test_every_tampering_of_the_answer_is_named() -> None:
    secret, rid = os.urandom(32), os.urandom(16)
    chunks = answer(secret, rid, [b"a", b"b", b"c", b"end"])
    flipped = bytearray(chunks[1])
    flipped[-3] ^= 1
    assert opening(secret, rid, [chunks[0], bytes(flipped)]) == "tampered"
    assert opening(secret, rid, chunks[:-1]) == "truncated"  # the final chunk dropped
    assert opening(secret, rid, [chunks[0], chunks[0]]) == "replayed"
    assert opening(secret, rid, [chunks[0], chunks[2]]) == "out_of_order"
    assert opening(secret, rid, [*chunks, chunks[-1]]) == "after_final"
    other_secret, other_rid = os.urandom(32), os.urandom(16)
    foreign = answer(other_secret, other_rid, [b"x", b"y"])
    assert opening(secret, rid, [chunks[0], foreign[1]]) == "foreign_chunk"  # swapped between requests
    header_flip = bytearray(chunks[0])
    header_flip[16] = 1  # claim "final" on the first chunk
    assert opening(secret, rid, [bytes(header_flip)]) == "tampered"


def body(chunk: bytes, index: int) -> bytes:
    """A chunk's ciphertext, its clear header left out."""
    return chunk[FIRST_HEADER if index == 0 else HEADER.size :]


def test_two_answers_to_one_request_are_sealed_under_keys_of_their_own() -> None:
    """A proxy that sends one request to a worker twice gets two answers whose keys differ (a
    fresh response nonce each): no shared keystream, no repeated Poly1305 key."""
    secret, rid = os.urandom(32), os.urandom(16)
    parts = [b"the same text" * 4, b"again the same", b"usage"]
    first, second = answer(secret, rid, parts), answer(secret, rid, parts)
    assert first[0][HEADER.size : FIRST_HEADER] != second[0][HEADER.size : FIRST_HEADER]  # the nonces
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        assert body(a, i) != body(b, i)
        # the keystreams differ: XOR of the ciphertexts is not XOR of the texts (all zeros here)
        xor = bytes(x ^ y for x, y in zip(body(a, i), body(b, i), strict=True))
        assert xor[: len(parts[i])] != bytes(len(parts[i]))
    for chunks in (first, second):
        opener = ChunkOpener(secret, rid)
        assert [opener.open(c)[0] for c in chunks] == parts
        opener.finish()


def test_chunks_of_two_answers_to_one_request_do_not_splice() -> None:
    secret, rid = os.urandom(32), os.urandom(16)
    parts = [b"one", b"two", b"three", b"usage"]
    first, second = answer(secret, rid, parts), answer(secret, rid, parts)
    assert opening(secret, rid, [first[0], second[1]]) == "tampered"  # bound to the first's nonce
    assert opening(secret, rid, [second[0], second[1], first[2]]) == "tampered"
    assert opening(secret, rid, [*first[:2], *second[2:]]) == "tampered"  # the other's final chunk too


def test_an_altered_or_missing_response_nonce_fails() -> None:
    secret, rid = os.urandom(32), os.urandom(16)
    for parts in ([b"one", b"usage"], [b"usage"]):  # chunk 0 an answer chunk, or the final one alone
        chunks = answer(secret, rid, parts)
        for position in (HEADER.size, FIRST_HEADER - 1):
            altered = bytearray(chunks[0])
            altered[position] ^= 1
            assert opening(secret, rid, [bytes(altered), *chunks[1:]]) == "tampered"
        without = chunks[0][: HEADER.size] + chunks[0][FIRST_HEADER:]  # a chunk 0 as version 1 sealed it
        assert opening(secret, rid, [without, *chunks[1:]]) in ("tampered", "malformed")
        assert opening(secret, rid, [chunks[0][: FIRST_HEADER + 15]]) == "malformed"
        opener = ChunkOpener(secret, rid)
        assert [opener.open(c)[0] for c in chunks] == parts
        opener.finish()


def test_a_chunk_0_that_fails_leaves_the_opener_unbound() -> None:
    """The client tries each candidate's opener on chunk 0: one that fails must not keep the
    nonce it read."""
    secret, rid = os.urandom(32), os.urandom(16)
    chunks = answer(secret, rid, [b"one", b"usage"])
    forged = chunks[0][: HEADER.size] + os.urandom(RESPONSE_NONCE_SIZE) + chunks[0][FIRST_HEADER:]
    opener = ChunkOpener(secret, rid)
    with pytest.raises(SealError):
        opener.open(forged)
    assert [opener.open(c) for c in chunks] == [(b"one", False), (b"usage", True)]


def test_a_response_nonce_of_another_size_is_refused() -> None:
    with pytest.raises(ValueError):
        ChunkSealer(os.urandom(32), os.urandom(16), bytes(12))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_chunks_only_raise_seal_errors(data: bytes) -> None:
    try:
        ChunkOpener(os.urandom(32), os.urandom(16)).open(data)
    except SealError:
        pass
    # and behind a genuine chunk 0 header, where the opener reads a response nonce
    secret, rid = bytes(32), bytes(16)
    header = answer(secret, rid, [b"x"])[0][: HEADER.size]
    with pytest.raises(SealError):
        ChunkOpener(secret, rid).open(header + data)


def record(worker_key: bytes, completion: int = 10) -> UsageRecord:
    return UsageRecord(
        1, os.urandom(16), sealed_hash(b"sealed"), bytes(32), worker_key, 30, 0, completion, 0, "stop", 1, 2
    )


def test_usage_records_are_signed_and_checked() -> None:
    key = Ed25519PrivateKey.generate()
    worker = public_bytes(key)
    signed = sign_usage(record(worker), key)
    assert verify_usage(signed, worker).completion_tokens == 10
    envelope = msgspec.msgpack.decode(signed)
    inflated = msgspec.msgpack.encode(record(worker, completion=10_000))
    with pytest.raises(SealError) as excinfo:
        verify_usage(msgspec.msgpack.encode([inflated, envelope[1]]), worker)
    assert excinfo.value.code == "bad_signature"
    forged = msgspec.msgpack.encode([envelope[0], bytes(64)])
    with pytest.raises(SealError) as excinfo:
        verify_usage(forged, worker)
    assert excinfo.value.code == "bad_signature"
    other = Ed25519PrivateKey.generate()
    with pytest.raises(SealError) as excinfo:
        verify_usage(sign_usage(record(worker), other), worker)
    assert excinfo.value.code == "bad_signature"
    with pytest.raises(SealError) as excinfo:
        verify_usage(signed, public_bytes(other))
    assert excinfo.value.code == "wrong_worker"
    with pytest.raises(SealError) as excinfo:
        verify_usage(b"\xc1", worker)
    assert excinfo.value.code == "malformed"


def test_a_sender_setup_made_ahead_seals_one_request_only() -> None:
    worker, other = Worker(), Worker()
    candidates = [Candidate(worker.id, worker.public, b"m" * 32), Candidate(other.id, other.public, b"m" * 32)]
    prepared = PreparedSenders(limit=4, per_key=1)
    prepared.refill(candidates[:1])
    assert len(prepared) == 1
    first = SealedCall("chat", BODY, candidates, None, prepared)
    assert len(prepared) == 0  # taken: a setup (its ephemeral key) never serves two requests
    second = SealedCall("chat", BODY, candidates, None, prepared)  # made on the spot instead
    encs = [{k.worker_id: k.enc for k in decode_sealed(call.sealed).keys} for call in (first, second)]
    assert encs[0][worker.id] != encs[1][worker.id] and encs[0][other.id] != encs[1][other.id]
    for call in (first, second):  # both open at either worker, whichever way they were sealed
        for w in (worker, other):
            request, body, _ = open_request(call.sealed, worker_id=w.id, hpke_key=w.recipient)
            assert body == BODY and request.request_id == call.request_id


def test_a_burst_of_requests_to_one_worker_is_sealed_with_setups_made_ahead() -> None:
    worker = Worker()
    candidates = [Candidate(worker.id, worker.public, b"m" * 32)]
    prepared = PreparedSenders(per_key=4)
    prepared.refill(candidates)
    prepared.refill(candidates)  # topped up, never beyond per_key
    assert len(prepared) == 4
    made_ahead = {setup.enc for setup in prepared.take(candidates * 1).values()}
    prepared.refill(candidates)
    ready = [prepared.take(candidates)[worker.id] for _ in range(3)]
    made_ahead |= {setup.enc for setup in ready}
    prepared.refill(candidates)
    burst = [SealedCall("chat", BODY, candidates, None, prepared) for _ in range(5)]
    assert len(prepared) == 0
    encs = [decode_sealed(call.sealed).keys[0].enc for call in burst]
    assert len(set(encs)) == 5  # one ephemeral key per request, the fifth made on the spot
    assert not made_ahead & set(encs)  # a setup taken once is never used again
    for call in burst:
        request, body, _ = open_request(call.sealed, worker_id=worker.id, hpke_key=worker.recipient)
        assert body == BODY and request.request_id == call.request_id


def test_prepared_sender_setups_are_bounded_and_follow_key_changes() -> None:
    workers = [Worker() for _ in range(5)]
    prepared = PreparedSenders(limit=6, per_key=2)
    prepared.refill([Candidate(w.id, w.public, b"m" * 32) for w in workers])
    assert len(prepared) == 6  # those of the keys used longest ago went
    assert prepared.take([Candidate(workers[0].id, workers[0].public, b"m" * 32)]) == {}
    assert len(prepared.take([Candidate(w.id, w.public, b"m" * 32) for w in workers[2:]])) == 3
    rotated = Worker()
    rotated.id = workers[-1].id  # the same worker with a new HPKE key: the old setup does not serve it
    assert prepared.take([Candidate(rotated.id, rotated.public, b"m" * 32)]) == {}
    prepared.refill([Candidate(workers[0].id, b"\x00" * 31, b"m" * 32)])  # not a key: skipped, not raised
    assert len(prepared) == 3


def test_a_key_whose_setups_were_all_taken_does_not_break_the_bound() -> None:
    """Requests that fail before their refill (a proxy gone as they were sent) leave a worker's
    key with no setup; the bound must still hold once other keys fill the store."""
    workers = [Worker() for _ in range(6)]
    prepared = PreparedSenders(limit=8, per_key=4)
    first = [Candidate(workers[0].id, workers[0].public, b"m" * 32)]
    prepared.refill(first)
    for _ in range(4):
        assert prepared.take(first)
    prepared.refill([Candidate(w.id, w.public, b"m" * 32) for w in workers[1:]])
    assert len(prepared) == 8
    assert prepared.take(first) == {}


def test_a_setup_made_for_another_key_is_refused() -> None:
    worker, other = Worker(), Worker()
    wrong = {worker.id: prepare_sender(other.public)}  # would wrap the request's key for `other`
    with pytest.raises(SealError) as excinfo:
        seal_request(
            BODY, kind="chat", request_id=os.urandom(16), content_key=os.urandom(32),
            recipients=[(worker.id, worker.public)], prepared=wrong,
        )  # fmt: skip
    assert excinfo.value.code == "bad_key"


def test_a_low_order_key_is_refused_by_name() -> None:
    # all zeros is a point of small order: the exchange would give an all-zero secret
    with pytest.raises(SealError) as excinfo:
        prepare_sender(bytes(32))
    assert excinfo.value.code == "bad_key"
    prepared = PreparedSenders()
    prepared.refill([Candidate(os.urandom(32), bytes(32), b"m" * 32)])  # skipped, not raised
    assert len(prepared) == 0
