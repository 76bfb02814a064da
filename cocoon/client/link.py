"""The client's connection to its proxy, redialed in the background when it drops and renewed
before the proxy's attestation expires."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.channel.connect import ConnectionOptions, HandshakeFailed, dial
from cocoon.channel.peer import Peer, renewal_delay
from cocoon.channel.verify import PeerVerifier
from cocoon.protocol.errors import ErrorCode
from cocoon.protocol.messages import Error

log = logging.getLogger("cocoon.client")


class NoProxy(Exception):
    """No connection to the proxy could be had in time."""


IDLE_POLL = 0.05  # seconds between checks whether a replaced connection has requests left
# A request on a connection that closed before its end stays named in ``Open.awaiting`` this long:
# the proxy may have billed it just before, and writes such an answer off once it has seen that
# connection close (at once, or after ``dead_after`` when the network failed silently) and the
# client no longer names it; until then a request that did not name it would be refused for an
# answer delivered and unpaid, or (the close not yet seen) it would count as delivered.
CUT_NAMED = 60.0
MAX_CUT_NAMED = 256  # requests cut with their connection that are named, at most


@dataclass(eq=False)
class Hop:
    """One connection of a link, with what the client knows about it."""

    peer: Peer
    serving: asyncio.Task[None]
    payment: Any = None  # what ``on_connect`` made of it (the payment channel attached there)
    awaiting: set[bytes] = field(default_factory=set)  # request ids sent here, not ended yet


class ProxyLink:
    """The connection to one proxy, redialed in the background when it drops, and renewed
    before the proxy's attestation expires in our eyes (``Peer`` cuts it then): a fresh
    connection is dialed ``expiry_notice`` before, new requests go to it once it is ready, and
    the old one closes once its requests have ended (or is cut at expiry, with a request that
    outlasts the notice)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        key: Ed25519PrivateKey,
        verifier: PeerVerifier,
        reconnect_max: float = 5.0,
        connection_options: ConnectionOptions | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.host = host
        self.port = port
        self.key = key
        self.verifier = verifier
        self.reconnect_max = reconnect_max
        self.connection_options = connection_options
        self.peer: Peer | None = None  # the current connection: new requests go there
        self.last_error = "not connected yet"
        self.failures = 0  # requests in a row that failed at this proxy
        self.latency = 0.0  # moving average of the time to a request's first answer
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # payments: run on every new connection before it is used; its result is kept
        self.on_connect: Callable[[Peer], Awaitable[Any]] | None = None
        self._hops: dict[Peer, Hop] = {}  # the current connection and those it replaced, while open
        self._cut: dict[bytes, float] = {}  # request id → loop time its connection closed
        self._closing: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def get(self, timeout: float = 3.0) -> Peer:
        """The live connection, waiting up to ``timeout`` for one."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        if self.peer is None or self.peer.closed:
            raise NoProxy(f"proxy {self.host}:{self.port} is unreachable: {self.last_error}")
        return self.peer

    @property
    def connected(self) -> bool:
        return self.peer is not None and not self.peer.closed

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    # --- what each connection carries ------------------------------------------------------

    def payment_of(self, peer: Peer) -> Any:
        """What ``on_connect`` returned for ``peer`` (None: not run, or the connection is gone)."""
        hop = self._hops.get(peer)
        return hop.payment if hop is not None else None

    def set_payment(self, peer: Peer, payment: Any) -> None:
        if (hop := self._hops.get(peer)) is not None:
            hop.payment = payment

    def sent(self, peer: Peer, request_id: bytes) -> None:
        """A request went out on ``peer``: it awaits its end there."""
        if (hop := self._hops.get(peer)) is not None:
            hop.awaiting.add(request_id)

    def ended(self, peer: Peer, request_id: bytes, *, delivered: bool = False) -> None:
        """The request sent on ``peer`` has ended: its answer ``delivered`` (and paid for), or
        failed or given up. One that failed because its connection closed stays named a while
        (``CUT_NAMED``): the proxy may have billed an answer that never came."""
        if (hop := self._hops.get(peer)) is not None:
            hop.awaiting.discard(request_id)
        if delivered:  # (its end came before the connection closed)
            self._cut.pop(request_id, None)
        elif peer.closed:  # its stream learnt of the close before this link did (``_gone``)
            self._note_cut([request_id])

    def awaited(self) -> set[bytes]:
        """The requests whose end has not come, over all this link's connections: the proxy
        bills per payment channel, which they share, so an ``Open`` on the fresh connection must
        name those still running on the one it replaces (and, for a while, those cut with a
        connection: ``CUT_NAMED``)."""
        if self._cut:
            named_since = asyncio.get_running_loop().time() - CUT_NAMED
            self._cut = {rid: cut for rid, cut in self._cut.items() if cut > named_since}
        names = set(self._cut)
        for hop in self._hops.values():
            names |= hop.awaiting
        return names

    def record(self, ok: bool, latency: float = 0.0) -> None:
        if ok:
            self.failures = 0
            self.latency = latency if self.latency == 0.0 else 0.8 * self.latency + 0.2 * latency
        else:
            self.failures += 1

    # --- connecting --------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.2
        while True:
            hop = await self._open()
            if hop is None:
                log.warning("proxy %s:%d: %s; retrying in %.1f s", self.host, self.port, self.last_error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max)
                continue
            delay = 0.2
            replaced = self._use(hop)
            if replaced is None:
                log.info("connected to proxy %s:%d", self.host, self.port)
            else:
                log.info("renewed the connection to proxy %s:%d; the old one closes once its %d requests "
                         "in flight are done", self.host, self.port, len(replaced.awaiting))  # fmt: skip
            renew_in = renewal_delay(hop.peer, replaced.peer if replaced else None, f"proxy {self.host}:{self.port}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(renew_in):
                    await asyncio.shield(hop.serving)
            if hop.serving.done():
                log.warning("lost proxy %s:%d: %s", self.host, self.port, hop.peer.close_reason)
                continue
            # Still serving; the next turn dials a fresh connection while this one stays in use.
            log.info("proxy %s:%d: its attestation expires in %.0f s; dialing a fresh connection",
                     self.host, self.port, _expires_in(hop.peer))  # fmt: skip

    async def _open(self) -> Hop | None:
        """A new connection, set up (``on_connect``) and ready for requests; None on failure
        (``last_error`` says why)."""
        try:
            peer = await dial(
                self.host,
                self.port,
                key=self.key,
                role="client",
                verifier=self.verifier,
                connection_options=self.connection_options,
                timeout=self.connect_timeout,
            )
        except HandshakeFailed as exc:
            self.last_error = str(exc)
            return None
        hop = Hop(peer, asyncio.create_task(peer.serve(_NoStreams())))
        hop.serving.add_done_callback(lambda _: self._gone(hop))
        self._hops[peer] = hop
        if self.on_connect is not None:
            try:
                hop.payment = await self.on_connect(peer)
            except Exception as exc:  # noqa: BLE001 - any setup failure: drop this connection and redial
                await peer.aclose(f"payment setup failed: {exc}")
                await hop.serving
                self.last_error = f"payment setup failed: {exc}"
                return None
        if peer.closed:  # lost during its setup
            self.last_error = peer.close_reason
            return None
        return hop

    def _use(self, hop: Hop) -> Hop | None:
        """Make ``hop`` the current connection; the one it replaces, if still open, finishes its
        requests and closes. No await here: no request can find the link without a connection."""
        replaced = self._hops.get(self.peer) if self.peer is not None else None
        self.peer = hop.peer
        self._connected.set()
        if replaced is not None and not replaced.peer.closed:
            task = asyncio.create_task(self._close_when_idle(replaced))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return replaced

    async def _close_when_idle(self, hop: Hop) -> None:
        """Close a replaced connection once every request and question sent on it has ended
        (their vouchers have gone out by then); ``Peer`` cuts it at expiry otherwise."""
        peer = hop.peer
        while not peer.closed and (hop.awaiting or peer.open_streams):
            await asyncio.sleep(IDLE_POLL)
        await peer.aclose("replaced by a fresh connection")

    def _gone(self, hop: Hop) -> None:
        """A connection closed: what it had in flight can no longer end."""
        self._hops.pop(hop.peer, None)
        if hop.awaiting:
            self._note_cut(hop.awaiting)
        if self.peer is hop.peer:
            self._connected.clear()
            self.last_error = hop.peer.close_reason

    def _note_cut(self, request_ids: Iterable[bytes]) -> None:
        """Name these requests, cut with their connection, for ``CUT_NAMED`` more seconds; the
        newest ``MAX_CUT_NAMED`` at most, so that a cut never leaves the next ``Open`` too many to
        name (the proxy writes off an answer it billed that a client does not name, after its
        connection closed: right for one that never came)."""
        now = asyncio.get_running_loop().time()
        self._cut.update(dict.fromkeys(request_ids, now))
        while len(self._cut) > MAX_CUT_NAMED:
            del self._cut[next(iter(self._cut))]

    async def aclose(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._closing):
            task.cancel()
        for hop in list(self._hops.values()):
            await hop.peer.aclose("client stopping")


def _expires_in(peer: Peer) -> float:
    expires_at = peer.identity.expires_at
    return 0.0 if expires_at is None else max(0.0, expires_at - time.time())


class ProxyPool:
    """Connections to every configured proxy; requests go to the healthiest connected one."""

    def __init__(self, links: list[ProxyLink]) -> None:
        if not links:
            raise ValueError("at least one proxy is needed")
        self.links = links

    def start(self) -> None:
        for link in self.links:
            link.start()

    async def pick(self, exclude: frozenset[int] = frozenset(), timeout: float = 3.0) -> ProxyLink:
        """The connected proxy with the fewest recent failures, then the lowest latency."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            ready = [link for link in self.links if link.connected and id(link) not in exclude]
            if ready:
                return min(ready, key=lambda link: (link.failures, link.latency))
            if loop.time() >= deadline:
                reasons = "; ".join(f"{link.name}: {link.last_error}" for link in self.links if id(link) not in exclude)
                raise NoProxy(f"no proxy is reachable ({reasons or 'all tried'})")
            await asyncio.sleep(0.05)

    async def aclose(self) -> None:
        for link in self.links:
            await link.aclose()


class _NoStreams:
    """The proxy never opens streams towards a client; if it tries, it gets an error."""

    def stream_opened(self, peer: Peer, message: object) -> None:
        stream_id = getattr(message, "stream_id", 0)
        peer.send_nowait(Error(stream_id=stream_id, code=ErrorCode.BAD_REQUEST, message="clients serve no streams"))

    def stream_cancelled(self, peer: Peer, message: object) -> None:
        pass

    def connection_message(self, peer: Peer, message: object) -> None:
        pass
