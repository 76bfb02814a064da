"""The asyncio edge of the protocol: one open connection to a peer.

A read loop feeds bytes to the sans-I/O ``Connection`` and dispatches its messages: answers to
streams we opened go to that stream's queue; new streams, cancels and connection messages go to
a ``PeerHandler`` (a stream opened after our goodbye is refused here, as ``shutting_down``). A
heartbeat task pings and detects a silent peer. A peer fault closes this connection with an
error frame and a log line; it never propagates further.

Writes are corked: the frames sent during one turn of the event loop go to the TLS transport in
one write at the end of that turn (one TLS record, one system call), so a proxy relaying many
streams or a worker whose engine outpaces the network pays per batch, not per frame. The delay
is one turn of the loop (microseconds when it is idle); ``flush`` writes at once once a batch
is large, and waits for the socket (backpressure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from cocoon.channel.verify import PeerIdentity
from cocoon.protocol.connection import Connection, ConnectionClosed, Phase
from cocoon.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from cocoon.protocol.messages import (
    RESPONDER_MESSAGES,
    STREAM_CLOSING,
    STREAM_OPENING,
    Announce,
    Cancel,
    Capacity,
    Data,
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
CONNECTION_MESSAGES = (Announce, Capacity, Goodbye, Voucher)
CORK_LIMIT = 64 * 1024  # bytes of frames held back at most before ``flush`` writes them out
# A connection with no write for this long is idle: what ``flush`` finds corked then leaves at
# once (nothing is likely to join it this turn, and a request or a first token waits for nothing).
IDLE_WRITE = 0.005
# A connection ends when its peer's evidence expires (``Peer._heartbeat``). The side that needs it
# renews it this long before: 60 s, a quarter of its lifetime at most, so that requests shorter
# than that are never cut at expiry (workers towards the proxy, clients towards their proxies).
EXPIRY_NOTICE = 60.0
MIN_NOTICE_LIFETIME = 2.0  # a connection trusted for less is let run out without a renewal
REFUSED_AFTER_GOODBYE = "this connection said goodbye; open the stream on another"


def expiry_notice(lifetime: float) -> float | None:
    """How long before its end a connection trusted for ``lifetime`` more seconds is renewed;
    None when it is too short-lived (evidence at its very end, which no redial renews)."""
    if lifetime <= MIN_NOTICE_LIFETIME:
        return None
    return min(EXPIRY_NOTICE, lifetime / 4)


def renewal_delay(peer: Peer, replaced: Peer | None, name: str) -> float | None:
    """Seconds until the side that needs ``peer`` renews it, before its peer's evidence expires
    in our eyes (``Peer`` cuts it then); None when it is not renewed: no expiry, too short-lived,
    or a renewal that gained nothing over ``replaced`` (the peer's evidence itself ends then).
    ``name`` says which peer in the warning."""
    expires_at = peer.identity.expires_at
    if expires_at is None:
        return None
    if replaced is not None and replaced.identity.expires_at is not None:
        if expires_at <= replaced.identity.expires_at:
            log.warning("%s: a fresh connection is trusted no longer than the old one; "
                        "it will be cut when the peer's evidence expires", name)  # fmt: skip
            return None
    lifetime = expires_at - time.time()
    notice = expiry_notice(lifetime)
    return None if notice is None else max(0.0, lifetime - notice)


class PeerGone(Exception):
    """The connection is closed; nothing more can be sent on it."""


class PeerHandler(Protocol):
    def stream_opened(self, peer: Peer, message: StreamRequest) -> None: ...

    def stream_cancelled(self, peer: Peer, message: Cancel) -> None: ...

    def connection_message(self, peer: Peer, message: Announce | Capacity | Goodbye | Voucher) -> None: ...


class Inbox:
    """The answers of one stream, in order, for one consumer: a deque with a wake-up future and
    a lazy timer. Per message it costs a fraction of ``asyncio.Queue`` with ``asyncio.timeout``
    (no timer is armed and cancelled per wait: one timer follows the deadline, which each wait
    moves, and fires only when a wait really runs out)."""

    def __init__(self) -> None:
        self._items: deque[Message] = deque()
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def put_nowait(self, message: Message) -> None:
        self._items.append(message)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    def get_nowait(self) -> Message:
        """The next message; ``IndexError`` when there is none."""
        return self._items.popleft()

    async def get(self, timeout: float | None = None) -> Message:
        """The next message; ``TimeoutError`` when none arrives within ``timeout`` seconds."""
        while not self._items:
            waiter = self._waiter
            if waiter is None or waiter.done():
                waiter = self._waiter = self._loop.create_future()
            if timeout is not None:
                self._deadline = deadline = self._loop.time() + timeout
                timer = self._timer
                if timer is None or timer.when() > deadline:
                    if timer is not None:
                        timer.cancel()
                    self._timer = self._loop.call_at(deadline, self._expire)
            else:
                self._deadline = float("inf")
            await waiter
        return self._items.popleft()

    def stop(self) -> None:
        """No wait will follow (the stream is over): drop the timer, which would otherwise keep
        this inbox, and what it holds, alive in the event loop until its deadline."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nobody waits: the next wait arms the timer again
        if self._deadline == float("inf"):
            return
        if self._loop.time() >= self._deadline:
            self._waiter = None
            waiter.set_exception(TimeoutError())
        else:  # the deadline moved on since the timer was armed
            self._timer = self._loop.call_at(self._deadline, self._expire)


class Stream:
    """A stream we opened: the peer's answers arrive on ``queue``.

    ``forward``, when set, takes ``Data`` messages straight from the read loop while the queue
    is empty (a relay passing chunks on without a task switch per chunk); when it returns False
    the message is queued instead, and so is every later one until the queue has been emptied,
    so the order never changes."""

    def __init__(self, peer: Peer, stream_id: int) -> None:
        self.peer = peer
        self.id = stream_id
        self.queue = Inbox()
        self.closed = False
        self.forward: Callable[[Data], bool] | None = None

    async def receive(self, timeout: float | None = None) -> Message:
        """The next answer message; ``TimeoutError`` when none comes within ``timeout``."""
        message = await self.queue.get(timeout)
        if self.closed and self.queue.empty():  # that was the last one
            self.queue.stop()
        return message

    def receive_nowait(self) -> Message | None:
        """The next answer message if one has arrived, else None."""
        if self.queue.empty():
            return None
        message = self.queue.get_nowait()
        if self.closed and self.queue.empty():
            self.queue.stop()
        return message

    @property
    def ready(self) -> int:
        """Answer messages that have arrived and wait to be received."""
        return self.queue.qsize()

    async def cancel(self, reason: str = "") -> None:
        self.queue.stop()
        if not self.closed:
            self.closed = True
            self.peer._streams.pop(self.id, None)
            with contextlib.suppress(PeerGone):
                await self.peer.send(Cancel(stream_id=self.id, reason=reason))

    def refuse_ended(self, reason: str) -> None:
        """Give up an answer whose end has come (it does not check out): a cancel after the end,
        which tells the responder that the answer it finished was not taken."""
        self.queue.stop()
        self.closed = True
        self.peer._streams.pop(self.id, None)
        with contextlib.suppress(LocalProtocolError):  # the connection ended meanwhile
            self.peer.send_nowait(Cancel(stream_id=self.id, reason=reason))

    def cancel_nowait(self, reason: str = "") -> None:
        """``cancel`` without waiting for the socket: for giving up on a peer that may not be
        reading (the cancel is queued behind whatever it has not taken yet)."""
        self.queue.stop()
        if not self.closed:
            self.closed = True
            self.peer._streams.pop(self.id, None)
            with contextlib.suppress(LocalProtocolError):  # the connection ended meanwhile
                self.peer.send_nowait(Cancel(stream_id=self.id, reason=reason))


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
        self._corked: list[bytes] = []  # frames to write at the end of this turn of the loop
        self._corked_size = 0
        self._last_write = 0.0  # loop time of the last write
        self._closer: asyncio.Task[None] | None = None
        self.write_timeout = conn.dead_after  # a backlog that does not shrink for this long: dead peer

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
        self._write(data)
        if self.conn.phase is Phase.CLOSED and self._closer is None:
            # a connection-level error ends the connection: nothing else may follow it
            reason = message.message if isinstance(message, Error) else "closed"
            self.close_reason = self.close_reason or f"sent error: {reason}"
            self._closer = self._loop.create_task(self.aclose(self.close_reason))
        return True

    def send_at_once(self, message: Message) -> bool:
        """``send_nowait``, and written now with whatever this turn corked before it: for what
        must leave before anything the caller does next (a payment, before the answer it pays
        for reaches the application)."""
        if not self.send_nowait(message):
            return False
        self._uncork()
        return True

    def _write(self, data: bytes) -> None:
        """Cork ``data``: it goes out with everything else written in this turn of the loop."""
        if not self._corked:
            self._loop.call_soon(self._uncork)
        self._corked.append(data)
        self._corked_size += len(data)

    def _uncork(self) -> None:
        if not self._corked:
            return
        data = self._corked[0] if len(self._corked) == 1 else b"".join(self._corked)
        self._corked.clear()
        self._corked_size = 0
        self._last_write = self._loop.time()
        if not self.writer.is_closing():
            self.writer.write(data)

    @property
    def backed_up(self) -> bool:
        """Whether written data is piling up faster than the peer takes it."""
        return self._corked_size >= CORK_LIMIT or self.writer.transport.get_write_buffer_size() >= CORK_LIMIT

    async def send(self, message: Message) -> None:
        if self.closed:
            raise PeerGone(self.close_reason or "connection closed")
        if self.send_nowait(message):
            await self.flush()

    def nudge(self) -> None:
        """Write the corked frames now if they are many, or if the connection was idle (see
        ``flush``); else they leave at the end of this turn of the loop, with the others."""
        if self._corked_size >= CORK_LIMIT or (self._corked and self._loop.time() - self._last_write >= IDLE_WRITE):
            self._uncork()

    async def flush(self) -> None:
        """Wait until the written data has drained to the socket (backpressure). Corked frames
        below ``CORK_LIMIT`` stay corked until the end of this turn of the loop, so that frames
        of many streams leave together, unless the connection was idle (``IDLE_WRITE``): then a
        turn of the loop would only delay them (by 0.25–0.45 ms in all, on the way to a first
        token, measured on 2 vCPUs)."""
        self.nudge()
        transport = self.writer.transport
        try:
            if not transport.get_write_buffer_size():
                await self.writer.drain()  # all written: returns at once, and pays for no timer
                return
            # A peer that takes nothing while it still pings would hold whatever waits here (a
            # relay, and the worker slot it holds) for as long as it likes: it is dead to us once
            # a whole ``write_timeout`` passes without the backlog shrinking (a slow link that
            # takes something is not).
            while True:
                before = transport.get_write_buffer_size()
                try:
                    async with asyncio.timeout(self.write_timeout):
                        await self.writer.drain()
                    return
                except TimeoutError:
                    if transport.get_write_buffer_size() >= before:
                        break
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            raise PeerGone(str(exc)) from exc
        self.close_reason = f"the peer took nothing of our writes for {self.write_timeout:.0f} s"
        log.warning("closing connection to %s: %s", self.label, self.close_reason)
        transport.abort()
        raise PeerGone(self.close_reason)

    async def open(self, make: Callable[[int], StreamRequest]) -> Stream:
        """Open a stream with the message ``make(stream_id)``."""
        if self.closed:
            raise PeerGone(self.close_reason or "connection closed")
        if self.conn.goodbye_received or self.conn.phase is not Phase.OPEN:
            raise PeerGone("the peer said goodbye" if self.conn.goodbye_received else "connection closed")
        message = make(self.conn.next_stream_id())
        stream = Stream(self, message.stream_id)
        self._streams[stream.id] = stream
        try:
            await self.send(message)
        except asyncio.CancelledError:
            # given up (a deadline, or the caller left) while the request waited for the socket:
            # it may still reach the peer, which is then told to drop it
            stream.cancel_nowait("given up before it was sent")
            raise
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
                        self.close_reason = self.close_reason or "peer closed the connection"
                        return
                    self._dispatch(event, handler)
                    if self.conn.phase is Phase.CLOSED:  # the peer sent a connection error
                        return
                if not data:  # (after a close of ours, the reason we gave stands)
                    self.close_reason = self.close_reason or "peer closed the connection"
                    return
        except RemoteProtocolError as exc:
            self.close_reason = f"{exc.code}: {exc}"
            log.warning("closing connection to %s: %s", self.label, self.close_reason)
            with contextlib.suppress(Exception):
                self.send_nowait(Error(stream_id=0, code=exc.code, message=str(exc)[:1000]))
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            self.close_reason = self.close_reason or f"connection error: {exc}"
        finally:
            heartbeat.cancel()
            await self.aclose(self.close_reason)

    def _dispatch(self, message: Message, handler: PeerHandler) -> None:
        if type(message) is Data:  # the common case first: an answer chunk on a stream we opened
            stream = self._streams.get(message.stream_id)
            if stream is not None:
                forward = stream.forward
                if forward is not None and stream.queue.empty():
                    try:
                        if forward(message):
                            return
                    except Exception:  # a relay's bug must not take this connection's other streams down
                        log.exception("passing a chunk on failed; stream %d goes through its queue", stream.id)
                        stream.forward = None
                stream.queue.put_nowait(message)
            return
        if isinstance(message, Ping):
            if not self.backed_up:  # a peer that pings but never reads must not fill our memory
                self.send_nowait(Pong(nonce=message.nonce))
        elif isinstance(message, Pong):
            pass
        elif isinstance(message, STREAM_OPENING):
            if self.conn.goodbye_sent:
                # It crossed our goodbye: refused untouched, so that the opener sends it on
                # another connection (HTTP/2's REFUSED_STREAM), with the rest of this one intact.
                self.send_nowait(
                    Error(stream_id=message.stream_id, code=ErrorCode.SHUTTING_DOWN, message=REFUSED_AFTER_GOODBYE)
                )
            else:
                handler.stream_opened(self, message)
        elif isinstance(message, Cancel):
            handler.stream_cancelled(self, message)
        elif isinstance(message, CONNECTION_MESSAGES):
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
                self._write(ping)

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
        self._uncork()  # the last frames (an error, a goodbye) still go out
        self.writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self.writer.wait_closed()
