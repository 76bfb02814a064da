"""Micro-benchmarks: the building blocks of one request, each beside a same-run baseline.

Frame encode/decode, HPKE seal and open (per request, per chunk), usage-record and voucher
sign and verify, attestation verification (full and cached), and the SQLite commit of one
billed answer. Every figure is, per repeat, the median of 7 timed batches (as in
``benchmarks.timing``); ``runs`` holds one such median per repeat. Within each repeat a figure
and its baseline are timed in turn, so that they share the machine's drift. The SQLite figures
also time every commit on its own (p50/p90/p99); their value, a batch mean, includes the rare
WAL checkpoint, and the raw commit and the charge alternate call by call, as fsync drifts.
Targets (docs/benchmarks.md): per request sealing ≤ 300 µs, per chunk ≤ 10 µs, full TDX
verification ≤ 2 ms, attestation cache hit ≤ 20 µs.

Run: .venv/bin/cocoon bench --only micro   (``--quick`` for a smoke run)
"""

from __future__ import annotations

import datetime
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import dcap_qvl
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from benchmarks.attestation import NOW as TDX_NOW
from benchmarks.attestation import VECTORS
from benchmarks.harness import Suite
from benchmarks.sealing import BODY, CHUNK, worker
from cocoon.attest.claims import CLAIMS_VERSION, Claims, encode_claims
from cocoon.attest.evidence import EVIDENCE_VERSION, Evidence
from cocoon.attest.policy import Policy, RolePolicy, development_policy
from cocoon.attest.provider import SimQuoteSource, make_node_evidence
from cocoon.attest.sim import SimAuthority
from cocoon.attest.verifier import EvidenceVerifier
from cocoon.keys import public_bytes
from cocoon.payments.accounts import ProxyAccounts
from cocoon.payments.store import PaymentStore
from cocoon.payments.vouchers import TAG_CLIENT_VOUCHER, Voucher
from cocoon.protocol.framing import FrameDecoder, encode_frame
from cocoon.protocol.messages import Data, Open, decode_message, encode_message
from cocoon.seal.request import open_request, seal_request
from cocoon.seal.response import ChunkOpener, ChunkSealer
from cocoon.seal.usage import UsageRecord, sign_usage, verify_usage

BATCHES = 7


@dataclass(frozen=True)
class Case:
    metric: str
    fn: Callable[[], object]
    calls: int  # per batch (scaled down with --quick)
    baseline: str = ""
    target: float | None = None  # seconds per call
    note: str = ""


class Micro:
    """Times callables (per repeat, the median of ``BATCHES`` batches) and records the figures."""

    def __init__(self, suite: Suite) -> None:
        self.suite = suite
        self.scale = 0.5 if suite.quick else 1.0

    def time(self, fn: Callable[[], object], calls: int) -> float:
        """Seconds per call: the median over the batches of ``calls`` calls each."""
        calls = max(1, int(calls * self.scale))
        fn()  # warm up: first-call costs (imports, caches) are not what we measure
        timings = []
        for _ in range(BATCHES):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            timings.append((time.perf_counter() - start) / calls)
        return statistics.median(timings)

    def group(self, cases: list[Case]) -> dict[str, list[float]]:
        """Time the cases in turn within each repeat, so that a figure and its baseline share
        the machine's drift, then record them in order (baselines first); their runs by metric."""
        runs: dict[str, list[float]] = {case.metric: [] for case in cases}
        for _ in range(self.suite.repeats):
            for case in cases:
                runs[case.metric].append(self.time(case.fn, case.calls))
        for case in cases:
            self.record(case.metric, runs[case.metric], baseline=case.baseline, target=case.target, note=case.note)
        return runs

    def record(
        self,
        metric: str,
        runs: list[float],
        *,
        samples: list[float] | None = None,
        baseline: str = "",
        target: float | None = None,
        note: str = "",
    ) -> None:
        met = None
        target_text = ""
        if target is not None:
            met = statistics.median(runs) <= target
            target_text = f"≤ {target * 1e6:g} µs" if target < 1e-3 else f"≤ {target * 1e3:g} ms"
        self.suite.record(metric, "s", runs, samples=samples, baseline=baseline, target=target_text, met=met, note=note)


# --- frames ---------------------------------------------------------------------------------------


def frames(m: Micro) -> None:
    payload = CHUNK[:150].ljust(150, b" ")
    data = Data(stream_id=7, payload=payload)
    data_dict = {"t": "data", "stream_id": 7, "payload": payload}
    request = Open(
        stream_id=9, model="SmolLM2-135M-Instruct", kind="chat", stream=True, max_tokens=64, body=os.urandom(2048),
        request_id=os.urandom(16), candidates=[os.urandom(32)],
    )  # fmt: skip
    open_dict = {
        "t": "open", "stream_id": 9, "model": request.model, "kind": "chat", "stream": True, "max_tokens": 64,
        "body": request.body, "request_id": request.request_id, "candidates": request.candidates,
    }  # fmt: skip
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(open_dict)) == open_dict

    decoder = FrameDecoder()

    def encode(message: Data | Open) -> bytes:
        return encode_frame(encode_message(message))

    def decode(frame: bytes) -> object:
        decoder.feed(frame)
        body = decoder.next_frame()
        assert body is not None
        return decode_message(body)

    cases = (("Data", data, data_dict, "150 B payload"), ("Open", request, open_dict, "2 KB body"))
    for name, message, plain, size in cases:
        frame = encode(message)
        raw = msgspec.msgpack.encode(plain)
        assert decode(frame) == message
        m.suite.progress(f"{name} frame: {len(frame)} bytes, plain msgpack {len(raw)} bytes")
        encode_base, decode_base = (f"baseline: msgpack {op} of the {name} dict" for op in ("encode", "decode"))
        m.group([
            Case(encode_base, partial(msgspec.msgpack.encode, plain), 3000),
            Case(decode_base, partial(msgspec.msgpack.decode, raw), 3000),
            Case(f"frame encode: {name} ({size})", partial(encode, message), 3000, baseline=encode_base),
            Case(f"frame decode: {name} ({size})", partial(decode, frame), 3000, baseline=decode_base,
                 note="FrameDecoder + typed, bounded decode"),
        ])  # fmt: skip


# --- HPKE sealing ---------------------------------------------------------------------------------


def sealing(m: Micro) -> None:
    peer = X25519PrivateKey.generate().public_key()
    aead = ChaCha20Poly1305(os.urandom(32))
    w = worker()

    def seal() -> tuple[bytes, dict[bytes, bytes]]:
        return seal_request(
            BODY, kind="chat", request_id=os.urandom(16), content_key=os.urandom(32), recipients=[(w[0], w[1])]
        )

    sealed, secrets = seal()
    secret, rid = secrets[w[0]], os.urandom(16)
    sealer, opener = ChunkSealer(secret, rid, os.urandom(32)), ChunkOpener(secret, rid)
    x25519, chacha = "baseline: X25519 keygen + exchange", "baseline: ChaCha20-Poly1305 seal (150 B)"
    seal_metric, open_metric = "HPKE: client seals a 2 KB request (K = 1)", "HPKE: worker opens the request"
    runs = m.group([
        Case(x25519, lambda: X25519PrivateKey.generate().exchange(peer), 200),
        Case(chacha, lambda: aead.encrypt(os.urandom(12), CHUNK, b"h" * 17), 5000),
        Case(seal_metric, seal, 150, baseline=x25519),
        Case(open_metric, lambda: open_request(sealed, worker_id=w[0], hpke_key=w[2]), 150, baseline=x25519),
        Case("HPKE per chunk (seal + open, 150 B)", lambda: opener.open(sealer.seal(CHUNK)), 5000, baseline=chacha,
             target=10e-6),
    ])  # fmt: skip
    m.record(
        "HPKE per request (seal K = 1 + open)",
        [s + o for s, o in zip(runs[seal_metric], runs[open_metric], strict=True)],
        baseline=x25519,
        target=300e-6,
        note="three X25519 operations are most of it",
    )


# --- usage records and vouchers -------------------------------------------------------------------


def signatures(m: Micro, tmp: Path) -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    worker_key = public_bytes(key)
    digest = os.urandom(32)
    signature = key.sign(digest)

    now_ms = int(time.time() * 1000)
    record = UsageRecord(
        1, os.urandom(16), os.urandom(32), os.urandom(32), worker_key, 120, 0, 32, 0, "stop", now_ms - 500, now_ms
    )
    signed_usage = sign_usage(record, key)
    assert verify_usage(signed_usage, worker_key) == record

    channel = os.urandom(32)
    now = int(time.time())
    voucher = Voucher(TAG_CLIENT_VOUCHER, channel, 1, 10**9, now + 30 * 86400)
    signed = voucher.sign(key)
    signed.verify(worker_key)

    # accept_voucher: the checks; the voucher is staged, and written by the next charge's commit
    # (``PaymentStore.stage_voucher``); each call takes the next of a series signed beforehand
    store = PaymentStore(tmp / "accept.db")
    accounts = ProxyAccounts(store, Ed25519PrivateKey.generate())
    accounts.open_client(channel, worker_key)
    calls = 150
    needed = (max(1, int(calls * m.scale)) * BATCHES + 1) * m.suite.repeats  # as many as Micro.time calls
    with store.transaction() as db:  # billed already, as for a client paying for its answers: a voucher
        store.set_total(db, channel, at_least=needed * 1000)  # for more than was billed is written at once
    vouchers = iter([
        Voucher(TAG_CLIENT_VOUCHER, channel, n, n * 1000, now + 30 * 86400).sign(key) for n in range(1, needed + 1)
    ])  # fmt: skip

    sign_base, verify_base = "baseline: Ed25519 sign (32 B)", "baseline: Ed25519 verify, OpenSSL (32 B)"
    try:
        m.group([
            Case(sign_base, lambda: key.sign(digest), 500),
            Case(verify_base, lambda: public.verify(signature, digest), 300),
            Case("usage record: sign", lambda: sign_usage(record, key), 500, baseline=sign_base),
            Case("usage record: verify", lambda: verify_usage(signed_usage, worker_key), 300, baseline=verify_base),
            Case("voucher: sign (hash of its fields + Ed25519)", lambda: voucher.sign(key), 500, baseline=sign_base),
            Case("voucher: verify", lambda: signed.verify(worker_key), 300, baseline=verify_base),
            Case("voucher: ProxyAccounts.accept_voucher", lambda: accounts.accept_voucher(next(vouchers), now), calls,
                 baseline=verify_base, note="checks; staged, written by the next charge's commit"),
        ])  # fmt: skip
    finally:
        store.close()


# --- attestation ----------------------------------------------------------------------------------


def attestation(m: Micro) -> None:
    quote = (VECTORS / "tdx_quote").read_bytes()
    collateral = (VECTORS / "tdx_quote_collateral.json").read_bytes()
    parsed = dcap_qvl.QuoteCollateralV3.from_json(collateral.decode())
    claims = encode_claims(
        Claims(CLAIMS_VERSION, "worker", bytes(32), bytes(32), b"", "bench", TDX_NOW - 60, TDX_NOW + 3600)
    )
    evidence = Evidence(version=EVIDENCE_VERSION, tee="tdx", quote=quote, claims=claims, collateral=collateral)
    real = EvidenceVerifier(Policy(worker=RolePolicy(image_hashes="*")))

    authority = SimAuthority.generate(datetime.datetime.now(datetime.UTC))
    channel_key = public_bytes(Ed25519PrivateKey.generate())
    now = int(time.time())
    raw = make_node_evidence(
        SimQuoteSource(authority), role="worker", channel_key=channel_key, hpke_key=bytes(32), now=now
    ).raw

    def full_sim() -> None:
        EvidenceVerifier(development_policy(), sim_root_der=authority.root_der).verify(
            raw, role="worker", channel_key=channel_key, now=now
        )

    cached = EvidenceVerifier(development_policy(), sim_root_der=authority.root_der)
    cached.verify(raw, role="worker", channel_key=channel_key, now=now)
    dcap, sim = "baseline: dcap-qvl verify (TDX quote)", "attestation: full verification, simulated evidence"
    m.group([
        Case(dcap, lambda: dcap_qvl.verify(quote, parsed, TDX_NOW), 60),
        Case("attestation: full TDX verification",
             lambda: real.check_platform(real.vendor_check(evidence, TDX_NOW), "worker"), 60, baseline=dcap,
             target=2e-3, note="parse + collateral window + dcap-qvl with the pinned root + policy"),
        Case(sim, full_sim, 60, note="envelope, claims, chain, three signatures, policy"),
        Case("attestation: cache hit", lambda: cached.verify(raw, role="worker", channel_key=channel_key, now=now),
             5000, baseline=sim, target=20e-6),
    ])  # fmt: skip


# --- SQLite ---------------------------------------------------------------------------------------


def sqlite_commits(m: Micro, tmp: Path) -> None:
    # fewer calls with an fsync per commit (synchronous=full): each costs milliseconds
    for mode, calls in (("normal", 200), ("full", 40)):
        db = sqlite3.connect(tmp / f"raw-{mode}.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={mode.upper()}")
        db.execute("CREATE TABLE t (id BLOB PRIMARY KEY, v INTEGER NOT NULL)")
        store = PaymentStore(tmp / f"proxy-{mode}.db", synchronous=mode)
        try:
            compare_commits(m, db, store, mode, calls)
        finally:
            db.close()
            store.close()


def compare_commits(m: Micro, db: sqlite3.Connection, store: PaymentStore, mode: str, calls: int) -> None:
    """The raw commit and the charge, one call of each in turn, each call timed."""

    def raw_commit() -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t(id, v) VALUES(?, ?)", (os.urandom(16), 1))
        db.execute("COMMIT")

    accounts = ProxyAccounts(store, Ed25519PrivateKey.generate())
    client_channel, worker_channel, worker_key = os.urandom(32), os.urandom(32), os.urandom(32)
    accounts.open_client(client_channel, os.urandom(32))
    now = int(time.time())

    def charge() -> None:
        accounts.charge(
            request_id=os.urandom(16), client_channel=client_channel, worker_channel=worker_channel,
            worker_key=worker_key, cost=1000, commission=100, now=now,
        )  # fmt: skip

    raw_runs: list[float] = []
    raw_samples: list[float] = []
    charge_runs: list[float] = []
    charge_samples: list[float] = []
    calls = max(1, int(calls * m.scale))
    raw_commit()
    charge()
    for _ in range(m.suite.repeats):
        raw_batches: list[float] = []
        charge_batches: list[float] = []
        for _ in range(BATCHES):
            raw_times: list[float] = []
            charge_times: list[float] = []
            for _ in range(calls):  # one of each in turn: fsync latency drifts by the second
                for fn, times in ((raw_commit, raw_times), (charge, charge_times)):
                    start = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - start)
            raw_batches.append(statistics.fmean(raw_times))
            charge_batches.append(statistics.fmean(charge_times))
            raw_samples += raw_times
            charge_samples += charge_times
        raw_runs.append(statistics.median(raw_batches))
        charge_runs.append(statistics.median(charge_batches))
    base = f"baseline: raw SQLite INSERT + COMMIT (WAL, synchronous={mode})"
    m.record(base, raw_runs, samples=raw_samples)
    m.record(
        f"SQLite: ProxyAccounts.charge, one billed answer (synchronous={mode})",
        charge_runs,
        samples=charge_samples,
        baseline=base,
        note="one transaction: request row, two totals, payout voucher signed (Ed25519) and stored",
    )


def run(suite: Suite) -> None:
    m = Micro(suite)
    with tempfile.TemporaryDirectory(prefix="cocoon-micro-") as name:
        tmp = Path(name)
        suite.progress("frames")
        frames(m)
        suite.progress("HPKE sealing")
        sealing(m)
        suite.progress("usage records and vouchers")
        signatures(m, tmp)
        suite.progress("attestation")
        attestation(m)
        suite.progress(f"SQLite commits (in {tmp})")
        sqlite_commits(m, tmp)
