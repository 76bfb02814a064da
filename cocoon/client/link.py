"""The client's connection to its proxy, redialed in the background when it drops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.channel.connect import ConnectionOptions, HandshakeFailed, dial
from cocoon.channel.peer import Peer
from cocoon.channel.verify import PeerVerifier
from cocoon.protocol.errors import ErrorCode
from cocoon.protocol.messages import Error

log = logging.getLogger("cocoon.client")


class NoProxy(Exception):
    """No connection to the proxy could be had in time."""


class ProxyLink:
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
        self.peer: Peer | None = None
        self.last_error = "not connected yet"
        self.failures = 0  # requests in a row that failed at this proxy
        self.latency = 0.0  # moving average of the time to a request's first answer
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # payments: run on every new connection before it is used; its result is kept
        self.on_connect: Callable[[Peer], Awaitable[Any]] | None = None
        self.payment: Any = None
        self.awaiting: set[bytes] = set()  # request ids sent on this connection, not ended yet

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

    def record(self, ok: bool, latency: float = 0.0) -> None:
        if ok:
            self.failures = 0
            self.latency = latency if self.latency == 0.0 else 0.8 * self.latency + 0.2 * latency
        else:
            self.failures += 1

    async def _run(self) -> None:
        delay = 0.2
        while True:
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
                log.warning("proxy %s:%d: %s; retrying in %.1f s", self.host, self.port, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max)
                continue
            self.peer = peer
            serving = asyncio.create_task(peer.serve(_NoStreams()))
            if self.on_connect is not None:
                try:
                    self.payment = await self.on_connect(peer)
                except Exception as exc:  # noqa: BLE001 - any setup failure: drop this connection and redial
                    self.last_error = f"payment setup failed: {exc}"
                    log.warning("proxy %s:%d: %s; retrying in %.1f s", self.host, self.port, self.last_error, delay)
                    await peer.aclose(self.last_error)
                    await serving
                    self.peer = None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.reconnect_max)
                    continue
            delay = 0.2
            self.awaiting.clear()
            self._connected.set()
            log.info("connected to proxy %s:%d", self.host, self.port)
            await serving
            self._connected.clear()
            self.last_error = peer.close_reason
            log.warning("lost proxy %s:%d: %s", self.host, self.port, peer.close_reason)

    async def aclose(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.peer:
            await self.peer.aclose("client stopping")


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
