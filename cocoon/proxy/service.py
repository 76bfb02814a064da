"""The proxy: one TLS listener for workers and clients, routing and relaying.

The proxy reads only the clear routing fields of a request (model, stream flag, max tokens,
sizes); the body and the answer chunks are bytes it passes on. Logs carry stream ids, sizes
and token counts, never content.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.attest.errors import AttestationError
from cocoon.attest.node import NodeAttestation
from cocoon.chain.access import open_ledger, open_wallet, parse_address
from cocoon.chain.errors import ChainError
from cocoon.chain.registry import RegistryState, RegistryWatcher, policy_from_registry
from cocoon.channel.attested import AttestedVerifier
from cocoon.channel.connect import HandshakeFailed, accept
from cocoon.channel.peer import Peer, PeerGone, expiry_notice
from cocoon.channel.tls import load_certificate, server_context
from cocoon.channel.verify import ANY_KEY, PeerVerifier
from cocoon.config import ConfigError, ProxySettings, connection_options, data_dir, split_address
from cocoon.keys import parse_public_key, public_bytes
from cocoon.payments.accounts import NO_CONNECTION, Rollback
from cocoon.payments.store import DuplicateRequest, PaymentStore
from cocoon.payments.vouchers import VoucherError
from cocoon.protocol.errors import ErrorCode, LocalProtocolError
from cocoon.protocol.framing import DEFAULT_MAX_FRAME
from cocoon.protocol.messages import (
    MAX_WORKER_OFFERS,
    Announce,
    Cancel,
    Capacity,
    Data,
    End,
    Error,
    Goodbye,
    ListModels,
    ListWorkers,
    ModelList,
    Open,
    PayAccount,
    Prices,
    StreamRequest,
    Voucher,
    WorkerList,
    WorkerOffer,
)
from cocoon.proxy.payments import ProxyPayments
from cocoon.proxy.reputation import Reputation
from cocoon.proxy.router import RouteError, Router, WorkerEntry
from cocoon.proxy.scoring import PREFERENCES, Preference, choose
from cocoon.seal.errors import SealError
from cocoon.seal.request import sealed_hash
from cocoon.seal.usage import UsageRecord, verify_usage
from cocoon.status import write_status

log = logging.getLogger("cocoon.proxy")

# What a client awaits on a connection closed this long ago is written off (``_gone``)
CLOSED_WRITE_OFF_DELAY = 2.0
MAX_BILLED_ENDS = 64  # answers billed last per client connection, kept for a cancel that crosses their end
MAX_CLOSED_REMEMBERED = 10_000  # recently closed client connections kept, before the older are forgotten
MAX_ATTEMPTS = 3  # a request whose worker fails before its first chunk is retried, twice at most
BUSY_RETRY = 0.02  # seconds before a request a worker refused as full tries again (doubling)
BUSY_RETRY_MAX = 0.5
SAVE_EVERY = 10.0  # seconds between saves of the reputation file
# errors caused by the request, not by the worker: they neither count against it nor retry
CLIENT_FAULTS = frozenset({ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE, ErrorCode.UNKNOWN_MODEL})
# what a worker may end a request with. Any other code, one this version does not know (from a
# newer or a broken worker) or one that is the proxy's or the client's to say (payment_required
# would make the client top up its channel, no_worker make it seal the request anew), is the
# worker breaking the protocol: counted against it and relayed as protocol_error, never as is.
# (connection_lost is what this side's stream gets when the worker's connection ends.)
WORKER_CODES = CLIENT_FAULTS | {
    ErrorCode.SATURATED,
    ErrorCode.SEAL_ERROR,
    ErrorCode.ENGINE_ERROR,
    ErrorCode.INTERNAL,
    ErrorCode.TIMEOUT,
    ErrorCode.CANCELLED,
    ErrorCode.SHUTTING_DOWN,
    ErrorCode.PROTOCOL_ERROR,
    ErrorCode.CONNECTION_LOST,
}
MAX_BUCKETS = 10_000  # clients' rate buckets kept before the refilled ones are forgotten
WORKER_LIST_BUDGET = DEFAULT_MAX_FRAME - 64 * 1024  # bytes of offers in one worker list
OFFER_OVERHEAD = 512  # bytes an offer takes besides its evidence, at most


@dataclass
class Wanted:
    """Which workers a request may go to: those it is sealed for (public keys, hex) at the
    client's price cap (0: none), less those it was tried on."""

    candidates: frozenset[str]
    cap: int
    tried: set[str] = field(default_factory=set)


class Attempt(enum.Enum):
    DONE = "done"
    RETRY = "retry"
    BUSY = "busy"  # the worker is full (it serves other proxies too): try another, not its fault
    TIMED_OUT = "timed_out"  # no first answer in time: try another
    REFUSED = "refused"  # it crossed the worker's goodbye on that connection: try again, the worker's fresh one too


RENEW_CHECK = 600.0  # seconds between checks whether the certificate's evidence needs renewing


def verifier_from(settings: ProxySettings, attestation: NodeAttestation) -> PeerVerifier:
    """Workers must attest (and match a pinned key where keys are pinned); clients by key."""

    def keys(value: list[str] | str) -> list[bytes] | str:
        return ANY_KEY if value == ANY_KEY else [parse_public_key(k) for k in value]

    return AttestedVerifier(
        attestation.verifier,
        accept={"worker", "client"},
        pinned={"worker": keys(settings.worker_keys), "client": keys(settings.client_keys)},
    )


class Proxy:
    def __init__(
        self,
        settings: ProxySettings,
        key: Ed25519PrivateKey,
        attestation: NodeAttestation,
        verifier: PeerVerifier | None = None,
    ) -> None:
        self.settings = settings
        self.key = key
        self.attestation = attestation
        self.verifier = verifier or verifier_from(settings, attestation)
        self.router = Router(settings.models)
        reputation_file = Path(settings.reputation_file) if settings.reputation_file else data_dir() / "reputation.json"
        self.reputation = Reputation(reputation_file)
        self._rng = random.Random()
        self.worker_peers: dict[int, Peer] = {}
        self._renewing: set[int] = set()  # worker connections asked to redial before their evidence expires
        self._last_called: set[int] = set()  # those of them with half their notice left (``_last_call``)
        self._retiring: set[int] = set()  # worker connections drained and being closed (``_close_if_drained``)
        self._slot_freed = asyncio.Condition()
        self._waiting: dict[str, int] = {}  # per model: requests waiting for a slot
        self._relays: dict[tuple[int, int], asyncio.Task[None]] = {}
        # per client key, not per connection (a client may open several): its relays running,
        # and its rate bucket (tokens, last refill), kept across its reconnects
        self._client_relays: dict[bytes, int] = {}
        self._buckets: dict[bytes, tuple[float, float]] = {}
        self._buckets_pruned = 0.0
        self._connections: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.payments: ProxyPayments | None = None
        # client connection → its payment channel; keyed by the Peer itself, since an id() can
        # be reused by the next connection once this one is gone
        self._client_channels: dict[Peer, bytes] = {}
        # open client connection → its number, never reused: the books note the connection each
        # answer went out on, so that a reattach on another one does not write it off
        self._client_numbers: dict[Peer, int] = {}
        self._live_numbers: set[int] = set()
        self._closed_at: dict[int, float] = {}  # client connection number → when it closed (loop time)
        self._numbering = itertools.count(1)
        # per client connection: ``_billed_ends`` (stream id → request id and the channel billed)
        self._billed: dict[Peer, dict[int, tuple[bytes, bytes]]] = {}
        # request ids admitted and not yet done (with payments): a second request under the same
        # id while the first runs would be served and never billed (the id is billed once)
        self._ids_in_flight: set[bytes] = set()
        self._background: list[asyncio.Task[None]] = []
        self.stopped = asyncio.Event()  # set when the proxy must stop (a rollback was detected)
        self._closing = False
        self.fatal = ""

    async def start_payments(self) -> None:
        """With a chain: read the registry (policy, prices), open the books, and refuse to run
        on a database older than the chain."""
        settings = self.settings
        try:
            ledger = open_ledger(settings.chain, settings.chain_url)
            root = parse_address(settings.root)
            watcher = RegistryWatcher(ledger, root, self._registry_changed, settings.registry_poll)
            registry = await watcher.load()
        except ChainError as exc:
            raise ConfigError(f"cannot read the registry: {exc}") from exc
        self._base_policy = self.attestation.verifier.policy
        self._apply_policy(registry)
        store = PaymentStore(Path(settings.payments_db), settings.db_synchronous)
        self.payments = ProxyPayments(
            ledger=ledger,
            wallet=open_wallet(ledger, Path(settings.wallet_key)),
            root=root,
            key=self.key,
            store=store,
            registry=registry,
            redeem_threshold=settings.redeem_threshold,
            worker_deposit=settings.worker_deposit,
            commit_interval=settings.commit_interval,
        )
        try:
            await self.payments.check_rollback()
        except Rollback as exc:
            raise ConfigError(f"refusing to run: the payment database is older than the chain ({exc})") from exc
        except ChainError as exc:
            raise ConfigError(f"cannot check the payment channels: {exc}") from exc
        self._background.append(asyncio.create_task(watcher.run()))
        self._background.append(asyncio.create_task(self._settle_loop()))
        log.info("payments on: registry %s version %d, wallet %s", registry.address, registry.version,
                 self.payments.wallet.address.to_str(is_user_friendly=False))  # fmt: skip

    def _apply_policy(self, registry: RegistryState) -> None:
        self.attestation.verifier.set_policy(policy_from_registry(self._base_policy, registry))

    async def _registry_changed(self, registry: RegistryState) -> None:
        """Follow the registry: prices, and the images and models workers may run. A worker that
        is no longer allowed is disconnected."""
        self._apply_policy(registry)
        if self.payments is not None:
            self.payments.update_registry(registry)
        now = int(time.time())
        for peer in list(self.worker_peers.values()):
            try:
                self.attestation.verifier.verify(
                    peer.identity.evidence, role="worker", channel_key=peer.identity.public_key, now=now
                )
            except AttestationError as exc:
                log.warning("%s is no longer allowed by the registry (%s): disconnecting", peer.label, exc)
                await _send_quietly(peer, Error(stream_id=0, code=ErrorCode.UNAUTHORIZED, message=str(exc)))
                await peer.aclose(f"not allowed by the registry: {exc}")

    async def _settle_loop(self) -> None:
        assert self.payments is not None
        while True:
            await asyncio.sleep(self.settings.settle_interval)
            try:
                await self.payments.settle()
            except Exception:  # a chain hiccup must not stop settlement for good
                log.exception("settlement round failed")

    def _rollback(self, exc: Rollback) -> None:
        """A peer showed a newer state than our database: stop serving at once."""
        self.fatal = f"refusing to run: the payment database is older than a peer's state ({exc})"
        log.critical("%s", self.fatal)
        self.stopped.set()

    async def start(self) -> None:
        if self.settings.payments:
            await self.start_payments()
        ssl_context, cert_der = server_context(self.key, self.attestation.evidence(public_bytes(self.key)))
        self._ssl_context = ssl_context
        self._cert_ders: tuple[bytes, ...] = (cert_der,)
        host, port = split_address(self.settings.listen)
        self.server = await asyncio.start_server(self._on_connection, host, port, ssl=ssl_context)
        bound = self.server.sockets[0].getsockname()
        self.address = f"{bound[0]}:{bound[1]}"
        log.info("proxy %s listening on %s", public_bytes(self.key).hex(), self.address)
        write_status(self.settings.status_file, "ready", address=self.address, public_key=public_bytes(self.key).hex())
        self._renewal = asyncio.create_task(self._renew_certificate())
        self._saver = asyncio.create_task(self._save_reputation())

    async def _save_reputation(self) -> None:
        try:
            while True:
                await asyncio.sleep(SAVE_EVERY)
                self.reputation.save()
        finally:
            self.reputation.save()

    async def _renew_certificate(self) -> None:
        """Renew the evidence-carrying certificate before its evidence expires. The previous
        certificate stays acceptable for handshakes that were already shown it."""
        while True:
            await asyncio.sleep(RENEW_CHECK)
            expires = self.attestation.expires_at
            evidence = self.attestation.evidence(public_bytes(self.key))
            if self.attestation.expires_at != expires:
                cert_der = load_certificate(self._ssl_context, self.key, evidence)
                self._cert_ders = (cert_der, self._cert_ders[0])
                log.info("renewed the proxy certificate and its evidence")

    async def run(self) -> None:
        await self.start()
        assert self.server is not None
        serving = asyncio.create_task(self.server.serve_forever())
        stopping = asyncio.create_task(self.stopped.wait())
        try:
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            serving.cancel()
            stopping.cancel()
            await self.aclose()
        if self.fatal:
            raise ConfigError(self.fatal)

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self.server is not None:
            self.server.close()
            self._renewal.cancel()
            self._saver.cancel()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._relays.values()):
            task.cancel()
        for task in self._background:
            task.cancel()
        if self.payments is not None and not self.fatal:
            for entry in self.payments.workers.values():
                if entry.funding is not None:
                    entry.funding.cancel()
            try:
                if self.settings.settle_on_exit:
                    await self.payments.settle(force=True)
                else:
                    await self.payments.commit(force=True)
            except Exception as exc:  # noqa: BLE001 - the books must still be closed, below
                log.warning("could not settle on exit: %s", exc)
        if self.payments is not None:
            await self.payments.aclose()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        # read now: once the handshake fails, asyncio's SSL transport cannot tell any more
        peername = writer.get_extra_info("peername")
        try:
            options = connection_options(self.settings)
            try:
                peer = await accept(
                    reader,
                    writer,
                    cert_der=self._cert_ders,
                    role="proxy",
                    verifier=self.verifier,
                    connection_options=options,
                )
            except HandshakeFailed as exc:
                log.warning("rejected a connection from %s: %s", peername, exc)
                return
            log.info("%s connected", peer.label)
            if peer.identity.role == "worker":
                await self._serve_worker(peer)
            else:
                await self._serve_client(peer)
        except asyncio.CancelledError:
            # Shutdown. asyncio's stream server logs a cancelled connection task as an error on
            # Python 3.11, so the cancellation ends here: this task is the connection's top.
            pass
        finally:
            self._connections.discard(task)

    # --- workers -----------------------------------------------------------------------------

    async def _serve_worker(self, peer: Peer) -> None:
        handler = _WorkerHandler(self)
        self.worker_peers[id(peer)] = peer
        self._hold_for_fresh(peer.identity.public_key)  # (a worker's fresh connection, maybe)
        expiring: asyncio.TimerHandle | None = None
        lifetime = peer.identity.expires_at - time.time() if peer.identity.expires_at is not None else 0.0
        notice = expiry_notice(lifetime)
        if notice is not None:
            # The connection ends when the worker's evidence expires (``Peer``): stop routing to
            # it a little before, and ask it to redial, so that no request is cut at expiry.
            expiring = asyncio.get_running_loop().call_later(max(0.0, lifetime - notice), self._expiring, peer, notice)
        try:
            await peer.serve(handler)
        finally:
            if expiring is not None:
                expiring.cancel()
            self._renewing.discard(id(peer))
            self._last_called.discard(id(peer))
            self._retiring.discard(id(peer))
            self.worker_peers.pop(id(peer), None)
            self.router.remove(id(peer))
            log.info("%s disconnected: %s", peer.label, peer.close_reason)
            self._hold_for_fresh(peer.identity.public_key)  # (a fresh connection gone before it announced)
            await self._notify_slot()

    def _expiring(self, peer: Peer, notice: float) -> None:
        """Ask a worker whose evidence expires in ``notice`` seconds to redial. Its old connection
        keeps taking requests until the fresh one has announced (``renewed``): drained at once,
        it would leave the model without this worker for the redial, and requests would get
        503. But only until half the notice is left (``_last_call``)."""
        log.info("%s: its attestation expires soon; asked to redial", peer.label)
        self._renewing.add(id(peer))
        with contextlib.suppress(PeerGone, LocalProtocolError):
            peer.send_nowait(Goodbye(reason="your attestation expires soon: redial with fresh evidence"))
        asyncio.get_running_loop().call_later(notice / 2, self._last_call, peer)

    def _last_call(self, peer: Peer) -> None:
        """Half the notice is left and the worker's fresh connection has not announced yet: once
        the fresh one is connected, the old one takes no more requests, so that none starts
        there too late to end before its evidence does (and is cut); requests for the worker
        wait for the fresh one to announce (``_hold_for_fresh``)."""
        entry = self.router.workers.get(id(peer))
        if self.worker_peers.get(id(peer)) is not peer or entry is None or entry.draining:
            return  # closed, or replaced by the fresh connection already
        self._last_called.add(id(peer))
        self._hold_for_fresh(peer.identity.public_key)

    def _hold_for_fresh(self, key: bytes) -> None:
        """Worker ``key``'s connections past their last call are held while a fresh one of its
        is connected and has not announced, and take requests again when none is (a fresh one
        that failed before it announced): with nothing coming, requests that waited would get
        429s until the old connection's end, where they were served before."""
        connections = [(i, p) for i, p in self.worker_peers.items() if p.identity.public_key == key]
        fresh = any(i not in self._renewing for i, _ in connections)
        for worker_id, peer in connections:
            entry = self.router.workers.get(worker_id)
            if worker_id not in self._last_called or entry is None:
                continue
            if fresh and not entry.draining:
                log.info("%s: its fresh connection has not announced yet; requests wait for it", peer.label)
                self.router.hold(worker_id)
            elif not fresh and entry.renewing:
                log.info("%s: its fresh connection is gone; it takes requests again until it ends", peer.label)
                self.router.resume(worker_id)

    def renewed(self, peer: Peer) -> None:
        """A worker announced on ``peer``: its older connections asked to redial take no more
        requests, and close once their requests are done (``_close_if_drained``)."""
        key = peer.identity.public_key
        for worker_id, other in list(self.worker_peers.items()):
            if worker_id in self._renewing and other is not peer and other.identity.public_key == key:
                self.router.drain(worker_id)
                self._close_if_drained(worker_id)

    def _close_if_drained(self, worker_id: int) -> None:
        """Close a worker connection that takes no more requests (replaced by the worker's fresh
        one, or the worker said goodbye) once it has none left. The proxy closes it, not the
        worker: only the proxy knows when it stopped routing there (a worker closing it when
        idle cut a request the proxy sent before it read the fresh connection's announce). The
        payout voucher for the last answer was queued before, and goes out first."""
        entry = self.router.workers.get(worker_id)
        peer = self.worker_peers.get(worker_id)
        if entry is None or not entry.draining or entry.inflight or peer is None or worker_id in self._retiring:
            return
        if entry.renewing:
            return  # kept until its worker's fresh connection announces (``renewed``), for the waiters
        self._retiring.add(worker_id)
        task = asyncio.create_task(peer.aclose("no longer used: drained"))
        self._background.append(task)
        task.add_done_callback(self._background.remove)

    async def _notify_slot(self) -> None:
        async with self._slot_freed:
            self._slot_freed.notify_all()

    def _choose(self, model: str, wanted: Wanted, preference: Preference) -> WorkerEntry:
        """Among workers with room and in good standing, the better of two random ones."""
        now = time.time()
        # the connections are looked up at each choice: a worker that renews its connection
        # while a request waits for it is found on the fresh one
        suspended: set[int] = set()
        excluded: set[int] = set()
        allowed: set[int] = set()
        for w in self.router.workers.values():
            if w.offer.model != model:
                continue
            if w.key in wanted.tried:
                excluded.add(w.worker_id)
            if w.key in wanted.candidates and (not wanted.cap or w.offer.price_milli <= wanted.cap):
                allowed.add(w.worker_id)
            # suspended workers are left out before the room check: an idle suspended worker must
            # not hide that the good ones are busy (SATURATED: the request waits for a slot)
            if not self.reputation.stats(w.key).eligible(now):
                suspended.add(w.worker_id)
        try:
            entries = self.router.eligible(model, frozenset(excluded | suspended), frozenset(allowed))
        except RouteError as exc:
            if exc.code is ErrorCode.NO_WORKER and suspended:
                raise RouteError(ErrorCode.NO_WORKER, f"every worker for model {model!r} is suspended") from None
            raise
        stats = [self.reputation.stats(e.key) for e in entries]
        return entries[choose(entries, stats, preference, self._rng)]

    def _next_reinstatement(self, model: str) -> float:
        """Seconds until the next suspended worker for ``model`` is eligible again (inf: none)."""
        now = time.time()
        ends = [
            stats.suspended_until - now
            for w in self.router.workers.values()
            if w.offer.model == model
            and not (stats := self.reputation.stats(w.key)).banned
            and stats.suspended_until > now
        ]
        return max(0.0, min(ends)) if ends else math.inf

    async def _acquire(self, model: str, wanted: Wanted, preference: Preference = "balanced") -> WorkerEntry:
        """A worker slot for ``model``, waiting up to ``queue_timeout`` while all are busy."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.queue_timeout
        async with self._slot_freed:
            while True:
                try:
                    entry = self._choose(model, wanted, preference)
                except RouteError as exc:
                    remaining = deadline - loop.time()
                    if (
                        exc.code is not ErrorCode.SATURATED
                        or remaining <= 0
                        or self._waiting.get(model, 0) >= self.settings.max_queue
                    ):
                        raise
                    self._waiting[model] = self._waiting.get(model, 0) + 1
                    try:
                        with contextlib.suppress(TimeoutError):
                            # (nothing is notified when a suspension ends: look again then)
                            async with asyncio.timeout(min(remaining, self._next_reinstatement(model))):
                                await self._slot_freed.wait()
                    finally:
                        self._waiting[model] -= 1
                    continue
                self.router.acquire(entry)
                return entry

    # --- clients -----------------------------------------------------------------------------

    async def _serve_client(self, peer: Peer) -> None:
        number = self._client_numbers[peer] = next(self._numbering)
        self._live_numbers.add(number)
        try:
            await peer.serve(_ClientHandler(self))
        finally:
            for (peer_id, _), task in list(self._relays.items()):
                if peer_id == id(peer):
                    task.cancel()
            self._client_channels.pop(peer, None)
            self._billed.pop(peer, None)
            self._client_closed(self._client_numbers.pop(peer))
            log.info("%s disconnected: %s", peer.label, peer.close_reason)

    def _client_closed(self, number: int) -> None:
        self._live_numbers.discard(number)
        now = asyncio.get_running_loop().time()
        if len(self._closed_at) >= MAX_CLOSED_REMEMBERED:  # older ones are gone anyway
            self._closed_at = {n: t for n, t in self._closed_at.items() if now - t < CLOSED_WRITE_OFF_DELAY}
        self._closed_at[number] = now

    def _gone(self, number: int) -> bool:
        """Whether client connection ``number`` closed long enough ago that an answer which went
        out on it and was not paid for never reached its client (one that did, just before, is
        paid for within this delay, on the client's other connection)."""
        if number in self._live_numbers:
            return False
        closed_at = self._closed_at.get(number)
        return closed_at is None or asyncio.get_running_loop().time() - closed_at >= CLOSED_WRITE_OFF_DELAY

    def admit(self, client: Peer, message: Open) -> Error | None:
        """The per-client limits: concurrency, request rate, max_tokens cap."""
        settings = self.settings
        sid = message.stream_id
        if settings.max_tokens_cap and message.max_tokens > settings.max_tokens_cap:
            return Error(
                stream_id=sid, code=ErrorCode.BAD_REQUEST, message=f"max_tokens above {settings.max_tokens_cap}"
            )
        client_key = client.identity.public_key
        if settings.client_streams and self._client_relays.get(client_key, 0) >= settings.client_streams:
            return Error(
                stream_id=sid, code=ErrorCode.SATURATED, message="too many concurrent requests from this client"
            )
        if settings.client_rate:
            now = asyncio.get_running_loop().time()
            burst = max(1.0, settings.client_rate)
            full_after = burst / settings.client_rate
            if len(self._buckets) > MAX_BUCKETS and now - self._buckets_pruned >= full_after:
                # forget the clients whose bucket has refilled (at most once per refill time)
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
                self._buckets_pruned = now
            tokens, last = self._buckets.get(client_key, (burst, now))
            tokens = min(burst, tokens + (now - last) * settings.client_rate)
            if tokens < 1.0:
                self._buckets[client_key] = (tokens, now)
                return Error(stream_id=sid, code=ErrorCode.SATURATED, message="request rate limit reached")
            self._buckets[client_key] = (tokens - 1.0, now)
        if self.payments is not None:
            if message.request_id in self._ids_in_flight:
                return Error(stream_id=sid, code=ErrorCode.BAD_REQUEST, message="a request with this id is under way")
            if self.payments.store.request_billed(message.request_id):
                return Error(stream_id=sid, code=ErrorCode.BAD_REQUEST, message="this request id was already served")
            channel = self._client_channels.get(client)
            awaiting = set(message.awaiting)
            if channel is not None:
                self.payments.note_open(channel, awaiting, self._live_numbers, self._gone)
            refusal = self.payments.refusal(channel, awaiting)
            if refusal:
                return Error(stream_id=sid, code=ErrorCode.PAYMENT_REQUIRED, message=refusal)
        return None

    # --- payments ----------------------------------------------------------------------------

    def start_attach(self, client: Peer, message: PayAccount) -> None:
        task = asyncio.create_task(self._attach(client, message))
        self._background.append(task)
        task.add_done_callback(self._background.remove)

    async def _attach(self, client: Peer, message: PayAccount) -> None:
        sid = message.stream_id
        if self.payments is None:
            await _send_quietly(client, Error(stream_id=sid, code=ErrorCode.BAD_REQUEST, message="no payments here"))
            return
        attached = self._client_channels.get(client)
        try:
            # answers that went out on the client's other open connections are not written off:
            # it may be renewing one of them, which still delivers its answers (and is paid for them)
            terms = await self.payments.attach(
                client.identity.public_key, message, attached is None, self._live_numbers, only=attached
            )
        except Rollback as exc:
            self._rollback(exc)
            await _send_quietly(client, Error(stream_id=sid, code=ErrorCode.INTERNAL, message="proxy unavailable"))
            return
        except (ChainError, VoucherError) as exc:
            await _send_quietly(client, Error(stream_id=sid, code=ErrorCode.PAYMENT_REQUIRED, message=str(exc)))
            return
        if client.closed:  # it left while the chain was read: its books were already closed
            return
        self._client_channels[client] = terms.channel
        with contextlib.suppress(PeerGone):
            await client.send(terms)

    def accept_voucher(self, client: Peer, message: Voucher) -> None:
        if self.payments is None or self._client_channels.get(client) != message.channel:
            log.warning("%s sent a voucher for a channel it did not attach", client.label)
            return
        try:
            added = self.payments.accept_voucher(message)
        except VoucherError as exc:
            log.warning("%s: refused its voucher: %s", client.label, exc)
            return
        log.debug("%s: voucher #%d adds %d nanoTON", client.label, message.seqno, added)

    def start_relay(self, client: Peer, message: Open) -> None:
        refusal = self.admit(client, message)
        if refusal is not None:
            client.send_nowait(refusal)
            return
        key = (id(client), message.stream_id)
        client_key = client.identity.public_key
        # the answer is billed to the channel it was admitted on, whatever the connection names later
        channel = self._client_channels.get(client)
        request_id = message.request_id if self.payments is not None else None
        task = asyncio.create_task(self._relay(client, message, channel))
        self._relays[key] = task
        self._client_relays[client_key] = self._client_relays.get(client_key, 0) + 1
        if request_id is not None:
            self._ids_in_flight.add(request_id)
        task.add_done_callback(lambda _: self._relay_done(key, client_key, request_id))

    def _relay_done(self, key: tuple[int, int], client_key: bytes, request_id: bytes | None = None) -> None:
        self._relays.pop(key, None)
        if request_id is not None:
            self._ids_in_flight.discard(request_id)
        left = self._client_relays.get(client_key, 1) - 1
        if left > 0:
            self._client_relays[client_key] = left
        else:
            self._client_relays.pop(client_key, None)

    def cancel_relay(self, client: Peer, stream_id: int) -> None:
        task = self._relays.pop((id(client), stream_id), None)
        if task is not None:
            task.cancel()
        # A client that takes an answer's end never cancels its stream after it: one that does
        # gave the request up before the end reached it (its cancel and our end crossed), and
        # cannot pay without the receipt the end carries. Written off, as at a reattach.
        billed = self._billed.get(client, {}).pop(stream_id, None)
        if billed is not None and self.payments is not None:
            request_id, channel = billed
            self.payments.given_up(channel, request_id)

    def _billed_ends(self, client: Peer) -> dict[int, tuple[bytes, bytes]]:
        """The client's streams whose answer was billed last (stream id → request id), the
        newest ``MAX_BILLED_ENDS``: a cancel that crosses the end comes within a round trip."""
        billed = self._billed.setdefault(client, {})
        while len(billed) >= MAX_BILLED_ENDS:
            del billed[next(iter(billed))]
        return billed

    async def _relay(self, client: Peer, request: Open, channel: bytes | None = None) -> None:
        """Relay ``request`` to a worker, trying others when one fails before answering; its
        answer is billed to ``channel`` (the client's payment channel when it was admitted)."""
        try:
            await self._relay_attempts(client, request, channel)
        except Exception as exc:  # noqa: BLE001 - a bug (or the books' database failing) must end this
            # request with an error frame, not leave the client waiting for its idle timeout;
            # the type only: an exception's text may quote what it was handling
            log.error("request %d failed in the proxy: %s", request.stream_id, type(exc).__name__)
            await _send_quietly(
                client, Error(stream_id=request.stream_id, code=ErrorCode.INTERNAL, message="the proxy failed")
            )

    async def _relay_attempts(self, client: Peer, request: Open, channel: bytes | None) -> None:
        sid = request.stream_id
        # the body is sealed for these workers only: no other could open it
        wanted = Wanted(frozenset(key.hex() for key in request.candidates), request.max_price_milli)
        preference = request.routing if request.routing in PREFERENCES else "balanced"
        outcome = Attempt.RETRY
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.request_timeout  # across retries
        busy_until = min(deadline, loop.time() + self.settings.queue_timeout)  # waiting for room, in all
        busy_wait = BUSY_RETRY
        attempts = 0
        while attempts < MAX_ATTEMPTS:
            try:
                entry = await self._acquire(request.model, wanted, preference)
            except RouteError as exc:
                if wanted.tried:  # the candidates are used up: report why the last one failed
                    break
                await _send_quietly(client, Error(stream_id=sid, code=exc.code, message=str(exc)))
                return
            try:
                outcome = await self._relay_to(client, request, entry, deadline, channel)
            finally:
                self.router.release(entry)
                self._close_if_drained(entry.worker_id)
                await self._notify_slot()
            if outcome is Attempt.DONE:
                return
            if outcome is Attempt.REFUSED:  # (that connection now takes nothing: not chosen again)
                attempts += 1
                log.info("request %d: crossed the goodbye of worker %s; trying again", sid, entry.label)
                continue
            if outcome is Attempt.BUSY and loop.time() + busy_wait < busy_until:
                # Full with other proxies' requests (it told us it had room, and so it did others):
                # the request waits for room as it would have here, instead of a 429 at once. The
                # worker's capacity message (no room for us) arrives meanwhile, and ``_acquire``
                # then waits for its "room again" or picks another candidate.
                await asyncio.sleep(busy_wait)
                busy_wait = min(2 * busy_wait, BUSY_RETRY_MAX)
                continue
            wanted.tried.add(entry.key)
            attempts += 1
            why = {Attempt.BUSY: "is full", Attempt.TIMED_OUT: "timed out"}.get(outcome, "failed")
            log.info("request %d: worker %s %s before its first chunk; trying another", sid, entry.label, why)
        if outcome is Attempt.BUSY:  # full, not broken: the client may come back (429, Retry-After)
            error = Error(stream_id=sid, code=ErrorCode.SATURATED, message="every candidate worker is at capacity")
        elif outcome is Attempt.TIMED_OUT:  # (504, as when the time ran out on the last one)
            error = Error(stream_id=sid, code=ErrorCode.TIMEOUT, message="every candidate worker timed out")
        else:
            error = Error(stream_id=sid, code=ErrorCode.WORKER_LOST, message="every candidate worker failed")
        await _send_quietly(client, error)

    async def _relay_to(
        self, client: Peer, request: Open, entry: WorkerEntry, deadline: float, channel: bytes | None = None
    ) -> Attempt:
        """Relay one attempt, until ``deadline`` (loop time) at the latest. RETRY when the worker
        failed before its first chunk (nothing was sent to the client, so another worker may
        answer); DONE otherwise."""
        sid = request.stream_id
        worker = self.worker_peers.get(entry.worker_id)
        if worker is None:
            return Attempt.RETRY
        loop = asyncio.get_running_loop()
        started = loop.time()
        settings = self.settings
        # the wait for the first answer includes handing the request over: a worker whose
        # connection takes no writes (it stopped reading, yet still pings) would otherwise hold
        # the request, and its slot, until the backlog is declared dead, or for ever while it
        # takes a trickle
        first_limit = settings.first_token_timeout if request.stream else settings.request_timeout
        try:
            async with asyncio.timeout_at(min(started + first_limit, deadline)):
                upstream = await worker.open(
                    lambda wid: Open(
                        stream_id=wid,
                        model=request.model,
                        kind=request.kind,
                        stream=request.stream,
                        max_tokens=request.max_tokens,
                        body=request.body,
                        request_id=request.request_id,
                        candidates=request.candidates,
                        max_price_milli=request.max_price_milli,
                    )
                )
        except PeerGone:
            return Attempt.RETRY
        except TimeoutError:  # (``open`` has told the worker to drop the request)
            self.reputation.failure(entry.key, time.time(), timeout=True)
            log.warning("request %d: worker %s timed out taking the request", sid, entry.label)
            if loop.time() < deadline:
                return Attempt.TIMED_OUT
            await _send_quietly(client, Error(stream_id=sid, code=ErrorCode.TIMEOUT, message="the worker timed out"))
            return Attempt.DONE
        relayed = 0
        first_chunk = 0.0
        last_chunk = started

        def forward(message: Data) -> bool:
            """Pass a chunk on from the worker's read loop while the client keeps up; False
            leaves it (and every chunk after it) to this task, which waits for the client."""
            nonlocal relayed, last_chunk
            if client.closed or client.backed_up:
                return False
            try:
                client.send_nowait(Data(stream_id=sid, payload=message.payload))
            except LocalProtocolError:
                return False
            relayed += len(message.payload)
            last_chunk = loop.time()
            return True

        try:
            while True:
                message = upstream.receive_nowait()
                while message is None:
                    if relayed:
                        limit = settings.inter_token_timeout
                    elif request.stream:
                        limit = settings.first_token_timeout
                    else:  # a whole answer comes as one chunk: its generation is the wait
                        limit = settings.request_timeout
                    until = min(last_chunk + limit, deadline)
                    try:
                        message = await upstream.receive(timeout=max(0.0, until - loop.time()))
                    except TimeoutError:
                        if relayed and loop.time() < min(last_chunk + limit, deadline):
                            continue  # chunks went straight through meanwhile: the worker is not silent
                        raise
                if type(message) is Data:
                    if not relayed:
                        first_chunk = loop.time() - started
                    if client.closed:
                        raise PeerGone(client.close_reason)
                    relayed += len(message.payload)
                    last_chunk = loop.time()
                    client.send_nowait(Data(stream_id=sid, payload=message.payload))
                    if not upstream.ready:  # the chunks that arrived together leave together
                        await client.flush()
                        upstream.forward = forward  # the next ones go straight through
                elif isinstance(message, End):
                    record, problem = check_receipt(message, request, worker.identity.public_key)
                    if record is None:
                        log.warning("request %d via %s: refusing its usage record: %s", sid, entry.label, problem)
                        self.reputation.dispute(entry.key)
                        await client.send(Error(stream_id=sid, code=ErrorCode.BAD_RECEIPT, message=problem))
                        return Attempt.DONE
                    cost = self._bill(client, worker, record, entry.offer.price_milli, channel)
                    if cost and channel is not None:
                        self._billed_ends(client)[sid] = (record.request_id, channel)
                    end = End(
                        stream_id=sid,
                        usage=message.usage,
                        finish_reason=message.finish_reason,
                        receipt=message.receipt,
                        cost=cost,
                    )
                    if client.closed:
                        raise PeerGone(client.close_reason or "connection closed")
                    client.send_nowait(end)
                    # the worker's success is noted before the wait for the client's socket, which
                    # a cancel crossing the end (the client gave up just as it came) may cut short
                    duration = loop.time() - started
                    ttft = first_chunk if request.stream else None
                    self.reputation.success(entry.key, ttft, message.usage.completion_tokens, duration)
                    # debug, not info: a line per request is ~5 % of the proxy's CPU per short request
                    log.debug(
                        "request %d via %s: %d body bytes, %d answer bytes, %d+%d tokens in %.2f s",
                        sid,
                        entry.label,
                        len(request.body),
                        relayed,
                        message.usage.prompt_tokens,
                        message.usage.completion_tokens,
                        duration,
                    )
                    await client.flush()
                    return Attempt.DONE
                elif isinstance(message, Error):
                    if message.code not in WORKER_CODES:
                        code = message.code[:64]
                        log.warning("request %d: worker %s sent error code %r, not a worker's", sid, entry.label, code)
                        message = Error(
                            stream_id=sid,
                            code=ErrorCode.PROTOCOL_ERROR,
                            message=f"the worker failed with an error code it may not send ({code!r})",
                        )
                    if message.code == ErrorCode.SATURATED and not relayed:
                        return Attempt.BUSY
                    if message.code == ErrorCode.SHUTTING_DOWN and not relayed and worker.conn.goodbye_received:
                        return Attempt.REFUSED  # sent before its goodbye reached us: nobody's fault
                    if message.code not in CLIENT_FAULTS:
                        if message.code != ErrorCode.SEAL_ERROR:
                            self.reputation.failure(entry.key, time.time())
                        # else: a request the worker cannot open may be the client's doing (sealed
                        # for a key the worker no longer has, or garbage sent on purpose to get
                        # workers suspended): the next candidate tries it, this one is not blamed
                        if not relayed:
                            return Attempt.RETRY
                    if message.code == ErrorCode.CONNECTION_LOST:
                        message = Error(stream_id=sid, code=ErrorCode.WORKER_LOST, message="the worker went away")
                    await client.send(Error(stream_id=sid, code=message.code, message=message.message))
                    return Attempt.DONE
        except TimeoutError:
            upstream.cancel_nowait("timeout")  # never waits on a worker that is failing us
            self.reputation.failure(entry.key, time.time(), timeout=True)
            what = "its first chunk" if not relayed else "the next chunk"
            log.warning("request %d: worker %s timed out waiting for %s", sid, entry.label, what)
            if not relayed and loop.time() < deadline:
                return Attempt.TIMED_OUT
            await _send_quietly(client, Error(stream_id=sid, code=ErrorCode.TIMEOUT, message="the worker timed out"))
            return Attempt.DONE
        except PeerGone:  # the client left: stop the worker
            upstream.cancel_nowait("client gone")
            return Attempt.DONE
        except asyncio.CancelledError:
            upstream.cancel_nowait("client cancelled")
            raise
        finally:
            upstream.forward = None

    def _bill(self, client: Peer, worker: Peer, record: UsageRecord, price_milli: int, channel: bytes | None) -> int:
        """Charge the client's ``channel`` and credit the worker (committed before the end is
        released); the worker gets its new payout voucher. The cost, or 0 without payments."""
        if self.payments is None or channel is None:
            return 0
        try:
            connection = self._client_numbers.get(client, NO_CONNECTION)
            charge = self.payments.charge(channel, worker.identity.public_key, record, price_milli, connection)
        except DuplicateRequest:
            log.warning("request %s… was billed already; not billing it again", record.request_id.hex()[:8])
            return 0
        if charge is None:
            return 0
        payout = self.payments.payout_message(charge)
        if not worker.send_nowait(payout):
            # the connection closed after the answer's end (one the worker replaced, closed by
            # the worker): its fresh connection carries the voucher, or the next one makes up
            # for it (vouchers are cumulative)
            key = worker.identity.public_key
            for other in self.worker_peers.values():
                if other.identity.public_key == key and other.send_nowait(payout):
                    break
        return charge.cost

    def list_models(self, client: Peer, message: ListModels) -> None:
        settings = self.settings
        if self.payments is not None:
            p = self.payments.prices
            prices = Prices(
                nano_per_token=p.price_per_token,
                prompt_milli=p.prompt_mult // 10,
                cached_milli=p.cached_mult // 10,
                completion_milli=p.completion_mult // 10,
                reasoning_milli=p.reasoning_mult // 10,
                commission_milli=p.commission_bps // 10,
            )
            client.send_nowait(ModelList(stream_id=message.stream_id, models=self.router.models(), prices=prices))
            return
        prices = Prices(
            nano_per_token=settings.price_nano_per_token,
            prompt_milli=round(settings.prompt_multiplier * 1000),
            cached_milli=round(settings.cached_multiplier * 1000),
            completion_milli=round(settings.completion_multiplier * 1000),
            reasoning_milli=round(settings.reasoning_multiplier * 1000),
            commission_milli=round(settings.commission * 1000),
        )
        client.send_nowait(ModelList(stream_id=message.stream_id, models=self.router.models(), prices=prices))

    def list_workers(self, client: Peer, message: ListWorkers) -> None:
        """The live workers for a model, least loaded first, each with the evidence it showed
        us, so the client can verify them itself and seal to their HPKE keys, and with its
        standing: suspended and banned workers are listed (the price book shows them) but
        never routed to."""
        try:
            entries = self.router.serving(message.model)
        except RouteError as exc:
            client.send_nowait(Error(stream_id=message.stream_id, code=exc.code, message=str(exc)))
            return
        now = time.time()
        # the least loaded first, as many as one message may carry: a longer list, or one past
        # the frame limit with its evidence, would make the client drop this connection
        offers: list[WorkerOffer] = []
        size = 0
        listed: set[bytes] = set()
        for entry in entries:
            peer = self.worker_peers.get(entry.worker_id)
            # a worker renewing its connection has two for a moment: listed once, the less
            # loaded (a client that sealed for both would be unable to open the answer)
            if peer is None or peer.identity.public_key in listed:
                continue
            listed.add(peer.identity.public_key)
            stats = self.reputation.stats(entry.key)
            offer = WorkerOffer(
                worker_id=peer.identity.public_key,
                evidence=peer.identity.evidence,
                capacity=entry.capacity,
                inflight=entry.inflight,
                price_milli=entry.offer.price_milli,
                ttft_ms=round(stats.ttft * 1000),
                tokens_per_second=stats.tokens_per_second,
                success_rate=stats.success_rate,
                errors=stats.errors,
                timeouts=stats.timeouts,
                suspended_until=0 if stats.eligible(now) else math.ceil(stats.suspended_until),
                banned=stats.banned,
            )
            size += len(offer.evidence) + OFFER_OVERHEAD
            if len(offers) == MAX_WORKER_OFFERS or size > WORKER_LIST_BUDGET:
                break
            offers.append(offer)
        client.send_nowait(WorkerList(stream_id=message.stream_id, workers=offers))


def check_receipt(end: End, request: Open, worker_key: bytes) -> tuple[UsageRecord | None, str]:
    """The worker's usage record if it can be billed; else None and why not."""
    try:
        record = verify_usage(end.receipt, worker_key)
    except SealError as exc:
        return None, str(exc)
    if record.request_id != request.request_id or record.sealed_request_hash != sealed_hash(request.body):
        return None, "the usage record is for another request"
    usage = end.usage
    counted = (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens, usage.reasoning_tokens)
    signed = (record.prompt_tokens, record.cached_tokens, record.completion_tokens, record.reasoning_tokens)
    if counted != signed:
        return None, "the clear usage differs from the signed record"
    if request.max_tokens and record.completion_tokens > request.max_tokens:
        # the client refuses such an answer (and pays nothing for it): not billed either
        return None, f"{record.completion_tokens} completion tokens, above the request's max_tokens"
    return record, ""


async def _send_quietly(peer: Peer, message: Error) -> None:
    with contextlib.suppress(PeerGone):
        await peer.send(message)


class _WorkerHandler:
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def stream_opened(self, peer: Peer, message: StreamRequest) -> None:
        peer.send_nowait(
            Error(stream_id=message.stream_id, code=ErrorCode.BAD_REQUEST, message="workers cannot open streams")
        )

    def stream_cancelled(self, peer: Peer, message: Cancel) -> None:
        pass

    def connection_message(self, peer: Peer, message: Announce | Capacity | Goodbye | Voucher) -> None:
        if isinstance(message, Voucher):
            log.warning("%s sent a voucher; workers are paid, they do not pay", peer.label)
            return
        if isinstance(message, Capacity):
            # the worker is full (no room beyond what it holds for us) or has room again
            if self.proxy.router.set_capacity(id(peer), message.capacity):
                asyncio.create_task(self.proxy._notify_slot())  # noqa: RUF006 - short-lived
            return
        if isinstance(message, Announce):
            payments = self.proxy.payments
            if payments is not None:
                if len(message.wallet) != 32:
                    log.warning("%s announced no wallet; this proxy pays its workers", peer.label)
                    peer.send_nowait(
                        Error(stream_id=0, code=ErrorCode.BAD_REQUEST, message="announce a wallet to be paid")
                    )
                    return
                try:
                    payments.add_worker(peer.identity.public_key, message.wallet, message.paid_seqno)
                except Rollback as exc:
                    self.proxy._rollback(exc)
                    return
            self.proxy.router.announce(id(peer), peer.label, message, peer.identity.public_key.hex())
            self.proxy.renewed(peer)
            log.info(
                "%s serves %s on %s, capacity %d, price ×%.3f",
                peer.label,
                message.model,
                message.engine,
                message.capacity,
                message.price_milli / 1000,
            )
            asyncio.create_task(self.proxy._notify_slot())  # noqa: RUF006 - short-lived
        else:
            self.proxy.router.drain(id(peer))
            log.info("%s is draining: %s", peer.label, message.reason)
            self.proxy._close_if_drained(id(peer))
            # requests waiting for it (held for a fresh connection) learn at once it will not serve
            asyncio.create_task(self.proxy._notify_slot())  # noqa: RUF006 - short-lived


class _ClientHandler:
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def stream_opened(self, peer: Peer, message: StreamRequest) -> None:
        if isinstance(message, ListModels):
            self.proxy.list_models(peer, message)
        elif isinstance(message, ListWorkers):
            self.proxy.list_workers(peer, message)
        elif isinstance(message, PayAccount):
            self.proxy.start_attach(peer, message)
        else:
            self.proxy.start_relay(peer, message)

    def stream_cancelled(self, peer: Peer, message: Cancel) -> None:
        self.proxy.cancel_relay(peer, message.stream_id)

    def connection_message(self, peer: Peer, message: Announce | Capacity | Goodbye | Voucher) -> None:
        if isinstance(message, Voucher):
            self.proxy.accept_voucher(peer, message)
        elif isinstance(message, (Announce, Capacity)):
            log.warning("%s sent a worker's %s; only workers send it", peer.label, type(message).__name__)
