"""What the client does with one OpenAI request: send it to the proxy, turn the answer back
into OpenAI responses. HTTP details stay in ``api``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from typing import Any

import msgspec

from cocoon.attest.verifier import EvidenceVerifier
from cocoon.channel.peer import Peer, PeerGone, Stream
from cocoon.client.link import NoProxy, ProxyLink, ProxyPool
from cocoon.client.payments import ClientPayments, PaymentSetupError, ProxyChannel
from cocoon.client.sealing import (
    Candidate,
    PreparedSenders,
    Receipts,
    SealedCall,
    SealingFailed,
    verified_candidates,
)
from cocoon.openai import sse
from cocoon.openai.errors import from_code
from cocoon.openai.schemas import Kind, Request, include_usage, max_tokens_of
from cocoon.protocol.errors import ErrorCode
from cocoon.protocol.messages import (
    MAX_AWAITING,
    Data,
    End,
    Error,
    ListModels,
    ListWorkers,
    Message,
    ModelInfo,
    ModelList,
    Open,
    Prices,
    StreamRequest,
    Usage,
    WorkerList,
    WorkerOffer,
)
from cocoon.proxy.scoring import raw_score, shortlist
from cocoon.seal.usage import UsageRecord

log = logging.getLogger("cocoon.client")

MAX_EVENTS_PER_WRITE = 64  # SSE events of chunks that arrived together, written at once
WORKER_LIST_TTL = 1.0  # seconds a verified worker list is used as it is
REFILL_DELAY = 0.01
"""Seconds after a request is sent before its sender setups are made again: past the request's
way in (2-4 ms), during which the X25519 work would compete for the cores with the proxy and the
worker carrying it, and with the other requests of a burst (0.5 ms of time to first token on 2
cores)."""
# Past the TTL and up to this age, a request still uses the list while a fresh one is asked for
# in the background: asking first would put a round trip to the proxy in its time to first token.
# A request that finds none of its candidates left asks again at once (``begin``).
WORKER_LIST_MAX_AGE = 30.0

_json = msgspec.json.Encoder()
_decode_fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode  # a JSON object, its fields unparsed
_NULL = msgspec.Raw(b"null")


class UpstreamError(Exception):
    """The network answered with an error (or none in time); ``code`` is an ``ErrorCode``.

    A code from the wire that this version does not know is the proxy's protocol error: the
    caller gets a 502, and the proxy is counted as failing (it is not one of the refusals in
    ``NOT_THE_PROXYS_FAULT``)."""

    def __init__(self, code: str, message: str) -> None:
        known = ErrorCode.known(code)
        if known is None:
            message = f"the proxy answered with an unknown error code {code[:64]!r}: {message}"
            known = ErrorCode.PROTOCOL_ERROR
        super().__init__(message)
        self.code = known


def usage_body(usage: Usage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cached_tokens:
        body["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    if usage.reasoning_tokens:
        body["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return body


def _start(work: Awaitable[None]) -> asyncio.Future[None] | None:
    """Run ``work`` now, in the caller's turn of the loop: None once it has finished so (an HTTP
    response's write that did not have to wait for the caller's socket), else a task that
    finishes it. Where a task would first wait for its turn of the loop, and cost one."""
    if not isinstance(work, Coroutine):
        return asyncio.ensure_future(work)
    coroutine = work
    try:
        waiting = coroutine.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_finish(coroutine, waiting))


async def _finish(coroutine: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Drive a coroutine started by hand (``_start``) to its end, as a task would: it is
    suspended on ``waiting``, what it yielded (a future, or None for a bare turn of the loop)."""
    try:
        while True:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                await asyncio.wait([waiting])  # (its outcome is the coroutine's to take, below)
            try:
                waiting = coroutine.send(None)
            except StopIteration:
                return
    except asyncio.CancelledError:
        coroutine.close()
        raise


class Call:
    """One request in flight through the proxy."""

    def __init__(
        self,
        kind: Kind,
        request: Request,
        stream: Stream,
        idle_timeout: float,
        request_timeout: float,
        sealing: SealedCall,
        receipts: Receipts,
        link: ProxyLink | None = None,
        payments: ClientPayments | None = None,
        paying: ProxyChannel | None = None,
    ) -> None:
        self.link = link
        self.payments = payments
        self.paying = paying  # the payment channel attached on the connection it was sent on
        self.cost = 0
        self.kind = kind
        self.sealing = sealing
        self.receipts = receipts
        self.request = request
        self.stream = stream
        self.idle_timeout = idle_timeout
        self.deadline = asyncio.get_running_loop().time() + request_timeout
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        self.id = prefix + uuid.uuid4().hex
        self.created = int(time.time())
        self.usage: Usage | None = None
        # the fields every streamed chunk gets, encoded once
        self._id_raw = msgspec.Raw(_json.encode(self.id))
        self._created_raw = msgspec.Raw(_json.encode(self.created))
        self._model_raw = msgspec.Raw(_json.encode(request.model))
        # run once the caller has the first answer (the service's deferred work: not before it)
        self.after_first_answer: Callable[[], None] | None = None
        self._ended = False  # no longer awaited (``finished``)
        self._aborting = False
        # streamed events written from the connection's read loop (``push_events``)
        self._write: Callable[[bytes], Awaitable[None]] | None = None
        self._with_usage = False
        self._waiting = False  # the request's task waits for the next message (and writes nothing)
        self._writing: asyncio.Future[None] | None = None  # a pushed write waiting for the caller
        self._pushed_at = 0.0  # loop time the last chunk was pushed to the caller

    def _first_answered(self) -> None:
        hook, self.after_first_answer = self.after_first_answer, None
        if hook is not None:
            hook()

    async def receive(self) -> Message:
        """The next message; a timeout after ``idle_timeout`` of silence or at the deadline.
        Chunks pushed to the caller meanwhile (``push_events``) break the silence."""
        while True:
            message = self.stream.receive_nowait()
            if message is None:
                loop = asyncio.get_running_loop()
                quiet_since = loop.time()
                while message is None:
                    now = loop.time()
                    left = self.deadline - now
                    # a whole answer comes as one message once it is made: only the deadline bounds
                    # the wait for it (the proxy waits as long), silence being no sign of trouble
                    quiet_since = max(quiet_since, self._pushed_at)
                    wait = min(self.idle_timeout - (now - quiet_since), left) if self.request.stream else left
                    self._waiting = True
                    try:
                        message = await self.stream.receive(max(0.0, wait))
                    except TimeoutError:
                        if self._pushed_at > quiet_since and loop.time() < self.deadline:
                            continue  # not silent: chunks went straight to the caller
                        if self._writing is not None:  # what was pushed goes out before the error
                            writing, self._writing = self._writing, None
                            await writing
                        await self.abort("timeout")
                        why = "the request took too long" if wait >= left else "no answer from the network"
                        raise UpstreamError(ErrorCode.TIMEOUT, f"{why}; gave up") from None
                    finally:
                        self._waiting = False
            if self._writing is not None:  # a pushed write goes first
                writing, self._writing = self._writing, None
                await writing
            opened = await self._open(message)
            if opened is not None:
                return opened

    def push_events(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        """Write the SSE events of later answer chunks from the connection's read loop, as they
        arrive: each chunk is opened, turned into events and handed to ``write`` (the HTTP
        response's) in that same call, instead of waking the request's task for every chunk.
        Only while the task waits for its next message and nothing is queued for it, so that the
        order never changes: an end, an error, a chunk that does not open, or one behind a write
        that waits for a slow caller goes through the queue and the task, as without this."""
        self._write = write
        self._with_usage = include_usage(self.request)
        self.stream.forward = self._push

    def _push(self, message: Data) -> bool:
        """``Stream.forward``: True when ``message`` was taken (written, or being written)."""
        if not self._waiting or self._writing is not None or self._write is None:
            return False  # the task is busy, or a write waits for the caller: through the queue, in order
        try:
            payload = self.sealing.open_chunk(message.payload)
        except SealingFailed:
            return False  # (nothing was taken from it) the task fails the request, as usual
        self._pushed_at = asyncio.get_running_loop().time()
        if payload is None:
            return True  # the sealed receipt: kept for the end
        try:
            if b"\n" in payload:  # chunks the worker had ready together, sealed as one
                events = b"".join([self._event(line, self._with_usage) for line in payload.split(b"\n")])
            else:
                events = self._event(payload, self._with_usage)
        except UpstreamError as exc:
            # the chunk is opened and gone: its error goes to the task in its place
            self.stream.forward = None
            self.stream.queue.put_nowait(Error(stream_id=message.stream_id, code=exc.code, message=str(exc)))
            return True
        try:
            self._writing = _start(self._write(events))
        except Exception as exc:  # noqa: BLE001 - the write's failure is the task's to meet, in order
            failed = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            self._writing = failed
        return True

    async def receive_ready(self) -> Message | None:
        """The next message if it has arrived already, else None (without waiting)."""
        while (message := self.stream.receive_nowait()) is not None:
            opened = await self._open(message)
            if opened is not None:
                return opened
        return None

    async def _open(self, message: Message) -> Message | None:
        """A received message, checked, with its answer chunk opened; None for the sealed
        receipt (kept for the end)."""
        if isinstance(message, Error):
            self.finished()
            raise UpstreamError(message.code, message.message or message.code)
        if not isinstance(message, (Data, End)):  # a model list, a worker list or pay terms
            await self.abort("protocol error")
            raise UpstreamError(ErrorCode.PROTOCOL_ERROR, f"the proxy answered with {type(message).__name__}")
        try:
            if isinstance(message, Data):
                payload = self.sealing.open_chunk(message.payload)
                if payload is None:  # the sealed receipt: kept for the end
                    return None
                return Data(stream_id=message.stream_id, payload=payload)
            if isinstance(message, End):
                record = self.sealing.check_end(message)
                self.pay(record, message.cost)
                self.receipts.add(record, message.receipt, self.request.model, self.cost)
        except SealingFailed as exc:
            await self.abort("sealing failed")
            if isinstance(message, End):
                # The proxy billed the answer as it sent its end; we do not pay for one that does
                # not check out, and say so, else it would count as delivered and unpaid: it is
                # written off (against our stake, as every answer given up after its end)
                self.stream.refuse_ended("the answer does not check out")
            raise UpstreamError(exc.code, str(exc)) from exc
        return message

    def pay(self, record: UsageRecord, billed: int = 0) -> None:
        """Pay for a verified answer: the voucher goes out at once, before anything else we send
        on that connection and before the answer's end reaches the application (which may stop
        the proxy next, as a test does), then the request stops counting as awaited."""
        link, payments, paying = self.link, self.payments, self.paying
        if link is not None and payments is not None and paying is not None and self.sealing.worker:
            channel = paying.channel.account_id
            self.cost, voucher = payments.pay(channel, record, self.sealing.worker.price_milli, billed)
            _voucher_peer(link, self.stream.peer, channel).send_at_once(voucher)
        self.finished(delivered=True)

    def finished(self, *, delivered: bool = False) -> None:
        """The request is no longer awaited (the first call says how it ended)."""
        if self.link is not None and not self._ended:
            self.link.ended(self.stream.peer, self.sealing.request_id, delivered=delivered)
        self._ended = True

    async def abort(self, reason: str) -> None:
        """Give the request up: it no longer awaits its end (every later ``Open`` names the
        requests still awaited, and the proxy refuses more than 1,024 of them), and the proxy
        stops it. An answer whose end has already arrived is settled first, checked and paid:
        the proxy has billed it, and a caller that left just as it ended (one that stops reading
        at the finish reason) would otherwise leave it unpaid, which the proxy refuses further
        requests for."""
        if self._writing is not None:
            self._writing.cancel()  # (the caller is not there to take it, or it failed already)
            self._writing = None
        if not self._aborting:
            self._aborting = True
            with contextlib.suppress(UpstreamError):  # (an answer that does not check out is not paid)
                while (message := self.stream.receive_nowait()) is not None:
                    await self._open(message)
        self.finished()
        if not self.stream.closed:
            await self.stream.cancel(reason)

    def _rewrite(self, payload: bytes) -> dict[str, Any]:
        """One answer chunk (a JSON object) as a dict, with our id, time and model name."""
        try:
            chunk = msgspec.json.decode(payload)
        except (msgspec.DecodeError, RecursionError):  # nested too deeply is invalid too
            raise UpstreamError(ErrorCode.PROTOCOL_ERROR, "the worker sent an invalid chunk") from None
        if not isinstance(chunk, dict):
            raise UpstreamError(ErrorCode.PROTOCOL_ERROR, "the worker sent an invalid chunk")
        chunk["id"] = self.id
        chunk["created"] = self.created
        chunk["model"] = self.request.model
        return chunk

    def _event(self, payload: bytes, with_usage: bool) -> bytes:
        """The SSE event of one streamed answer chunk, rewritten as in ``_rewrite``. The chunk's
        fields are checked JSON but kept as raw text: only the top level is rebuilt."""
        try:
            chunk = _decode_fields(payload)
        except (msgspec.DecodeError, RecursionError):  # nested too deeply is invalid too
            raise UpstreamError(ErrorCode.PROTOCOL_ERROR, "the worker sent an invalid chunk") from None
        chunk["id"] = self._id_raw
        chunk["created"] = self._created_raw
        chunk["model"] = self._model_raw
        if with_usage:
            chunk["usage"] = _NULL
        return sse.encode_event(chunk)

    async def first(self) -> Message:
        """The first answer message: errors surface here, before any HTTP status is chosen."""
        return await self.receive()

    async def response(self, first: Message) -> dict[str, Any]:
        """The whole non-streamed response."""
        self._first_answered()  # the caller gets nothing before the whole answer
        body: dict[str, Any] | None = None
        message = first
        try:
            while True:
                if isinstance(message, Data):
                    # one answer chunk may hold several (see docs/protocol.md); the last one counts
                    body = self._rewrite(message.payload.rsplit(b"\n", 1)[-1])
                elif isinstance(message, End):
                    if body is None:
                        raise UpstreamError(ErrorCode.PROTOCOL_ERROR, "the worker sent no answer")
                    self.usage = message.usage
                    body["usage"] = usage_body(message.usage)
                    return body
                message = await self.receive()
        except UpstreamError:
            await self.abort("bad answer")
            raise

    async def events(self, first: Message) -> AsyncGenerator[bytes, None]:
        """The SSE stream, one event per answer chunk; an error after the first chunk becomes an
        error event. The events of chunks that arrived together leave in one write; none waits
        for a later chunk."""
        with_usage = include_usage(self.request)
        message: Message | None = first
        ready: list[bytes] = []  # events not written yet
        try:
            while True:
                if message is None and len(ready) < MAX_EVENTS_PER_WRITE:
                    message = await self.receive_ready()
                if message is None:
                    if ready:
                        yield b"".join(ready)
                        ready.clear()
                        if self.after_first_answer is not None:
                            self._first_answered()
                    message = await self.receive()
                if type(message) is Data:
                    payload = message.payload
                    if b"\n" in payload:  # chunks the worker had ready together, sealed as one
                        ready.extend([self._event(line, with_usage) for line in payload.split(b"\n")])
                    else:
                        ready.append(self._event(payload, with_usage))
                elif isinstance(message, End):
                    self.usage = message.usage
                    if with_usage:
                        object_ = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
                        ready.append(
                            sse.event(
                                {
                                    "id": self.id,
                                    "object": object_,
                                    "created": self.created,
                                    "model": self.request.model,
                                    "choices": [],
                                    "usage": usage_body(message.usage),
                                }
                            )
                        )
                    ready.append(sse.DONE)
                    yield b"".join(ready)
                    return
                message = None
        except UpstreamError as exc:
            _, body = from_code(exc.code, str(exc))
            ready.append(sse.event(body))
            yield b"".join(ready)
        finally:
            self._first_answered()
            await self.abort("client went away")


def _awaiting(link: ProxyLink) -> list[bytes]:
    """The requests on ``link`` still awaiting their end, as an ``Open`` names them; a 429 when
    there are as many as an ``Open`` may name (the proxy drops a connection that names more)."""
    awaited = link.awaited()
    if len(awaited) >= MAX_AWAITING:
        raise UpstreamError(ErrorCode.SATURATED, f"{MAX_AWAITING} requests are in flight on this proxy connection")
    return sorted(awaited)


def _voucher_peer(link: ProxyLink, came_on: Peer, channel: bytes) -> Peer:
    """Where the voucher for an answer that came on ``came_on`` goes: the link's current
    connection when it pays into the same channel, since every later ``Open`` goes there too
    and the proxy must have the voucher before it checks that ``Open`` (an answer that ended on
    a replaced connection is no longer named as awaited); else the answer's own connection."""
    current = link.peer
    if current is not None and current is not came_on and not current.closed:
        paying: ProxyChannel | None = link.payment_of(current)
        if paying is not None and paying.channel.account_id == channel:
            return current
    return came_on


def _in_use(offer: WorkerOffer) -> float:
    """The share of a worker's capacity for this proxy in use; above 1 when it has no room (a
    worker that serves other proxies too may have none for this one)."""
    return offer.inflight / offer.capacity if offer.capacity else 1.0 + offer.inflight


def _offer(offer: WorkerOffer, prices: Prices) -> dict[str, Any]:
    coefficient = offer.price_milli / 1000

    def per_million(multiplier_milli: int) -> int:
        # nanoTON per token × (multiplier_milli / 1000) × (price_milli / 1000) × 10^6 tokens: exact integers
        return prices.nano_per_token * multiplier_milli * offer.price_milli

    return {
        "worker": offer.worker_id.hex(),
        "price_coefficient": coefficient,
        "capacity": offer.capacity,
        "free": max(0, offer.capacity - offer.inflight),
        "ttft_ms": offer.ttft_ms,
        "tokens_per_second": round(offer.tokens_per_second, 1),
        "success_rate": round(offer.success_rate, 3),
        "errors": offer.errors,
        "timeouts": offer.timeouts,
        "state": "banned" if offer.banned else "suspended" if offer.suspended_until else "available",
        "suspended_until": offer.suspended_until,
        "nano_ton_per_million_tokens": {
            "prompt": per_million(prices.prompt_milli),
            "cached": per_million(prices.cached_milli),
            "completion": per_million(prices.completion_milli),
            "reasoning": per_million(prices.reasoning_milli),
        },
    }


FAILOVER = frozenset({ErrorCode.CONNECTION_LOST, ErrorCode.NO_WORKER, ErrorCode.WORKER_LOST})
"""Errors before the first answer chunk after which another proxy may serve the request."""
NOT_THE_PROXYS_FAULT = frozenset(
    {ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE, ErrorCode.UNKNOWN_MODEL, ErrorCode.PAYMENT_REQUIRED}
)
"""Refusals that say nothing about the proxy's health: they do not move traffic to another."""
RELIST = frozenset({ErrorCode.NO_WORKER})
"""Errors from the proxy after which the request is sealed again for a fresh worker list
(none of its candidates is connected any more)."""


class ClientService:
    def __init__(
        self,
        pool: ProxyPool,
        *,
        idle_timeout: float,
        request_timeout: float = 600.0,
        verifier: EvidenceVerifier,
        candidates: int = 3,
        max_price_milli: int = 0,
        routing: str = "balanced",
        clock: Callable[[], float] = time.time,
        payments: ClientPayments | None = None,
    ) -> None:
        self.payments = payments
        self.max_price_milli = max_price_milli
        self.routing = routing
        self.pool = pool
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.verifier = verifier
        self.max_candidates = candidates
        self.clock = clock
        self.receipts = Receipts()
        self.prepared = PreparedSenders()
        self._rng = random.Random()
        self._to_prepare: dict[tuple[bytes, bytes], Candidate] = {}  # made at the next refill
        self._refill: asyncio.TimerHandle | None = None
        self._workers: dict[tuple[int, str], tuple[float, list[WorkerOffer]]] = {}
        self._refreshing: dict[tuple[int, str], asyncio.Task[None]] = {}
        self._stale_lists: dict[tuple[int, str], tuple[ProxyLink, str]] = {}  # to refresh, after a first answer

    async def _link(self, exclude: frozenset[int] = frozenset()) -> ProxyLink:
        try:
            return await self.pool.pick(exclude)
        except NoProxy as exc:
            raise UpstreamError(ErrorCode.NO_WORKER, str(exc)) from exc

    async def _peer(self, link: ProxyLink) -> Peer:
        try:
            return await link.get()
        except NoProxy as exc:
            raise UpstreamError(ErrorCode.CONNECTION_LOST, str(exc)) from exc

    async def _ask(self, make: Callable[[int], StreamRequest], link: ProxyLink | None = None) -> Message:
        peer = await self._peer(link or await self._link())
        stream: Stream | None = None
        try:
            stream = await peer.open(make)
            message = await stream.receive(self.idle_timeout)
        except PeerGone as exc:
            raise UpstreamError(ErrorCode.CONNECTION_LOST, f"lost the proxy: {exc}") from exc
        except TimeoutError:
            if stream is not None:  # else it stays open, on both sides, for good
                stream.cancel_nowait("no answer")
            raise UpstreamError(ErrorCode.TIMEOUT, "the proxy did not answer") from None
        except asyncio.CancelledError:
            if stream is not None:  # (``open`` cancels its own)
                stream.cancel_nowait("given up")
            raise
        if isinstance(message, Error):
            raise UpstreamError(message.code, message.message)
        return message

    async def _worker_list(self, link: ProxyLink, model: str) -> tuple[float, list[WorkerOffer]]:
        asked = self.clock()
        answer = await self._ask(lambda sid: ListWorkers(stream_id=sid, model=model), link)
        if not isinstance(answer, WorkerList):
            raise UpstreamError(ErrorCode.PROTOCOL_ERROR, "unexpected answer to a worker list")
        listed = self._workers[(id(link), model)] = (asked, answer.workers)
        return listed

    def _refresh_worker_list(self, link: ProxyLink, model: str) -> None:
        key = (id(link), model)
        if key in self._refreshing:
            return

        async def refresh() -> None:
            try:
                await self._worker_list(link, model)
            except UpstreamError as exc:  # the next request asks again, and reports it
                log.debug("refreshing the worker list from %s failed: %s", link.name, exc)
            finally:
                self._refreshing.pop(key, None)

        self._refreshing[key] = asyncio.create_task(refresh())

    def _forget_workers(self, link: ProxyLink, model: str) -> None:
        self._workers.pop((id(link), model), None)
        self._stale_lists.pop((id(link), model), None)  # asked for before its next use anyway

    async def candidates(self, model: str, max_price_milli: int, routing: str, link: ProxyLink) -> list[Candidate]:
        """Attested workers for ``model`` within the price cap, least loaded first (a list older
        than ``WORKER_LIST_TTL`` is refreshed in the background once the request it serves has
        its first answer, one older than ``WORKER_LIST_MAX_AGE`` before it is used)."""
        now = self.clock()
        cached = self._workers.get((id(link), model))
        if cached is None or now - cached[0] >= WORKER_LIST_MAX_AGE:
            return self._choose(await self._worker_list(link, model), model, max_price_milli, routing)
        try:
            chosen = self._choose(cached, model, max_price_milli, routing)
        except UpstreamError:  # nobody usable in the list we had, however recent: a worker may
            # have joined or come back since (the proxy lists it at once)
            return self._choose(await self._worker_list(link, model), model, max_price_milli, routing)
        if now - cached[0] >= WORKER_LIST_TTL:
            # asked for once this request has its first answer (``begin``): asked for now, the
            # list would cross the proxy and wake this process while the request is on its way
            self._stale_lists[(id(link), model)] = (link, model)
        return chosen

    def _refresh_stale_lists(self) -> None:
        while self._stale_lists:
            _, (link, model) = self._stale_lists.popitem()
            self._refresh_worker_list(link, model)

    def _choose(
        self, listed: tuple[float, list[WorkerOffer]], model: str, max_price_milli: int, routing: str
    ) -> list[Candidate]:
        now = self.clock()
        standing = [w for w in listed[1] if not w.banned and w.suspended_until <= now]
        if listed[1] and not standing:
            raise UpstreamError(ErrorCode.NO_WORKER, f"every worker for model {model!r} is suspended")
        offers = [w for w in standing if not max_price_milli or w.price_milli <= max_price_milli]
        # best first for this request's preference: the proxy then chooses among the K we seal to
        offers.sort(
            key=lambda w: raw_score(
                w.price_milli / 1000, _in_use(w), w.ttft_ms / 1000,
                w.tokens_per_second, w.success_rate, routing,
            )
        )  # fmt: skip
        if standing and not offers:
            raise UpstreamError(ErrorCode.NO_WORKER, f"no worker for model {model!r} within the price cap")
        names = self.payments.registry.models if self.payments is not None else None  # (with a registry)
        good, reasons = verified_candidates(offers, self.verifier, int(now), model=model, names=names)
        for reason in reasons:
            log.warning("not sealing to %s", reason)
        if not good:
            why = "; ".join(reasons) or "none is connected"
            raise UpstreamError(ErrorCode.NO_WORKER, f"no attested worker for model {model!r}: {why}")
        return good

    async def begin(self, kind: Kind, request: Request, body: bytes) -> tuple[Call, Message]:
        """Send the request through the healthiest proxy and wait for its first answer; when a
        proxy fails before any answer chunk (it went away, or has no worker left), the request
        is sealed anew for the next proxy's workers and sent there."""
        tried: set[int] = set()
        topped_up = False
        relisted: set[int] = set()
        while True:
            link = await self._link(frozenset(tried))
            started = self.clock()
            call: Call | None = None
            try:
                call = await self.start(kind, request, body, link)
                first = await call.first()
            except UpstreamError as exc:
                # (a list to refresh waits for the retry's first answer, on the first two paths)
                if exc.code == ErrorCode.PAYMENT_REQUIRED and not topped_up and self._can_top_up(link):
                    topped_up = True
                    await self._top_up(link)
                    continue
                if exc.code in RELIST and id(link) not in relisted and call is not None:
                    # the candidates came from a list that may be out of date: once more, fresh
                    relisted.add(id(link))
                    self._forget_workers(link, request.model)
                    continue
                self._refresh_stale_lists()
                if exc.code not in NOT_THE_PROXYS_FAULT:
                    link.record(False)
                tried.add(id(link))
                others = any(other.connected and id(other) not in tried for other in self.pool.links)
                if exc.code not in FAILOVER or not others:
                    raise
                log.warning("proxy %s failed before answering (%s); trying another proxy", link.name, exc.code)
                continue
            except asyncio.CancelledError:
                self._refresh_stale_lists()
                if call is not None:
                    await call.abort("caller disconnected")
                raise
            link.record(True, self.clock() - started)
            call.after_first_answer = self._refresh_stale_lists
            return call, first

    def _can_top_up(self, link: ProxyLink) -> bool:
        """Whether a 402 is worth naming the channel again for, once (``_top_up``): also without
        a deposit of ours to make, for one made by hand (``cocoon wallet topup``), which the proxy
        sees at once then, and for a proxy that forgot a channel named with nothing in it."""
        return self.payments is not None and link.connected

    async def _top_up(self, link: ProxyLink) -> None:
        """The proxy wants payment: deposit (when configured to) and name the channel again."""
        assert self.payments is not None
        for _ in range(2):
            peer = await self._peer(link)
            try:
                link.set_payment(peer, await self.payments.attach(peer))
                return
            except PaymentSetupError as exc:
                # the deposit takes seconds, in which the link may renew its connection and
                # close the old one: the channel is then named on the fresh one (funded now)
                if peer.closed and link.peer is not None and link.peer is not peer:
                    continue
                raise UpstreamError(ErrorCode.PAYMENT_REQUIRED, str(exc)) from exc
        raise UpstreamError(ErrorCode.PAYMENT_REQUIRED, "the connection to the proxy kept changing during payment")

    async def start(self, kind: Kind, request: Request, body: bytes, link: ProxyLink) -> Call:
        _awaiting(link)  # refused before sealing when the connection is full (and again as sent)
        # a cap in thousandths, never 0 (which means "any price"), however small the request's
        cap = max(1, round(request.max_price * 1000)) if request.max_price is not None else self.max_price_milli
        routing = request.routing or self.routing
        ranked = await self.candidates(request.model, cap, routing, link)
        chosen = shortlist(ranked, self.max_candidates, routing, self._rng)
        try:
            sealing = SealedCall(kind, body, chosen, max_tokens_of(request), self.prepared)
        except SealingFailed as exc:
            raise UpstreamError(exc.code, str(exc)) from exc
        peer = await self._peer(link)
        try:
            stream = await peer.open(
                lambda sid: Open(
                    stream_id=sid,
                    model=request.model,
                    kind=kind,
                    stream=bool(request.stream),
                    max_tokens=max_tokens_of(request) or 0,
                    body=sealing.sealed,
                    request_id=sealing.request_id,
                    candidates=[c.worker_id for c in chosen],
                    max_price_milli=cap,
                    routing=routing,
                    awaiting=_awaiting(link),
                )
            )
        except PeerGone as exc:
            raise UpstreamError(ErrorCode.CONNECTION_LOST, f"lost the proxy: {exc}") from exc
        self._prepare_later(chosen)
        link.sent(peer, sealing.request_id)
        return Call(
            kind,
            request,
            stream,
            self.idle_timeout,
            self.request_timeout,
            sealing,
            self.receipts,
            link=link,
            payments=self.payments,
            paying=link.payment_of(peer),
        )

    def _prepare_later(self, candidates: list[Candidate]) -> None:
        """Sender setups for the next requests to these workers, made while this one waits for
        its answer, once it has gone on its way (``REFILL_DELAY``); one refill for a burst."""
        for c in candidates:
            self._to_prepare[(c.worker_id, c.hpke_key)] = c
        if self._refill is None:
            self._refill = asyncio.get_running_loop().call_later(REFILL_DELAY, self._prepare)

    def _prepare(self) -> None:
        self._refill = None
        candidates, self._to_prepare = list(self._to_prepare.values()), {}
        self.prepared.refill(candidates)

    async def models(self) -> list[ModelInfo]:
        return (await self._model_list()).models

    async def _model_list(self) -> ModelList:
        message = await self._ask(lambda sid: ListModels(stream_id=sid))
        if not isinstance(message, ModelList):
            raise UpstreamError(ErrorCode.PROTOCOL_ERROR, "unexpected answer to a model list")
        return message

    async def market(self) -> dict[str, Any]:
        """The price book: per model, the live workers, their prices, free capacity and
        measured speed, and the effective price per 1M tokens of each kind (nanoTON)."""
        listing = await self._model_list()
        prices = listing.prices or Prices(nano_per_token=0)
        book: dict[str, Any] = {"object": "market", "prices": msgspec.to_builtins(prices), "models": []}
        for model in listing.models:
            try:
                answer = await self._ask(lambda sid, m=model.id: ListWorkers(stream_id=sid, model=m))  # type: ignore[misc]
            except UpstreamError:
                continue  # no live worker for it right now
            if not isinstance(answer, WorkerList):
                continue
            book["models"].append({"model": model.id, "workers": [_offer(w, prices) for w in answer.workers]})
        return book
