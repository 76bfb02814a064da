"""The asyncio edge of the protocol: one open connection to a peer.

A read loop feeds bytes to the sans-I/O ``Connection`` and dispatches its messages: answers to
streams we opened go to that stream's queue; new streams, cancels and connection messages go to
a ``PeerHandler``. A heartbeat task pings and detects a silent peer. A peer fault closes this
connection with an error frame and a log line; it never propagates further.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from typing import Protocol

from cocoon.channel.verify import PeerIdentity
from cocoon.protocol.connection import Connection, ConnectionClosed
from cocoon.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from cocoon.protocol.messages import (
    RESPONDER_MESSAGES,
    STREAM_CLOSING,
    STREAM_OPENING,
    Announce,
    Cancel,
    Error,
    Goodbye,
    Message,
    Ping,
    Pong,
    StreamRequest,
    Voucher,
)

log = logging.getLogger("cocoon.channel")

READ_SIZE = 256 * 1024


class PeerGone(Exception):
    """The connection is closed; nothing more can be sent on it."""


class PeerHandler(Protocol):
    def stream_opened(self, peer: Peer, message: StreamRequest) -> None: ...

    def stream_cancelled(self, peer: Peer, message: Cancel) -> None: ...

    def connection_message(self, peer: Peer, message: Announce | Goodbye | Voucher) -> None: ...


class Stream:
    """A stream we opened: the peer's answers arrive on ``queue``."""

    def __init__(self, peer: Peer, stream_id: int) -> None:
        self.peer = peer
        self.id = stream_id
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.closed = False

    async def receive(self, timeout: float | None = None) -> Message:
        """The next answer message; ``TimeoutError`` when none comes within ``timeout``."""
        async with asyncio.timeout(timeout):
            return await self.queue.get()

    async def cancel(self, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            self.peer._streams.pop(self.id, None)
            with contextlib.suppress(PeerGone):
                await self.peer.send(Cancel(stream_id=self.id, reason=reason))


class Peer:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: Connection,
        identity: PeerIdentity,
        *,
        label: str = "",
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.identity = identity
        self.label = label or identity.short
        self.closed = False
        self.close_reason = ""
        self._streams: dict[int, Stream] = {}
        self._loop = asyncio.get_running_loop()

    # --- sending ---------------------------------------------------------------------------

    def send_nowait(self, message: Message) -> bool:
        """Queue a message for writing; False when it was dropped because its stream (or the
        connection) has closed meanwhile, which is a normal race with cancellation."""
        if self.closed:
            return False
        stream_id = getattr(message, "stream_id", 0)
        if stream_id and isinstance(message, RESPONDER_MESSAGES) and not self.conn.stream_is_open(stream_id):
            return False
        try:
            data = self.conn.send(message)
        except LocalProtocolError:
            if self.conn.stream_is_open(stream_id) or not stream_id:
                raise
            return False
        self.writer.write(data)
        return True

    async def send(self, message: Message) -> None:
        if self.closed:
            raise PeerGone(self.close_reason or "connection closed")
        if self.send_nowait(message):
            await self.flush()

    async def flush(self) -> None:
        """Wait until the written data has drained to the socket (backpressure)."""
        try:
            await self.writer.drain()
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            raise PeerGone(str(exc)) from exc

    async def open(self, make: Callable[[int], StreamRequest]) -> Stream:
        """Open a stream with the message ``make(stream_id)``."""
        if self.closed:
            raise PeerGone(self.close_reason or "connection closed")
        message = make(self.conn.next_stream_id())
        stream = Stream(self, message.stream_id)
        self._streams[stream.id] = stream
        await self.send(message)
        return stream

    @property
    def open_streams(self) -> int:
        return self.conn.open_streams

    # --- receiving -------------------------------------------------------------------------

    async def serve(self, handler: PeerHandler) -> None:
        """Run until the connection closes, for whatever reason."""
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            while not self.closed:
                data = await self.reader.read(READ_SIZE)
                self.conn.receive_data(data, self._loop.time())
                while (event := self.conn.next_event()) is not None:
                    if isinstance(event, ConnectionClosed):
                        self.close_reason = "peer closed the connection"
                        return
                    self._dispatch(event, handler)
                if not data:
                    self.close_reason = "peer closed the connection"
                    return
        except RemoteProtocolError as exc:
            self.close_reason = f"{exc.code}: {exc}"
            log.warning("closing connection to %s: %s", self.label, self.close_reason)
            with contextlib.suppress(Exception):
                self.send_nowait(Error(stream_id=0, code=exc.code, message=str(exc)[:1000]))
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            self.close_reason = f"connection error: {exc}"
        finally:
            heartbeat.cancel()
            await self.aclose(self.close_reason)

    def _dispatch(self, message: Message, handler: PeerHandler) -> None:
        if isinstance(message, Ping):
            self.send_nowait(Pong(nonce=message.nonce))
        elif isinstance(message, Pong):
            pass
        elif isinstance(message, STREAM_OPENING):
            handler.stream_opened(self, message)
        elif isinstance(message, Cancel):
            handler.stream_cancelled(self, message)
        elif isinstance(message, Announce | Goodbye | Voucher):
            handler.connection_message(self, message)
        elif isinstance(message, Error) and message.stream_id == 0:
            self.close_reason = f"peer error {message.code}: {message.message}"
            log.warning("%s closed the connection: %s", self.label, self.close_reason)
        elif isinstance(message, RESPONDER_MESSAGES):
            stream = self._streams.get(message.stream_id)
            if stream is not None:
                if isinstance(message, STREAM_CLOSING):
                    del self._streams[message.stream_id]
                    stream.closed = True
                stream.queue.put_nowait(message)

    async def _heartbeat(self) -> None:
        period = max(0.05, min(1.0, self.conn.heartbeat_interval / 2))
        while True:
            await asyncio.sleep(period)
            try:
                ping = self.conn.tick(self._loop.time())
            except RemoteProtocolError as exc:
                self.close_reason = f"dead peer: {exc}"
                log.warning("closing connection to %s: %s", self.label, self.close_reason)
                self.writer.transport.abort()
                return
            expires_at = self.identity.expires_at
            if expires_at is not None and time.time() >= expires_at:
                # The peer's evidence ran out: close, so that it redials with fresh evidence.
                self.close_reason = "peer evidence expired"
                log.info("closing connection to %s: its attestation expired", self.label)
                self.writer.transport.abort()
                return
            if ping and not self.closed:
                self.writer.write(ping)

    async def aclose(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = self.close_reason or reason
        self.conn.close()
        for stream in self._streams.values():
            stream.closed = True
            stream.queue.put_nowait(
                Error(stream_id=stream.id, code=ErrorCode.CONNECTION_LOST, message=self.close_reason[:1000])
            )
        self._streams.clear()
        self.writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self.writer.wait_closed()
