"""The client's half of end-to-end sealing: choose attested workers, seal to them, open their
answer, and accept only a usage record that matches what was received (the receipt)."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cocoon.attest.errors import AttestationError
from cocoon.attest.verifier import EvidenceVerifier
from cocoon.protocol.errors import ErrorCode
from cocoon.protocol.messages import End, WorkerOffer
from cocoon.seal.errors import SealError
from cocoon.seal.hpke import SenderSetup, prepare_sender
from cocoon.seal.request import seal_request, sealed_hash
from cocoon.seal.response import ChunkOpener
from cocoon.seal.usage import UsageRecord, verify_usage

PER_KEY = 4  # sender setups kept ready per worker key: a burst of this many seals without X25519
MAX_PREPARED = 256  # sender setups kept ready in all


class SealingFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Candidate:
    worker_id: bytes
    hpke_key: bytes
    model_hash: bytes
    price_milli: int = 1000  # the worker's price coefficient × 1000, as offered


def verified_candidates(
    offers: list[WorkerOffer],
    verifier: EvidenceVerifier,
    now: int,
    *,
    model: str = "",
    names: Mapping[bytes, str] | None = None,
) -> tuple[list[Candidate], list[str]]:
    """The offers whose evidence verifies (in the proxy's order), and why the others did not.
    With the registry's ``names`` (model hash → name), a worker must also attest the model the
    registry calls ``model``: the name it announces is its word (or the proxy's, which lists
    it), the hash its attestation's."""
    good, reasons = [], []
    taken: set[bytes] = set()
    for offer in offers:
        if offer.worker_id in taken:
            continue  # listed twice (a worker renewing its connection): sealed for once
        try:
            verdict = verifier.verify(offer.evidence, role="worker", channel_key=offer.worker_id, now=now)
        except AttestationError as exc:
            reasons.append(f"worker {offer.worker_id.hex()[:12]}: {exc}")
            continue
        if names is not None and names.get(verdict.claims.model_hash) != model:
            attested = names.get(verdict.claims.model_hash, "a model the registry does not list")
            reasons.append(f"worker {offer.worker_id.hex()[:12]}: it runs {attested!r}, not {model!r}")
            continue
        good.append(Candidate(offer.worker_id, verdict.claims.hpke_key, verdict.claims.model_hash, offer.price_milli))
        taken.add(offer.worker_id)
    return good, reasons


class PreparedSenders:
    """Sender setups made ahead of requests, up to ``per_key`` per worker key: sealing a request
    then costs no X25519 operation on its way out for a worker seen before, also for the
    requests of a burst (four arriving at once used to make three setups on their way out,
    while the first still needed the cores to reach the worker). Each setup is taken for one
    request only (a fresh ephemeral key per request, as HPKE requires) and made again once the
    request has gone. Bounded: the keys used longest ago go first."""

    def __init__(self, limit: int = MAX_PREPARED, per_key: int = PER_KEY) -> None:
        self.limit = limit
        self.per_key = per_key
        self._ready: dict[tuple[bytes, bytes], list[SenderSetup]] = {}  # (worker id, HPKE key) → setups
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def take(self, candidates: list[Candidate]) -> dict[bytes, SenderSetup]:
        """A ready setup for each of these candidates that has one, by worker id, removed from
        the store."""
        taken = {}
        for c in candidates:
            key = (c.worker_id, c.hpke_key)
            setups = self._ready.get(key)
            if setups:
                taken[c.worker_id] = setups.pop()
                self._count -= 1
                if not setups:  # (a request that fails before its refill leaves none)
                    del self._ready[key]
        return taken

    def refill(self, candidates: list[Candidate]) -> None:
        """Make setups for these candidates up to ``per_key`` each (about 80 µs each)."""
        for c in candidates:
            key = (c.worker_id, c.hpke_key)
            setups = self._ready.pop(key, [])
            self._ready[key] = setups  # (last: the most recently used)
            while len(setups) < self.per_key:
                try:
                    setups.append(prepare_sender(c.hpke_key))
                except SealError:
                    break  # not an X25519 key: sealing to it fails, and says so, when it is chosen
                self._count += 1
            if not setups:
                del self._ready[key]
        while self._count > self.limit:  # the setups of the keys used longest ago go first
            oldest = next(iter(self._ready))
            setups = self._ready[oldest]
            if setups:
                setups.pop()
                self._count -= 1
            if not setups:
                del self._ready[oldest]


class SealedCall:
    """Sealing state of one request: which workers may answer, and the answer's openers."""

    def __init__(
        self,
        kind: Any,
        body: bytes,
        candidates: list[Candidate],
        max_tokens: int | None,
        prepared: PreparedSenders | None = None,
    ) -> None:
        self.request_id = os.urandom(16)
        self.candidates = {c.worker_id: c for c in candidates}
        self.max_tokens = max_tokens
        try:
            self.sealed, secrets = seal_request(
                body,
                kind=kind,
                request_id=self.request_id,
                content_key=os.urandom(32),
                recipients=[(c.worker_id, c.hpke_key) for c in candidates],
                prepared=prepared.take(candidates) if prepared is not None else None,
            )
        except SealError as exc:
            raise SealingFailed(ErrorCode.SEAL_ERROR, f"cannot seal the request: {exc}") from exc
        self._openers = {wid: ChunkOpener(secret, self.request_id) for wid, secret in secrets.items()}
        self.worker: Candidate | None = None
        self._opener: ChunkOpener | None = None
        self.sealed_receipt = b""

    def open_chunk(self, chunk: bytes) -> bytes | None:
        """The plaintext of an answer chunk, or None for the final chunk (the receipt)."""
        try:
            if self._opener is None:
                # The first chunk says which candidate answers: only its key opens it.
                for worker_id, opener in self._openers.items():
                    try:
                        payload, final = opener.open(chunk)
                    except SealError:
                        continue
                    self._opener, self.worker = opener, self.candidates[worker_id]
                    break
                else:
                    raise SealError("tampered", "the answer opens with no candidate worker's key")
            else:
                payload, final = self._opener.open(chunk)
        except SealError as exc:
            raise SealingFailed(ErrorCode.SEAL_ERROR, f"the sealed answer is not intact: {exc}") from exc
        if final:
            self.sealed_receipt = payload
            return None
        return payload

    def check_end(self, end: End) -> UsageRecord:
        """The worker-signed usage record, after checking it against everything we know."""
        if self._opener is None or self.worker is None:
            raise SealingFailed(ErrorCode.SEAL_ERROR, "the answer ended before any sealed chunk")
        try:
            self._opener.finish()
        except SealError as exc:
            raise SealingFailed(ErrorCode.SEAL_ERROR, f"the sealed answer is not intact: {exc}") from exc
        if end.receipt != self.sealed_receipt:
            raise SealingFailed(
                ErrorCode.BAD_RECEIPT, "the usage record relayed in the clear differs from the sealed one"
            )
        try:
            record = verify_usage(self.sealed_receipt, self.worker.worker_id)
        except SealError as exc:
            raise SealingFailed(ErrorCode.BAD_RECEIPT, f"the usage record is invalid: {exc}") from exc
        if record.request_id != self.request_id or record.sealed_request_hash != sealed_hash(self.sealed):
            raise SealingFailed(ErrorCode.BAD_RECEIPT, "the usage record is for another request")
        if record.model_hash != self.worker.model_hash:
            raise SealingFailed(ErrorCode.BAD_RECEIPT, "the usage record names another model than the worker attested")
        if self.max_tokens is not None and record.completion_tokens > self.max_tokens:
            raise SealingFailed(ErrorCode.BAD_RECEIPT, "the usage record claims more tokens than were allowed")
        # every field: the application is shown the relayed usage, cached and reasoning tokens too
        usage = end.usage
        relayed = (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens, usage.reasoning_tokens)
        signed = (record.prompt_tokens, record.cached_tokens, record.completion_tokens, record.reasoning_tokens)
        if relayed != signed:
            raise SealingFailed(ErrorCode.BAD_RECEIPT, "the usage relayed differs from the signed record")
        return record


class Receipts:
    """The recent receipts, for ``GET /v1/cocoon/receipts``."""

    def __init__(self, size: int = 1000) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=size)

    def add(self, record: UsageRecord, signed: bytes, model: str, cost: int = 0) -> None:
        self._items.append(
            {
                "request_id": record.request_id.hex(),
                "model": model,
                "worker": record.worker_key.hex(),
                "model_hash": record.model_hash.hex(),
                "prompt_tokens": record.prompt_tokens,
                "cached_tokens": record.cached_tokens,
                "completion_tokens": record.completion_tokens,
                "reasoning_tokens": record.reasoning_tokens,
                "finish_reason": record.finish_reason,
                "started_ms": record.started_ms,
                "finished_ms": record.finished_ms,
                "received_at": int(time.time()),
                "signed_record": signed.hex(),
                "cost_nanoton": cost,
            }
        )

    def recent(self, limit: int) -> list[dict[str, Any]]:
        return list(self._items)[-limit:][::-1]
