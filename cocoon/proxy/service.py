"""The proxy: one TLS listener for workers and clients, routing and relaying.

The proxy reads only the clear routing fields of a request (model, stream flag, max tokens,
sizes); the body and the answer chunks are bytes it passes on. Logs carry stream ids, sizes
and token counts, never content.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.attest.node import NodeAttestation
from cocoon.channel.attested import AttestedVerifier
from cocoon.channel.connect import HandshakeFailed, accept
from cocoon.channel.peer import Peer, PeerGone
from cocoon.channel.tls import load_certificate, server_context
from cocoon.channel.verify import ANY_KEY, PeerVerifier
from cocoon.config import ProxySettings, connection_options, split_address
from cocoon.keys import parse_public_key, public_bytes
from cocoon.protocol.errors import ErrorCode
from cocoon.protocol.messages import (
    Announce,
    Cancel,
    Data,
    End,
    Error,
    Goodbye,
    ListModels,
    ListWorkers,
    ModelList,
    Open,
    StreamRequest,
    WorkerList,
    WorkerOffer,
)
from cocoon.proxy.router import RouteError, Router, WorkerEntry
from cocoon.seal.errors import SealError
from cocoon.seal.request import sealed_hash
from cocoon.seal.usage import verify_usage
from cocoon.status import write_status

log = logging.getLogger("cocoon.proxy")

MAX_ATTEMPTS = 3  # a request whose worker vanishes before the first chunk is retried elsewhere


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
        self.worker_peers: dict[int, Peer] = {}
        self._slot_freed = asyncio.Condition()
        self._waiting = 0
        self._relays: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._connections: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
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
        try:
            await self.server.serve_forever()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
            self._renewal.cancel()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._relays.values()):
            task.cancel()

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
        try:
            await peer.serve(handler)
        finally:
            self.worker_peers.pop(id(peer), None)
            self.router.remove(id(peer))
            log.info("%s disconnected: %s", peer.label, peer.close_reason)
            await self._notify_slot()

    async def _notify_slot(self) -> None:
        async with self._slot_freed:
            self._slot_freed.notify_all()

    async def _acquire(self, model: str, exclude: frozenset[int], only: frozenset[int] | None = None) -> WorkerEntry:
        """A worker slot for ``model``, waiting up to ``queue_timeout`` while all are busy."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.queue_timeout
        async with self._slot_freed:
            while True:
                try:
                    entry = self.router.pick(model, exclude, only)
                except RouteError as exc:
                    remaining = deadline - loop.time()
                    if (
                        exc.code is not ErrorCode.SATURATED
                        or remaining <= 0
                        or self._waiting >= self.settings.max_queue
                    ):
                        raise
                    self._waiting += 1
                    try:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(remaining):
                                await self._slot_freed.wait()
                    finally:
                        self._waiting -= 1
                    continue
                self.router.acquire(entry)
                return entry

    # --- clients -----------------------------------------------------------------------------

    async def _serve_client(self, peer: Peer) -> None:
        try:
            await peer.serve(_ClientHandler(self))
        finally:
            for (peer_id, _), task in list(self._relays.items()):
                if peer_id == id(peer):
                    task.cancel()
            log.info("%s disconnected: %s", peer.label, peer.close_reason)

    def start_relay(self, client: Peer, message: Open) -> None:
        key = (id(client), message.stream_id)
        task = asyncio.create_task(self._relay(client, message))
        self._relays[key] = task
        task.add_done_callback(lambda _: self._relays.pop(key, None))

    def cancel_relay(self, client: Peer, stream_id: int) -> None:
        task = self._relays.pop((id(client), stream_id), None)
        if task is not None:
            task.cancel()

    async def _relay(self, client: Peer, request: Open) -> None:
        sid = request.stream_id
        tried: set[int] = set()
        # the body is sealed for these workers only: no other could open it
        candidates = set(request.candidates)
        cap = request.max_price_milli
        only = frozenset(
            wid
            for wid, peer in self.worker_peers.items()
            if peer.identity.public_key in candidates
            and (not cap or (entry := self.router.workers.get(wid)) is None or entry.offer.price_milli <= cap)
        )
        for _ in range(MAX_ATTEMPTS):
            try:
                entry = await self._acquire(request.model, frozenset(tried), only)
            except RouteError as exc:
                await _send_quietly(client, Error(stream_id=sid, code=exc.code, message=str(exc)))
                return
            tried.add(entry.worker_id)
            try:
                retry = await self._relay_to(client, request, entry)
            finally:
                self.router.release(entry)
                await self._notify_slot()
            if not retry:
                return
            log.info("request %d: worker %s vanished before answering; retrying", sid, entry.label)
        await _send_quietly(client, Error(stream_id=sid, code=ErrorCode.WORKER_LOST, message="workers went away"))

    async def _relay_to(self, client: Peer, request: Open, entry: WorkerEntry) -> bool:
        """Relay one attempt; True when the worker vanished before sending anything."""
        sid = request.stream_id
        worker = self.worker_peers.get(entry.worker_id)
        if worker is None:
            return True
        try:
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
            return True
        relayed = 0
        try:
            while True:
                message = await upstream.receive(timeout=self.settings.request_timeout)
                if isinstance(message, Data):
                    relayed += len(message.payload)
                    await client.send(Data(stream_id=sid, payload=message.payload))
                elif isinstance(message, End):
                    problem = check_receipt(message, request, worker.identity.public_key)
                    if problem:
                        log.warning("request %d via %s: refusing its usage record: %s", sid, entry.label, problem)
                        await client.send(Error(stream_id=sid, code=ErrorCode.BAD_RECEIPT, message=problem))
                        return False
                    end = End(
                        stream_id=sid, usage=message.usage, finish_reason=message.finish_reason, receipt=message.receipt
                    )
                    await client.send(end)
                    log.info(
                        "request %d via %s: %d body bytes, %d answer bytes, %d+%d tokens",
                        sid,
                        entry.label,
                        len(request.body),
                        relayed,
                        message.usage.prompt_tokens,
                        message.usage.completion_tokens,
                    )
                    return False
                elif isinstance(message, Error):
                    if message.code == ErrorCode.CONNECTION_LOST:
                        if relayed == 0:
                            return True
                        message = Error(stream_id=sid, code=ErrorCode.WORKER_LOST, message="the worker went away")
                    await client.send(Error(stream_id=sid, code=message.code, message=message.message))
                    return False
        except TimeoutError:
            log.warning("request %d: worker %s silent for %.0f s", sid, entry.label, self.settings.request_timeout)
            await upstream.cancel("timeout")
            await _send_quietly(client, Error(stream_id=sid, code=ErrorCode.TIMEOUT, message="the worker timed out"))
            return False
        except PeerGone:  # the client left: stop the worker
            await upstream.cancel("client gone")
            return False
        except asyncio.CancelledError:
            await upstream.cancel("client cancelled")
            raise

    def list_models(self, client: Peer, message: ListModels) -> None:
        client.send_nowait(ModelList(stream_id=message.stream_id, models=self.router.models()))

    def list_workers(self, client: Peer, message: ListWorkers) -> None:
        """The live workers for a model, least loaded first, each with the evidence it showed
        us, so the client can verify them itself and seal to their HPKE keys."""
        try:
            entries = self.router.serving(message.model)
        except RouteError as exc:
            client.send_nowait(Error(stream_id=message.stream_id, code=exc.code, message=str(exc)))
            return
        offers = [
            WorkerOffer(
                worker_id=peer.identity.public_key,
                evidence=peer.identity.evidence,
                capacity=entry.offer.capacity,
                inflight=entry.inflight,
                price_milli=entry.offer.price_milli,
            )
            for entry in entries
            if (peer := self.worker_peers.get(entry.worker_id)) is not None
        ]
        client.send_nowait(WorkerList(stream_id=message.stream_id, workers=offers))


def check_receipt(end: End, request: Open, worker_key: bytes) -> str:
    """Why the worker's usage record cannot be billed, or "" when it can."""
    try:
        record = verify_usage(end.receipt, worker_key)
    except SealError as exc:
        return str(exc)
    if record.request_id != request.request_id or record.sealed_request_hash != sealed_hash(request.body):
        return "the usage record is for another request"
    usage = end.usage
    counted = (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens, usage.reasoning_tokens)
    signed = (record.prompt_tokens, record.cached_tokens, record.completion_tokens, record.reasoning_tokens)
    if counted != signed:
        return "the clear usage differs from the signed record"
    return ""


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

    def connection_message(self, peer: Peer, message: Announce | Goodbye) -> None:
        if isinstance(message, Announce):
            self.proxy.router.announce(id(peer), peer.label, message)
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


class _ClientHandler:
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def stream_opened(self, peer: Peer, message: StreamRequest) -> None:
        if isinstance(message, ListModels):
            self.proxy.list_models(peer, message)
        elif isinstance(message, ListWorkers):
            self.proxy.list_workers(peer, message)
        else:
            self.proxy.start_relay(peer, message)

    def stream_cancelled(self, peer: Peer, message: Cancel) -> None:
        self.proxy.cancel_relay(peer, message.stream_id)

    def connection_message(self, peer: Peer, message: Announce | Goodbye) -> None:
        if isinstance(message, Announce):
            log.warning("%s sent an announce; only workers announce", peer.label)
