"""The connection state machine for one hop (sans-I/O).

Bytes in with ``receive_data``, messages out with ``next_event``, messages to bytes with
``send``. It enforces the handshake order, the direction of every message, stream lifetimes
and heartbeats. Peer faults raise ``RemoteProtocolError``; our own misuse raises
``LocalProtocolError``.

Streams: the dialer opens odd ids, the listener even ids, each strictly increasing (as in
HTTP/2), so a message for a stream that has already closed (a race with a cancel) can be told
apart from one for a stream that never existed. A cancel for a stream that closed is delivered
all the same (it crossed the end); a stream the peer opens after our goodbye is delivered too,
and refused by the edge (``goodbye_sent``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import msgspec

from cocoon.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from cocoon.protocol.framing import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame
from cocoon.protocol.messages import (
    OPENER_MESSAGES,
    RESPONDER_MESSAGES,
    STREAM_CLOSING,
    STREAM_OPENING,
    Announce,
    Cancel,
    Capacity,
    Challenge,
    Data,
    Error,
    Goodbye,
    Hello,
    Message,
    Ping,
    Pong,
    Voucher,
    Welcome,
    decode_message,
    encode_message,
)


class Side(Enum):
    DIALER = "dialer"
    LISTENER = "listener"


class Phase(Enum):
    START = "start"
    CHALLENGED = "challenged"  # listener sent / dialer received the challenge
    HELLO = "hello"  # listener received / dialer sent the hello
    OPEN = "open"
    CLOSED = "closed"


SEND = "send"
RECEIVE = "receive"

# The handshake, as one table: (side, direction, phase, message type) -> next phase.
HANDSHAKE_MOVES: dict[tuple[Side, str, Phase, type], Phase] = {
    (Side.LISTENER, SEND, Phase.START, Challenge): Phase.CHALLENGED,
    (Side.LISTENER, RECEIVE, Phase.CHALLENGED, Hello): Phase.HELLO,
    (Side.LISTENER, SEND, Phase.HELLO, Welcome): Phase.OPEN,
    (Side.DIALER, RECEIVE, Phase.START, Challenge): Phase.CHALLENGED,
    (Side.DIALER, SEND, Phase.CHALLENGED, Hello): Phase.HELLO,
    (Side.DIALER, RECEIVE, Phase.HELLO, Welcome): Phase.OPEN,
}

# Connection-level messages allowed once open: message type -> sides that may send it.
OPEN_CONNECTION_MESSAGES: dict[type, frozenset[Side]] = {
    Announce: frozenset({Side.DIALER}),
    Capacity: frozenset({Side.DIALER}),
    Ping: frozenset({Side.DIALER, Side.LISTENER}),
    Pong: frozenset({Side.DIALER, Side.LISTENER}),
    Goodbye: frozenset({Side.DIALER, Side.LISTENER}),
    Voucher: frozenset({Side.DIALER, Side.LISTENER}),
}

MAX_STREAMS = 4096
STREAM_MESSAGES = OPENER_MESSAGES + RESPONDER_MESSAGES


@dataclass
class ConnectionClosed:
    """Event: the peer closed the byte stream cleanly (between frames)."""


Event = Message | ConnectionClosed


class Connection:
    def __init__(
        self,
        side: Side,
        *,
        now: float,
        max_frame: int = DEFAULT_MAX_FRAME,
        heartbeat_interval: float = 5.0,
        dead_after: float = 15.0,
        max_streams: int = MAX_STREAMS,
    ) -> None:
        self.side = side
        self.phase = Phase.START
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self.max_streams = max_streams
        self._decoder = FrameDecoder(max_frame)
        self._last_received = now
        self._last_ping = now
        self._ping_counter = 0
        # stream id -> True when we opened it
        self._streams: dict[int, bool] = {}
        self._next_local_id = 1 if side is Side.DIALER else 2
        self._last_remote_id = 0
        self.goodbye_received = False
        self.goodbye_sent = False

    # --- streams --------------------------------------------------------------------------

    def next_stream_id(self) -> int:
        return self._next_local_id

    def stream_is_open(self, stream_id: int) -> bool:
        return stream_id in self._streams

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def _opened_by_local(self, stream_id: int) -> bool:
        return (stream_id % 2 == 1) == (self.side is Side.DIALER)

    # --- sending --------------------------------------------------------------------------

    def send(self, message: Message) -> bytes:
        self._check_send(message)
        return encode_frame(encode_message(message))

    def _check_send(self, message: Message) -> None:
        if type(message) is Data and self.phase is Phase.OPEN and self._streams.get(message.stream_id) is False:
            return  # the common case, answering on a stream the peer opened: nothing changes
        if self.phase is Phase.CLOSED:
            raise LocalProtocolError("connection is closed")
        kind = type(message)
        if isinstance(message, Error) and message.stream_id == 0:
            self.phase = Phase.CLOSED
            return
        if self.phase is not Phase.OPEN:
            move = HANDSHAKE_MOVES.get((self.side, SEND, self.phase, kind))
            if move is None:
                raise LocalProtocolError(f"cannot send {kind.__name__} in phase {self.phase.value}")
            self.phase = move
            return
        if kind in OPEN_CONNECTION_MESSAGES:
            if self.side not in OPEN_CONNECTION_MESSAGES[kind]:
                raise LocalProtocolError(f"the {self.side.value} cannot send {kind.__name__}")
            if isinstance(message, Goodbye):
                self.goodbye_sent = True
            return
        stream_id: int = getattr(message, "stream_id", 0)
        if isinstance(message, STREAM_OPENING):
            if stream_id != self._next_local_id:
                raise LocalProtocolError(f"next stream id is {self._next_local_id}, not {stream_id}")
            if self.goodbye_received:
                raise LocalProtocolError("peer said goodbye; no new streams")
            self._next_local_id += 2
            self._streams[stream_id] = True
            return
        if stream_id not in self._streams:
            if type(message) is Cancel and self._opened_by_local(stream_id) and stream_id < self._next_local_id:
                # a stream we opened that the peer ended: we give its answer up after all (it
                # did not check out), and the peer must learn of it (it billed that answer)
                return
            raise LocalProtocolError(f"stream {stream_id} is not open")
        local_opener = self._streams[stream_id]
        if isinstance(message, OPENER_MESSAGES) != local_opener:
            raise LocalProtocolError(f"{kind.__name__} on stream {stream_id} from the wrong side")
        if isinstance(message, STREAM_CLOSING):
            del self._streams[stream_id]

    # --- receiving ------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side."""
        if data:
            self._last_received = now
        self._decoder.feed(data)

    def next_event(self) -> Event | None:
        """The next message, ``ConnectionClosed`` at a clean end of input, or None for more."""
        while True:
            if self.phase is Phase.CLOSED:
                return None
            body = self._decoder.next_frame()
            if body is None:
                if self._decoder.eof:
                    self.phase = Phase.CLOSED
                    return ConnectionClosed()
                return None
            try:
                message = decode_message(body)
            except msgspec.ValidationError as exc:
                raise RemoteProtocolError(f"invalid message: {exc}") from exc
            except msgspec.DecodeError as exc:
                raise RemoteProtocolError(f"undecodable message: {exc}") from exc
            if self._accept(message):
                return message

    def _accept(self, message: Message) -> bool:
        """Check a received message; False when it is a harmless late message to drop."""
        kind = type(message)
        if type(message) is Data and self.phase is Phase.OPEN and self._streams.get(message.stream_id) is True:
            return True  # the common case, an answer on a stream we opened: nothing changes
        if isinstance(message, Error) and message.stream_id == 0:
            self.phase = Phase.CLOSED
            return True
        if self.phase is not Phase.OPEN:
            move = HANDSHAKE_MOVES.get((self.side, RECEIVE, self.phase, kind))
            if move is None:
                raise RemoteProtocolError(f"unexpected {kind.__name__} during the handshake")
            self.phase = move
            return True
        if kind in OPEN_CONNECTION_MESSAGES:
            peer = Side.LISTENER if self.side is Side.DIALER else Side.DIALER
            if peer not in OPEN_CONNECTION_MESSAGES[kind]:
                raise RemoteProtocolError(f"the {peer.value} cannot send {kind.__name__}")
            if isinstance(message, Goodbye):
                self.goodbye_received = True
            return True
        if not isinstance(message, STREAM_MESSAGES):
            raise RemoteProtocolError(f"unexpected {kind.__name__} after the handshake")
        stream_id = message.stream_id
        if isinstance(message, STREAM_OPENING):
            if self._opened_by_local(stream_id) or stream_id <= self._last_remote_id:
                raise RemoteProtocolError(f"invalid new stream id {stream_id}")
            if len(self._streams) >= self.max_streams:
                raise RemoteProtocolError("too many concurrent streams", ErrorCode.SATURATED)
            # One opened after our goodbye crossed it (the peer had not read it yet): it is taken
            # and refused on its own (``goodbye_sent`` tells the edge to), as HTTP/2 refuses a
            # stream that crosses a GOAWAY, not a fault that ends every stream of the connection.
            self._last_remote_id = stream_id
            self._streams[stream_id] = False
            return True
        local_opener = self._opened_by_local(stream_id)
        if isinstance(message, OPENER_MESSAGES) == local_opener:
            raise RemoteProtocolError(f"{kind.__name__} on stream {stream_id} from the wrong side")
        if stream_id not in self._streams:
            last = self._next_local_id - 2 if local_opener else self._last_remote_id
            if stream_id <= last:
                # The stream closed already (a cancel raced with the answer): dropped, except a
                # cancel that crossed our end. The opener gave the request up before the end
                # reached it, and so never got what the end carries (a receipt to pay with):
                # the handler must learn of it.
                return isinstance(message, Cancel)
            raise RemoteProtocolError(f"{kind.__name__} for unknown stream {stream_id}")
        if isinstance(message, STREAM_CLOSING):
            del self._streams[stream_id]
        return True

    # --- heartbeats -----------------------------------------------------------------------

    def tick(self, now: float) -> bytes | None:
        """Call periodically. Returns a ping to send when one is due; raises
        ``RemoteProtocolError`` when the peer has been silent for longer than ``dead_after``."""
        if self.phase is Phase.CLOSED:
            return None
        if now - self._last_received > self.dead_after:
            raise RemoteProtocolError(f"peer silent for {now - self._last_received:.1f} s", ErrorCode.TIMEOUT)
        if self.phase is Phase.OPEN and now - self._last_ping >= self.heartbeat_interval:
            self._last_ping = now
            self._ping_counter += 1
            return self.send(Ping(nonce=self._ping_counter))
        return None

    def close(self) -> None:
        self.phase = Phase.CLOSED
