"""The worker: keeps a connection to each configured proxy and serves requests on its engine.

Workers dial out (so they work behind NAT) and redial with exponential backoff and jitter.
Capacity is shared by all proxies. Logs carry request ids, sizes and token counts, never text.

The engine runs ``capacity`` requests at once; up to ``queue`` more are taken and wait here,
unsealed, for a free slot (``queue_timeout`` at most, then they are refused as saturated, and the
proxy tries another worker). A slot that frees then starts the next request at once: queued at
the proxy instead, it would wait for the answer's end to reach the proxy and the next request to
come back (milliseconds on one machine; a round trip between data centres).

A request runs once: one whose id the worker is running or has served lately, on any stream or
connection, is refused (``replay``); and each answer is sealed under keys of its own (a fresh
response nonce), so that even a request run twice gives the proxy nothing to read or splice.

Answer chunks leave as soon as the engine yields them. When the engine had several ready at
once (it outpaced the network), they are sealed together into one answer chunk and one frame,
up to a bound; no chunk ever waits for a later one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.attest.node import NodeAttestation
from cocoon.chain.access import open_ledger, open_wallet, parse_address
from cocoon.chain.errors import ChainError
from cocoon.chain.registry import RegistryState, RegistryWatcher, policy_from_registry
from cocoon.channel.attested import AttestedVerifier
from cocoon.channel.connect import HandshakeFailed, dial, software_version
from cocoon.channel.peer import Peer, PeerGone, renewal_delay
from cocoon.config import ConfigError, PeerPin, WorkerSettings, connection_options, split_address
from cocoon.engine.base import (
    Chunk,
    Engine,
    EngineError,
    EngineEvent,
    EngineRefused,
    EngineRequest,
    Finished,
    PushingEngine,
)
from cocoon.keys import parse_public_key, public_bytes
from cocoon.openai.schemas import InvalidRequest, engine_params, parse_request
from cocoon.payments.store import PaymentStore
from cocoon.payments.vouchers import VoucherError
from cocoon.protocol.errors import ErrorCode, LocalProtocolError
from cocoon.protocol.messages import (
    Announce,
    Cancel,
    Capacity,
    Data,
    End,
    Error,
    Goodbye,
    Open,
    StreamRequest,
    Voucher,
)
from cocoon.seal.errors import SealError
from cocoon.seal.request import open_request, sealed_hash
from cocoon.seal.response import RESPONSE_NONCE_SIZE, ChunkSealer
from cocoon.seal.usage import UsageRecord, sign_usage
from cocoon.status import write_status
from cocoon.worker.payments import WorkerPayments
from cocoon.worker.replay import ReplayGuard

log = logging.getLogger("cocoon.worker")

STABLE_AFTER = 10.0  # a connection that lasted this long resets the backoff
IDLE_POLL = 0.05  # seconds between checks whether a connection told goodbye has requests left
CLOSE_GRACE = 5.0  # seconds such a connection stays open after its last request (``_close_when_idle``)
HANDOVER = 1.0  # seconds between a fresh connection's announce and the goodbye on the one it replaces
MAX_COALESCED_CHUNKS = 16  # engine chunks that were ready together, sealed as one answer chunk at most
MAX_COALESCED_BYTES = 16 * 1024  # and their encoded size at most (a larger chunk still goes alone)
MAX_TAKEN = 4096  # requests in the worker at once, running and queued (an announce names no more)
CAPACITY_SINCE = (0, 2, 0)  # proxies of this version on know the capacity message (older ones refuse it)


def shares(taken: int, held: dict[int, int], connections: Iterable[int]) -> dict[int, int]:
    """What each proxy connection is told it may send: the whole capacity while the worker has
    room, and only what it holds there once the worker is full (with requests of other proxies
    too, which each proxy cannot see). Whether a proxy has room at a worker depends only on
    whether the worker is full, so it is told at those changes alone: a message per request
    start and end would wake an idle proxy hundreds of times a second."""
    if sum(held.values()) < taken:
        return dict.fromkeys(connections, taken)
    return {c: held.get(c, 0) for c in connections}


class Worker:
    def __init__(
        self, settings: WorkerSettings, engine: Engine, key: Ed25519PrivateKey, attestation: NodeAttestation
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.key = key
        # its public key, which names it in sealed requests and receipts: derived once (from the
        # private key, 25 µs on a request's way in when the process idled before it)
        self.worker_id = public_bytes(key)
        self.attestation = attestation
        self.active: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._closing: set[asyncio.Task[None]] = set()  # connections closing once their requests end
        self._goodbyes: dict[int, asyncio.Event] = {}  # per connection: set when it is to be replaced
        self._replacing: dict[str, Peer] = {}  # per proxy: the connection we replace ourselves (``_renew``)
        self._retiring: set[int] = set()  # connections closing once replaced and idle (``_close_when_idle``)
        self.connected: dict[str, Peer] = {}
        self._json = msgspec.json.Encoder()
        self.payments: WorkerPayments | None = None
        self._slots = asyncio.Semaphore(settings.capacity)  # the engine's; requests beyond them wait
        self._sharing: dict[int, Peer] = {}  # connections to proxies told their share of our capacity
        self._held: Counter[int] = Counter()  # per connection: its requests here, running or queued
        self._told: dict[int, int] = {}  # per connection: the capacity it was last told
        self._telling = False  # shares to tell at the end of this turn of the event loop
        self._replays = ReplayGuard()  # request ids taken to run: a second Open of one is refused

    def announce(self, proxy_key: bytes = b"") -> Announce:
        return Announce(
            model=self.settings.model,
            engine=self.engine.name,
            capacity=self.taken,
            price_milli=round(self.settings.price_coefficient * 1000),
            max_tokens=self.engine.max_tokens,
            wallet=self.payments.wallet_id if self.payments else b"",
            paid_seqno=self.payments.paid_seqno(proxy_key) if self.payments else 0,
        )

    @property
    def taken(self) -> int:
        """How many requests this worker takes at once: its engine's slots and its queue."""
        return min(MAX_TAKEN, self.settings.capacity + self.settings.queue)

    async def start_payments(self) -> RegistryWatcher:
        """With a chain: the registry decides which proxy images this worker accepts, and the
        books keep the proxies' payout vouchers."""
        settings = self.settings
        verifier = self.attestation.verifier
        base = verifier.policy

        def follow(state: RegistryState) -> None:
            verifier.set_policy(policy_from_registry(base, state))

        try:
            ledger = open_ledger(settings.chain, settings.chain_url)
            watcher = RegistryWatcher(ledger, parse_address(settings.root), follow, settings.registry_poll)
            follow(await watcher.load())
            self.payments = WorkerPayments(
                ledger=ledger,
                wallet=open_wallet(ledger, Path(settings.wallet_key)),
                root=parse_address(settings.root),
                key=self.key,
                store=PaymentStore(Path(settings.payments_db), settings.db_synchronous),
                redeem_threshold=settings.redeem_threshold,
            )
        except ChainError as exc:
            raise ConfigError(str(exc)) from exc
        return watcher

    async def _settle_loop(self) -> None:
        assert self.payments is not None
        while True:
            await asyncio.sleep(self.settings.settle_interval)
            try:
                await self.payments.settle()
            except Exception:  # a chain hiccup must not stop settlement for good
                log.exception("settlement round failed")

    async def run(self) -> None:
        status = self.settings.status_file

        def progress(done: int, total: int, what: str) -> None:
            write_status(status, "loading", done=done, total=total, what=what)
            log.info("%s", what)

        watcher = await self.start_payments() if self.settings.payments else None
        progress(0, 1, "starting engine")
        await self.engine.start(progress)
        if not self.settings.proxies:
            log.warning("no proxies configured: this worker will serve nobody")
        loops = [asyncio.create_task(self._proxy_loop(pin)) for pin in self.settings.proxies]
        if watcher is not None:
            loops.append(asyncio.create_task(self._settle_loop()))
            loops.append(asyncio.create_task(watcher.run()))
        self._write_ready()
        try:
            await asyncio.gather(*loops)
        finally:
            for task in [*loops, *self._closing]:  # (connections told goodbye, still draining)
                task.cancel()
            for peer in list(self.connected.values()):
                with contextlib.suppress(Exception):
                    await peer.send(Goodbye(reason="worker stopping"))
                await peer.aclose("worker stopping")
            await self.engine.aclose()
            if self.payments is not None:
                if self.settings.settle_on_exit:
                    with contextlib.suppress(ChainError, OSError):
                        await self.payments.settle(force=True)
                await self.payments.ledger.aclose()
                self.payments.store.close()

    def _write_ready(self) -> None:
        write_status(
            self.settings.status_file,
            "ready",
            model=self.settings.model,
            proxies=sorted(self.connected),
        )

    async def _proxy_loop(self, pin: PeerPin) -> None:
        host, port = split_address(pin.address)
        pinned = {"proxy": [parse_public_key(pin.public_key)]} if pin.public_key else {}
        verifier = AttestedVerifier(self.attestation.verifier, accept={"proxy"}, pinned=pinned)
        delay = self.settings.reconnect_min
        options = connection_options(self.settings)
        while True:
            started = time.monotonic()
            try:
                peer = await dial(
                    host,
                    port,
                    key=self.key,
                    role="worker",
                    verifier=verifier,
                    evidence=self.attestation.evidence(self.worker_id),
                    connection_options=options,
                    timeout=self.settings.connect_timeout,
                )
            except HandshakeFailed as exc:
                log.warning("proxy %s: %s; retrying in %.1f s", pin.address, exc, delay)
            else:
                log.info("connected to proxy %s", pin.address)
                self.connected[pin.address] = peer
                self._write_ready()
                goodbye = self._goodbyes[id(peer)] = asyncio.Event()
                serving = asyncio.create_task(self._serve_proxy(pin.address, peer))
                said_goodbye = asyncio.create_task(goodbye.wait())
                try:
                    await asyncio.wait({serving, said_goodbye}, return_when=asyncio.FIRST_COMPLETED)
                except asyncio.CancelledError:
                    serving.cancel()
                    raise
                finally:
                    said_goodbye.cancel()
                stable = time.monotonic() - started > STABLE_AFTER
                if stable:
                    delay = self.settings.reconnect_min
                if not serving.done():
                    # The proxy takes no more requests on this connection: it finishes those it
                    # has and closes (``_close_when_idle``) while a fresh one is dialed, so that
                    # the proxy never goes without this worker (at once, unless the connection
                    # was short-lived: a proxy saying goodbye at every connection gets backoff).
                    self._closing.add(serving)
                    serving.add_done_callback(self._closing.discard)
                    if stable:
                        continue
                else:
                    log.warning("lost proxy %s (%s); redialing in %.1f s", pin.address, peer.close_reason, delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.settings.reconnect_max)

    async def _serve_proxy(self, address: str, peer: Peer) -> None:
        loop = asyncio.get_running_loop()
        renewal: asyncio.TimerHandle | None = None
        try:
            if not peer.send_nowait(self.announce(peer.identity.public_key)):
                raise PeerGone(peer.close_reason or "connection closed")
            version = software_version(peer.identity.software)
            if version is not None and version >= CAPACITY_SINCE:
                self._sharing[id(peer)] = peer
                self._told[id(peer)] = self.taken
                self._tell_shares()  # (no room while the worker is full with other proxies' requests)
            # in one write with the announce: a proxy reading the announce alone would send
            # requests that the "no room" after it then refuses
            await peer.flush()
            replaced = self._replacing.pop(address, None)
            if replaced is not None:
                # a moment for the proxy to read the announce: it routes to this connection
                # before the old one stops taking requests, and none gets "no worker"
                loop.call_later(HANDOVER, self._say_goodbye, replaced)
            renew_in = renewal_delay(peer, replaced, f"proxy {peer.label}")
            if renew_in is not None:
                renewal = loop.call_later(renew_in, self._renew, address, peer)
            await peer.serve(self)
        except PeerGone:
            pass
        finally:
            if renewal is not None:
                renewal.cancel()
            self._goodbyes.pop(id(peer), None)
            if self.connected.get(address) is peer:  # not yet replaced by a fresh connection
                del self.connected[address]
            self._write_ready()
            self._cancel_all(peer)
            self._sharing.pop(id(peer), None)
            self._told.pop(id(peer), None)
            self._tell_shares()

    def _renew(self, address: str, peer: Peer) -> None:
        """The proxy's evidence expires soon in our eyes: dial a fresh connection; once it has
        announced, the old one says goodbye (``_say_goodbye``), finishes its requests and closes."""
        if peer.closed or self.connected.get(address) is not peer or not (goodbye := self._goodbyes.get(id(peer))):
            return  # (replaced already: the proxy asked first)
        log.info("proxy %s: its attestation expires soon; renewing the connection", peer.label)
        self._replacing[address] = peer
        goodbye.set()  # the proxy loop dials a fresh connection
        self._close_soon(peer)

    def _say_goodbye(self, peer: Peer) -> None:
        with contextlib.suppress(PeerGone, LocalProtocolError):
            peer.send_nowait(Goodbye(reason="renewed: your attestation expires soon"))

    def _close_soon(self, peer: Peer) -> None:
        """Close ``peer`` when it is no longer needed (``_close_when_idle``), once."""
        if id(peer) in self._retiring:
            return
        self._retiring.add(id(peer))
        task = asyncio.create_task(self._close_when_idle(peer, self._address_of(peer)))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _address_of(self, peer: Peer) -> str | None:
        return next((address for address, connected in self.connected.items() if connected is peer), None)

    def _tell_shares_soon(self) -> None:
        """``_tell_shares`` once for whatever starts and ends in this turn of the event loop."""
        if not self._telling:
            self._telling = True
            asyncio.get_running_loop().call_soon(self._tell_shares)

    def _tell_shares(self) -> None:
        """Tell each proxy how many requests it may send now, where that changed: a worker
        serving several proxies would otherwise be offered its whole capacity by each, and refuse
        what comes beyond it (``saturated``) where the proxy could have waited for it."""
        self._telling = False
        for connection, share in shares(self.taken, self._held, self._sharing).items():
            if self._told.get(connection) != share:
                self._told[connection] = share
                with contextlib.suppress(PeerGone, LocalProtocolError):
                    self._sharing[connection].send_nowait(Capacity(capacity=share))

    def _release(self, key: tuple[int, int]) -> None:
        """A request is done with (finished, failed or cancelled): its connection holds one less."""
        self.active.pop(key, None)
        self._held[key[0]] -= 1
        if self._held[key[0]] <= 0:
            del self._held[key[0]]
        self._tell_shares_soon()

    # --- PeerHandler ------------------------------------------------------------------------

    def stream_opened(self, peer: Peer, message: StreamRequest) -> None:
        if not isinstance(message, Open):
            peer.send_nowait(
                Error(stream_id=message.stream_id, code=ErrorCode.BAD_REQUEST, message="workers only serve requests")
            )
            return
        if len(self.active) >= self.taken:
            peer.send_nowait(Error(stream_id=message.stream_id, code=ErrorCode.SATURATED, message="worker at capacity"))
            return
        key = (id(peer), message.stream_id)
        task = asyncio.create_task(self._serve(peer, message))
        self.active[key] = task
        self._held[key[0]] += 1
        task.add_done_callback(lambda _: self._release(key))
        self._tell_shares_soon()

    def stream_cancelled(self, peer: Peer, message: Cancel) -> None:
        task = self.active.pop((id(peer), message.stream_id), None)
        if task is not None:
            log.info("request %d cancelled by the proxy", message.stream_id)
            task.cancel()

    def connection_message(self, peer: Peer, message: Announce | Capacity | Goodbye | Voucher) -> None:
        if isinstance(message, Voucher):
            if self.payments is None:
                return
            try:
                added = self.payments.accept(peer.identity.public_key, message)
            except VoucherError as exc:
                log.warning("proxy %s: refused its payout voucher: %s", peer.label, exc)
                return
            log.debug("proxy %s: payout voucher #%d adds %d nanoTON", peer.label, message.seqno, added)
        elif isinstance(message, Goodbye):
            # The proxy takes no more requests on this connection (it stops, or our attestation
            # is about to expire in its eyes): finish what runs, then close; the proxy loop has
            # dialed a fresh connection, with fresh evidence, meanwhile.
            log.info("proxy %s said goodbye: %s; closing once its requests are done", peer.label, message.reason)
            self._close_soon(peer)  # (first: it looks up the proxy's address, which the redial takes)
            if goodbye := self._goodbyes.get(id(peer)):
                goodbye.set()  # the proxy loop dials a fresh connection meanwhile

    async def _close_when_idle(self, peer: Peer, address: str | None) -> None:
        """Close a connection that is being replaced, should the proxy not close it itself (as
        proxies do once it has no request left and they route no more there): once a fresh
        connection to that proxy is up and this one has had no request for ``CLOSE_GRACE`` since.
        The proxy routes requests here until it reads the fresh connection's announce, so an
        idle moment alone is no sign that none is on its way; without a fresh connection (it
        failed) this one stays, until ``Peer`` cuts it at expiry."""
        loop = asyncio.get_running_loop()
        idle_since: float | None = None
        try:
            while not peer.closed:
                fresh = self.connected.get(address) if address is not None else None
                if fresh is None or fresh is peer or any(peer_id == id(peer) for peer_id, _ in self.active):
                    idle_since = None
                elif idle_since is None:
                    idle_since = loop.time()
                elif loop.time() - idle_since >= CLOSE_GRACE:
                    await peer.aclose("replaced by a fresh connection")
                    return
                await asyncio.sleep(IDLE_POLL)
        finally:
            self._retiring.discard(id(peer))

    def _cancel_all(self, peer: Peer) -> None:
        for (peer_id, _), task in list(self.active.items()):
            if peer_id == id(peer):
                task.cancel()

    # --- requests ------------------------------------------------------------------------------

    async def _serve(self, peer: Peer, message: Open) -> None:
        sid = message.stream_id
        started = time.monotonic()
        started_ms = int(time.time() * 1000)
        try:
            sealed, body, secret = open_request(
                message.body, worker_id=self.worker_id, hpke_key=self.attestation.hpke_recipient
            )
            if sealed.kind != message.kind or sealed.request_id != message.request_id:
                raise SealError("mismatch", "the clear routing fields do not match the sealed request")
            request = parse_request(sealed.kind, body)
            # the answer's shape follows the sealed request: a proxy that flipped the clear flag
            # would turn a whole answer into its last chunk (or one event) that the client pays for
            if bool(request.stream) != message.stream:
                raise SealError("mismatch", "the clear stream flag does not match the sealed request")
        except SealError as exc:
            await self._send(peer, Error(stream_id=sid, code=ErrorCode.SEAL_ERROR, message=str(exc)[:1000]))
            return
        except InvalidRequest as exc:
            # the error travels in the clear through the proxy: name the field, never its value
            where = f" (field {exc.param})" if exc.param else ""
            await self._send(
                peer, Error(stream_id=sid, code=ErrorCode.BAD_REQUEST, message=f"the request is not valid{where}")
            )
            return
        request_id = sealed.request_id
        # one run per request, whichever stream or connection it comes on: a replaying proxy gets
        # an error, not a second answer (checked and claimed in one step: no await between)
        if not self._replays.claim(request_id):
            log.warning("request %d: request id %s… was taken before; refusing it again", sid, request_id.hex()[:8])
            await self._send(
                peer, Error(stream_id=sid, code=ErrorCode.BAD_REQUEST, message="this request id was already served")
            )
            return
        claimed = True
        try:
            # made before the wait for a slot, which they then do not lengthen: the engine idles
            # from the slot's release until the next request is handed to it. The response nonce
            # is fresh for every answer: the answer's keys would otherwise follow from the request
            sealer = ChunkSealer(secret, request_id, secrets.token_bytes(RESPONSE_NONCE_SIZE))
            engine_request = EngineRequest(kind=message.kind, params=engine_params(request), stream=message.stream)
            try:
                async with asyncio.timeout(self.settings.queue_timeout):
                    await self._slots.acquire()
            except TimeoutError:
                # it never ran: the proxy, told "saturated", may send it here again
                claimed = False
                self._replays.unclaim(request_id)
                error = Error(stream_id=sid, code=ErrorCode.SATURATED, message="the worker's queue is full")
                await self._send(peer, error)
                return
            slot = _Slot(self._slots)
            try:
                await self._run(peer, message, request_id, engine_request, sealer, started, started_ms, slot)
            finally:
                slot.release()
        finally:
            if claimed:  # (the proxy's retry of a request refused as saturated may be here already)
                self._replays.ended(request_id)

    async def _run(
        self,
        peer: Peer,
        message: Open,
        request_id: bytes,
        engine_request: EngineRequest,
        sealer: ChunkSealer,
        started: float,
        started_ms: int,
        slot: _Slot,
    ) -> None:
        """Run an opened request on the engine, which has a slot for it."""
        sid = message.stream_id
        pushing = engine_request.stream and isinstance(self.engine, PushingEngine)
        events = None if pushing else self.engine.generate(engine_request)
        engine_started = time.monotonic()
        ready: list[bytes] = []  # encoded chunks the engine had ready together, not sent yet
        sink = _StreamSink(peer, sid, sealer)
        try:
            if events is None:
                assert isinstance(self.engine, PushingEngine)
                finished: Finished | None = await self.engine.stream_into(engine_request, sink)
                if sink.gone:
                    return  # the stream was cancelled or the proxy left
                await peer.flush()  # (a proxy that takes nothing is found dead here)
            else:
                finished = await self._pull(sink, events, ready)
            if finished is None:
                return  # the stream was cancelled or the proxy left
            engine_done = time.monotonic()
            if slot.release():  # the engine is done: a request that waits for it goes first,
                await asyncio.sleep(0)  # before this one's receipt is signed and sent
            if ready and not self._send_chunks(peer, sid, sealer, ready):
                return
            ready.clear()
            receipt = self._receipt(message, request_id, finished, started_ms)
            # the receipt travels twice: sealed as the final chunk, and in the clear
            await self._send(peer, Data(stream_id=sid, payload=sealer.seal(receipt, final=True)))
            usage, reason = finished.usage, finished.finish_reason
            await self._send(peer, End(stream_id=sid, usage=usage, finish_reason=reason, receipt=receipt))
            first_chunk = sink.first_at - engine_started if sink.first_at else -1.0
            log.info(
                "request %d done: %d prompt + %d completion tokens in %.2f s, "
                "engine's first chunk after %s ms, %d sealed chunks (%s), engine busy %.4f–%.4f",
                sid,
                usage.prompt_tokens,
                usage.completion_tokens,
                time.monotonic() - started,
                f"{first_chunk * 1e3:.1f}" if first_chunk >= 0 else "n/a",
                sealer.counter,
                reason,
                # on the monotonic clock: when the engine took the request and finished it
                # (the benchmark tells a request's wait for a busy engine from the network's)
                engine_started,
                engine_done,
            )
        except EngineError as exc:
            log.warning("request %d failed in the engine: %s", sid, exc)
            if ready and not self._send_chunks(peer, sid, sealer, ready):
                return  # what the engine made before it failed goes first, as it would have
            # a request the engine refused is the caller's to fix: not a failure of this worker
            code = ErrorCode.BAD_REQUEST if isinstance(exc, EngineRefused) else ErrorCode.ENGINE_ERROR
            await self._send(peer, Error(stream_id=sid, code=code, message=str(exc)[:1000]))
        except PeerGone:
            pass
        except Exception as exc:  # noqa: BLE001 - a bug must fail this request now, not leave the proxy waiting
            # the type only: an exception's text may quote the request or the answer
            log.error("request %d failed in the worker: %s", sid, type(exc).__name__)
            if ready and not self._send_chunks(peer, sid, sealer, ready):
                return
            await self._send(peer, Error(stream_id=sid, code=ErrorCode.INTERNAL, message="the worker failed"))
        finally:
            sink.close()
            if events is not None:
                await events.aclose()  # type: ignore[attr-defined]

    async def _pull(self, sink: _StreamSink, events: AsyncIterator[EngineEvent], ready: list[bytes]) -> Finished | None:
        """Take the engine's events in turn until it has finished (None: the stream is gone).
        Chunks the engine had ready together go as one sealed chunk to ``sink``'s stream;
        ``ready`` holds those not sent yet."""
        peer, sid, sealer = sink.peer, sink.sid, sink.sealer
        size = 0
        async for event in events:
            if isinstance(event, Chunk):
                if not sink.first_at:
                    sink.first_at = time.monotonic()
                encoded = self._json.encode(event.payload)
                ready.append(encoded)
                size += len(encoded)
                if event.more and len(ready) < MAX_COALESCED_CHUNKS and size < MAX_COALESCED_BYTES:
                    continue  # the next one is ready already: it goes in the same sealed chunk
                if not self._send_chunks(peer, sid, sealer, ready):
                    return None
                ready.clear()
                size = 0
                await peer.flush()
            elif isinstance(event, Finished):
                return event
        raise EngineError("the engine ended the answer without its usage")

    @staticmethod
    def _send_chunks(peer: Peer, sid: int, sealer: ChunkSealer, ready: list[bytes]) -> bool:
        """Seal the encoded chunks in ``ready`` as one answer chunk (JSON objects separated by
        newlines, which JSON text never contains) and queue it; False when the stream is gone."""
        payload = ready[0] if len(ready) == 1 else b"\n".join(ready)
        return peer.send_nowait(Data(stream_id=sid, payload=sealer.seal(payload)))

    def _receipt(self, message: Open, request_id: bytes, event: Finished, started_ms: int) -> bytes:
        record = UsageRecord(
            version=1,
            request_id=request_id,
            sealed_request_hash=sealed_hash(message.body),
            model_hash=self.attestation.model_hash,
            worker_key=self.worker_id,
            prompt_tokens=event.usage.prompt_tokens,
            cached_tokens=event.usage.cached_tokens,
            completion_tokens=event.usage.completion_tokens,
            reasoning_tokens=event.usage.reasoning_tokens,
            finish_reason=event.finish_reason or "",
            started_ms=started_ms,
            finished_ms=int(time.time() * 1000),
        )
        return sign_usage(record, self.key)

    async def _send(self, peer: Peer, message: Data | End | Error) -> None:
        with contextlib.suppress(PeerGone):
            await peer.send(message)


class _StreamSink:
    """Where a pushing engine hands one streamed request's chunks: sealed and queued on the
    proxy's connection in the same call (as one answer chunk, at most ``MAX_COALESCED_CHUNKS``
    or about ``MAX_COALESCED_BYTES`` to one)."""

    __slots__ = ("first_at", "gone", "peer", "sealer", "sid", "watch")

    def __init__(self, peer: Peer, sid: int, sealer: ChunkSealer) -> None:
        self.peer = peer
        self.sid = sid
        self.sealer = sealer
        self.first_at = 0.0  # monotonic time of the first chunk; 0: none yet
        self.gone = False
        self.watch: asyncio.Task[None] | None = None  # waits for a backlog to drain (``_watch``)

    def send(self, chunks: list[bytes]) -> bool:
        if self.gone:
            return False
        if not self.first_at:
            self.first_at = time.monotonic()
        peer, sid, sealer = self.peer, self.sid, self.sealer
        if len(chunks) <= MAX_COALESCED_CHUNKS and sum(map(len, chunks)) < MAX_COALESCED_BYTES:
            sent = Worker._send_chunks(peer, sid, sealer, chunks)
        else:
            sent = all(Worker._send_chunks(peer, sid, sealer, group) for group in _groups(chunks))
        if not sent:
            self.gone = True
            return False
        peer.nudge()
        if self.watch is None and peer.backed_up:
            self.watch = asyncio.ensure_future(self._watch())
        return True

    async def _watch(self) -> None:
        """Wait for the connection's backlog to drain, as a pulled answer waits after every
        chunk: a proxy that takes nothing for ``write_timeout`` is cut off there (which cancels
        its requests), instead of an engine that pushes filling memory with what it never reads."""
        try:
            await self.peer.flush()
        except PeerGone:
            pass
        finally:
            self.watch = None

    def close(self) -> None:
        if self.watch is not None:
            self.watch.cancel()

    @property
    def backed_up(self) -> bool:
        return self.peer.backed_up


def _groups(chunks: list[bytes]) -> Iterator[list[bytes]]:
    """``chunks`` in runs of at most ``MAX_COALESCED_CHUNKS``, a run closed once it reaches
    ``MAX_COALESCED_BYTES`` (as the engines' chunks are coalesced when pulled)."""
    group: list[bytes] = []
    size = 0
    for chunk in chunks:
        group.append(chunk)
        size += len(chunk)
        if len(group) == MAX_COALESCED_CHUNKS or size >= MAX_COALESCED_BYTES:
            yield group
            group, size = [], 0
    if group:
        yield group


class _Slot:
    """A request's hold on one of the engine's slots, given back once (when the engine has
    finished with it, or when the request ends otherwise)."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots: asyncio.Semaphore | None = slots

    def release(self) -> bool:
        """Give the slot back; whether every slot was taken (a request may be waiting for this one)."""
        if self._slots is None:
            return False
        waiting = self._slots.locked()
        self._slots.release()
        self._slots = None
        return waiting
