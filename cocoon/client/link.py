"""The client's connection to its proxy, redialed in the background when it drops."""

from __future__ import annotations

import asyncio
import contextlib
import logging

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
    ) -> None:
        self.host = host
        self.port = port
        self.key = key
        self.verifier = verifier
        self.reconnect_max = reconnect_max
        self.connection_options = connection_options
        self.peer: Peer | None = None
        self.last_error = "not connected yet"
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

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
                )
            except HandshakeFailed as exc:
                self.last_error = str(exc)
                log.warning("proxy %s:%d: %s; retrying in %.1f s", self.host, self.port, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max)
                continue
            delay = 0.2
            self.peer = peer
            self._connected.set()
            log.info("connected to proxy %s:%d", self.host, self.port)
            await peer.serve(_NoStreams())
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


class _NoStreams:
    """The proxy never opens streams towards a client; if it tries, it gets an error."""

    def stream_opened(self, peer: Peer, message: object) -> None:
        stream_id = getattr(message, "stream_id", 0)
        peer.send_nowait(Error(stream_id=stream_id, code=ErrorCode.BAD_REQUEST, message="clients serve no streams"))

    def stream_cancelled(self, peer: Peer, message: object) -> None:
        pass

    def connection_message(self, peer: Peer, message: object) -> None:
        pass
