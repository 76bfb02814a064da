"""The sans-I/O connection state machine, driven in memory (no sockets, no clock)."""

from __future__ import annotations

import itertools

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cocoon.protocol.connection import (
    HANDSHAKE_MOVES,
    RECEIVE,
    SEND,
    Connection,
    ConnectionClosed,
    Phase,
    Side,
)
from cocoon.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from cocoon.protocol.framing import encode_frame
from cocoon.protocol.messages import (
    Announce,
    Cancel,
    Capacity,
    Challenge,
    Data,
    End,
    Error,
    Goodbye,
    Hello,
    ListModels,
    Message,
    ModelList,
    Open,
    Ping,
    Pong,
    Usage,
    Welcome,
    decode_message,
    encode_message,
)

CHALLENGE = Challenge(nonce=b"n" * 16)
HELLO = Hello(role="worker", public_key=b"k" * 32, signature=b"s" * 64)
WELCOME = Welcome(role="proxy")
ANNOUNCE = Announce(model="m", engine="e", capacity=2)
USAGE = Usage(prompt_tokens=1, completion_tokens=2)


def frame(message: Message) -> bytes:
    """The bytes a (possibly misbehaving) peer would write for ``message``."""
    return encode_frame(encode_message(message))


def open_msg(stream_id: int) -> Open:
    return Open(stream_id=stream_id, model="m", kind="chat", stream=True, max_tokens=0, body=b"{}")


def events(conn: Connection) -> list[object]:
    out: list[object] = []
    while (event := conn.next_event()) is not None:
        out.append(event)
    return out


def deliver(conn: Connection, data: bytes, now: float = 0.0) -> list[object]:
    conn.receive_data(data, now)
    return events(conn)


def pair(now: float = 0.0, **kwargs: float) -> tuple[Connection, Connection]:
    """A dialer and a listener that completed the handshake with each other."""
    dialer = Connection(Side.DIALER, now=now, **kwargs)  # type: ignore[arg-type]
    listener = Connection(Side.LISTENER, now=now, **kwargs)  # type: ignore[arg-type]
    assert deliver(dialer, listener.send(CHALLENGE), now) == [CHALLENGE]
    assert deliver(listener, dialer.send(HELLO), now) == [HELLO]
    assert deliver(dialer, listener.send(WELCOME), now) == [WELCOME]
    assert dialer.phase is Phase.OPEN
    assert listener.phase is Phase.OPEN
    return dialer, listener


# --- the handshake -------------------------------------------------------------------------


def test_handshake_table_is_the_documented_one() -> None:
    assert HANDSHAKE_MOVES == {
        (Side.LISTENER, SEND, Phase.START, Challenge): Phase.CHALLENGED,
        (Side.LISTENER, RECEIVE, Phase.CHALLENGED, Hello): Phase.HELLO,
        (Side.LISTENER, SEND, Phase.HELLO, Welcome): Phase.OPEN,
        (Side.DIALER, RECEIVE, Phase.START, Challenge): Phase.CHALLENGED,
        (Side.DIALER, SEND, Phase.CHALLENGED, Hello): Phase.HELLO,
        (Side.DIALER, RECEIVE, Phase.HELLO, Welcome): Phase.OPEN,
    }


def test_full_handshake_in_memory() -> None:
    dialer, listener = pair()
    assert dialer.next_stream_id() == 1
    assert listener.next_stream_id() == 2


# The steps that bring each side to each phase (all of them legal moves).
ROUTE: dict[Side, list[tuple[str, Message]]] = {
    Side.LISTENER: [(SEND, CHALLENGE), (RECEIVE, HELLO), (SEND, WELCOME)],
    Side.DIALER: [(RECEIVE, CHALLENGE), (SEND, HELLO), (RECEIVE, WELCOME)],
}
PHASES = [Phase.START, Phase.CHALLENGED, Phase.HELLO, Phase.OPEN]
CANDIDATES: dict[type, Message] = {
    Challenge: CHALLENGE,
    Hello: HELLO,
    Welcome: WELCOME,
    Open: open_msg(1),
    Data: Data(stream_id=1, payload=b"x"),
}


def at_phase(side: Side, phase: Phase) -> Connection:
    conn = Connection(side, now=0.0)
    for direction, message in ROUTE[side][: PHASES.index(phase)]:
        if direction == SEND:
            conn.send(message)
        else:
            assert deliver(conn, frame(message)) == [message]
    assert conn.phase is phase
    return conn


HANDSHAKE_CASES = [
    (side, direction, phase, kind)
    for side, direction, phase, kind in itertools.product(Side, (SEND, RECEIVE), PHASES, CANDIDATES)
    if phase is not Phase.OPEN or kind in (Challenge, Hello, Welcome)
]


@pytest.mark.parametrize(
    ("side", "direction", "phase", "kind"),
    HANDSHAKE_CASES,
    ids=[f"{s.value}-{d}-{p.value}-{k.__name__}" for s, d, p, k in HANDSHAKE_CASES],
)
def test_handshake_moves(side: Side, direction: str, phase: Phase, kind: type) -> None:
    conn = at_phase(side, phase)
    message = CANDIDATES[kind]
    allowed = HANDSHAKE_MOVES.get((side, direction, phase, kind))
    if allowed is not None:
        if direction == SEND:
            data = conn.send(message)
            assert decode_message(data[5:]) == message
        else:
            assert deliver(conn, frame(message)) == [message]
        assert conn.phase is allowed
    elif direction == SEND:
        with pytest.raises(LocalProtocolError):
            conn.send(message)
    else:
        with pytest.raises(RemoteProtocolError):
            deliver(conn, frame(message))


def test_every_handshake_move_is_exercised() -> None:
    walked = {(s, d, p, k) for s, d, p, k in HANDSHAKE_CASES}
    assert set(HANDSHAKE_MOVES) <= walked


@pytest.mark.parametrize("message", [ANNOUNCE, Ping(nonce=1), Pong(nonce=1), Goodbye(), Cancel(stream_id=1)])
def test_connection_messages_before_open_are_remote_errors(message: Message) -> None:
    with pytest.raises(RemoteProtocolError):
        deliver(Connection(Side.LISTENER, now=0.0), frame(message))
    with pytest.raises(LocalProtocolError):
        Connection(Side.DIALER, now=0.0).send(message)


def test_error_frame_during_handshake_closes() -> None:
    dialer = Connection(Side.DIALER, now=0.0)
    error = Error(stream_id=0, code=ErrorCode.UNAUTHORIZED, message="no")
    assert deliver(dialer, frame(error)) == [error]
    assert dialer.phase is Phase.CLOSED
    listener = Connection(Side.LISTENER, now=0.0)
    listener.send(CHALLENGE)
    listener.send(error)
    assert listener.phase is Phase.CLOSED


# --- streams --------------------------------------------------------------------------------


def test_request_and_answer_on_a_stream() -> None:
    dialer, listener = pair()
    request = open_msg(dialer.next_stream_id())
    assert deliver(listener, dialer.send(request)) == [request]
    assert dialer.stream_is_open(1)
    assert listener.stream_is_open(1)
    chunk = Data(stream_id=1, payload=b"tok")
    end = End(stream_id=1, usage=USAGE, finish_reason="stop")
    assert deliver(dialer, listener.send(chunk) + listener.send(end)) == [chunk, end]
    assert not dialer.stream_is_open(1)
    assert not listener.stream_is_open(1)
    assert dialer.open_streams == listener.open_streams == 0


def test_dialer_opens_odd_ids_listener_even_ids() -> None:
    dialer, listener = pair()
    for expected in (1, 3, 5):
        assert dialer.next_stream_id() == expected
        deliver(listener, dialer.send(open_msg(expected)))
    for expected in (2, 4, 6):
        assert listener.next_stream_id() == expected
        deliver(dialer, listener.send(ListModels(stream_id=expected)))
    assert dialer.open_streams == listener.open_streams == 6


@pytest.mark.parametrize("stream_id", [2, 3])
def test_local_open_with_wrong_id_is_local_error(stream_id: int) -> None:
    dialer, _ = pair()
    with pytest.raises(LocalProtocolError):
        dialer.send(open_msg(stream_id))


def test_open_with_the_wrong_parity_is_remote_error() -> None:
    dialer, listener = pair()
    with pytest.raises(RemoteProtocolError):
        deliver(listener, frame(open_msg(2)))  # even ids belong to the listener
    with pytest.raises(RemoteProtocolError):
        deliver(dialer, frame(open_msg(1)))  # odd ids belong to the dialer


def test_reused_stream_id_is_remote_error() -> None:
    _, listener = pair()
    deliver(listener, frame(open_msg(1)))
    with pytest.raises(RemoteProtocolError):
        deliver(listener, frame(open_msg(1)))


def test_reused_id_of_a_closed_stream_is_remote_error() -> None:
    _, listener = pair()
    deliver(listener, frame(open_msg(1)))
    listener.send(End(stream_id=1, usage=USAGE))
    with pytest.raises(RemoteProtocolError):
        deliver(listener, frame(open_msg(1)))


def test_decreasing_stream_id_is_remote_error() -> None:
    _, listener = pair()
    deliver(listener, frame(open_msg(5)))  # ids may skip, but never go back
    with pytest.raises(RemoteProtocolError):
        deliver(listener, frame(open_msg(3)))


def test_data_for_a_never_opened_stream_is_remote_error() -> None:
    dialer, listener = pair()
    deliver(listener, dialer.send(open_msg(1)))
    with pytest.raises(RemoteProtocolError, match="unknown stream"):
        deliver(dialer, frame(Data(stream_id=3, payload=b"x")))


def test_cancel_for_a_never_opened_stream_is_remote_error() -> None:
    _, listener = pair()
    with pytest.raises(RemoteProtocolError):
        deliver(listener, frame(Cancel(stream_id=1)))


def test_data_after_local_cancel_is_dropped() -> None:
    dialer, listener = pair()
    deliver(listener, dialer.send(open_msg(1)))
    cancel = dialer.send(Cancel(stream_id=1))
    assert not dialer.stream_is_open(1)
    # the listener answered before it saw the cancel
    late = listener.send(Data(stream_id=1, payload=b"late")) + listener.send(End(stream_id=1, usage=USAGE))
    dialer.receive_data(late, 0.0)
    assert dialer.next_event() is None
    assert dialer.phase is Phase.OPEN
    # ... and the listener sees the cancel for a stream it already ended: delivered (it crossed
    # the end, which the dialer never got), and nothing else changes
    assert deliver(listener, cancel) == [Cancel(stream_id=1)]
    assert listener.phase is Phase.OPEN and not listener.stream_is_open(1)


def test_a_cancel_crossing_our_end_is_delivered() -> None:
    """The opener gave the request up before our end reached it: the end, and the receipt it
    carries, are dropped at its side, and only the cancel tells us (the proxy writes off an
    answer it billed then: the client cannot pay without that receipt)."""
    dialer, listener = pair()
    deliver(listener, dialer.send(open_msg(1)) + dialer.send(open_msg(3)))
    end = listener.send(End(stream_id=1, usage=USAGE))  # the end leaves the listener...
    cancel = dialer.send(Cancel(stream_id=1, reason="caller left"))  # ...as the cancel leaves the dialer
    assert deliver(dialer, end) == []
    assert deliver(listener, cancel) == [Cancel(stream_id=1, reason="caller left")]
    assert listener.phase is Phase.OPEN and listener.stream_is_open(3) and not listener.stream_is_open(1)
    # (so is a second one: handlers take cancels for streams they no longer know), and one for a
    # stream that never was is still an error
    assert deliver(listener, frame(Cancel(stream_id=1))) == [Cancel(stream_id=1)]
    with pytest.raises(RemoteProtocolError, match="unknown stream"):
        deliver(listener, frame(Cancel(stream_id=5)))


def test_an_answer_that_ended_can_still_be_given_up_and_the_responder_learns_of_it() -> None:
    """The client refuses an answer whose end came but which does not check out (its sealed
    receipt missing, say): its cancel after the end tells the proxy, which billed the answer."""
    dialer, listener = pair()
    deliver(listener, dialer.send(open_msg(1)))
    assert deliver(dialer, listener.send(End(stream_id=1, usage=USAGE))) == [End(stream_id=1, usage=USAGE)]
    refusal = dialer.send(Cancel(stream_id=1, reason="the answer does not check out"))
    assert deliver(listener, refusal) == [Cancel(stream_id=1, reason="the answer does not check out")]
    with pytest.raises(LocalProtocolError, match="not open"):
        dialer.send(Cancel(stream_id=3))  # a stream we never opened
    with pytest.raises(LocalProtocolError, match="not open"):
        dialer.send(Data(stream_id=1, payload=b"x"))  # only a cancel follows an end


def test_late_data_is_dropped_but_following_messages_arrive() -> None:
    dialer, listener = pair()
    deliver(listener, dialer.send(open_msg(1)))
    deliver(listener, dialer.send(open_msg(3)))
    dialer.send(Cancel(stream_id=1))
    ping = Ping(nonce=4)
    chunk = Data(stream_id=3, payload=b"ok")
    got = deliver(
        dialer, listener.send(Data(stream_id=1, payload=b"late")) + listener.send(ping) + listener.send(chunk)
    )
    assert got == [ping, chunk]


@pytest.mark.parametrize(
    "message",
    [Data(stream_id=1, payload=b"x"), End(stream_id=1, usage=USAGE), ModelList(stream_id=1, models=[])],
    ids=lambda m: type(m).__name__,
)
def test_responder_messages_from_the_opener_are_errors(message: Message) -> None:
    dialer, listener = pair()
    deliver(listener, dialer.send(open_msg(1)))
    with pytest.raises(LocalProtocolError):
        dialer.send(message)
    with pytest.raises(RemoteProtocolError, match="wrong side"):
        deliver(listener, frame(message))


def test_cancel_from_the_responder_is_an_error() -> None:
    dialer, listener = pair()
    deliver(listener, dialer.send(open_msg(1)))
    with pytest.raises(LocalProtocolError):
        listener.send(Cancel(stream_id=1))
    with pytest.raises(RemoteProtocolError):
        deliver(dialer, frame(Cancel(stream_id=1)))


@pytest.mark.parametrize(
    "closing",
    [End(stream_id=1, usage=USAGE), Error(stream_id=1, code="engine_error"), ModelList(stream_id=1, models=[])],
    ids=lambda m: type(m).__name__,
)
def test_closing_messages_close_the_stream(closing: Message) -> None:
    dialer, listener = pair()
    deliver(listener, dialer.send(open_msg(1)))
    assert deliver(dialer, listener.send(closing)) == [closing]
    assert not dialer.stream_is_open(1)
    assert not listener.stream_is_open(1)
    with pytest.raises(LocalProtocolError):
        listener.send(Data(stream_id=1, payload=b"after the end"))
    assert dialer.phase is Phase.OPEN


def test_cancel_closes_the_stream_on_both_sides() -> None:
    dialer, listener = pair()
    deliver(listener, dialer.send(open_msg(1)))
    assert deliver(listener, dialer.send(Cancel(stream_id=1))) == [Cancel(stream_id=1)]
    assert not listener.stream_is_open(1)
    assert not dialer.stream_is_open(1)


def test_data_keeps_the_stream_open() -> None:
    dialer, listener = pair()
    deliver(listener, dialer.send(open_msg(1)))
    for i in range(3):
        deliver(dialer, listener.send(Data(stream_id=1, payload=bytes([i]))))
    assert dialer.stream_is_open(1)
    assert listener.stream_is_open(1)


def test_error_with_stream_zero_closes_the_connection() -> None:
    dialer, listener = pair()
    deliver(listener, dialer.send(open_msg(1)))
    fatal = Error(stream_id=0, code=ErrorCode.INTERNAL, message="bye")
    trailing = listener.send(Data(stream_id=1, payload=b"x"))
    assert deliver(dialer, listener.send(fatal) + trailing) == [fatal]
    assert dialer.phase is Phase.CLOSED
    assert listener.phase is Phase.CLOSED
    with pytest.raises(LocalProtocolError):
        dialer.send(Ping(nonce=1))
    with pytest.raises(LocalProtocolError):
        listener.send(Ping(nonce=1))
    assert dialer.tick(1000.0) is None  # a closed connection neither pings nor times out


def test_goodbye_received_blocks_new_local_streams() -> None:
    dialer, listener = pair()
    deliver(listener, dialer.send(open_msg(1)))
    assert deliver(dialer, listener.send(Goodbye(reason="restart"))) == [Goodbye(reason="restart")]
    assert dialer.goodbye_received
    assert listener.goodbye_sent
    with pytest.raises(LocalProtocolError, match="goodbye"):
        dialer.send(open_msg(3))
    # streams already open finish normally
    chunk = Data(stream_id=1, payload=b"x")
    assert deliver(dialer, listener.send(chunk)) == [chunk]


def test_a_stream_opened_across_our_goodbye_is_taken_to_be_refused_on_its_own() -> None:
    """The peer opened it before our goodbye reached it: as HTTP/2 refuses a stream that crosses
    a GOAWAY, the stream is refused (the edge answers ``shutting_down``), while the connection
    and the streams on it go on."""
    dialer, listener = pair()
    deliver(listener, dialer.send(open_msg(1)))
    goodbye = listener.send(Goodbye(reason="renewed"))
    crossing = dialer.send(open_msg(3))  # sent before the dialer read the goodbye
    assert listener.goodbye_sent
    assert deliver(listener, crossing) == [open_msg(3)]
    assert listener.stream_is_open(3)
    refusal = Error(stream_id=3, code=ErrorCode.SHUTTING_DOWN, message="said goodbye")
    chunk = Data(stream_id=1, payload=b"still answering")
    assert deliver(dialer, goodbye + listener.send(refusal) + listener.send(chunk)) == [
        Goodbye(reason="renewed"),
        refusal,
        chunk,
    ]
    assert dialer.phase is Phase.OPEN and listener.phase is Phase.OPEN and not listener.stream_is_open(3)
    # the stream id rules still hold
    with pytest.raises(RemoteProtocolError, match="invalid new stream id"):
        deliver(listener, frame(open_msg(3)))


def test_max_streams_exceeded_is_saturated() -> None:
    dialer, listener = pair(max_streams=2)
    deliver(listener, dialer.send(open_msg(1)) + dialer.send(open_msg(3)))
    assert listener.open_streams == 2
    with pytest.raises(RemoteProtocolError) as info:
        deliver(listener, dialer.send(open_msg(5)))
    assert info.value.code is ErrorCode.SATURATED


def test_closed_streams_free_capacity() -> None:
    dialer, listener = pair(max_streams=1)
    deliver(listener, dialer.send(open_msg(1)))
    deliver(dialer, listener.send(End(stream_id=1, usage=USAGE)))
    assert deliver(listener, dialer.send(open_msg(3))) == [open_msg(3)]


@pytest.mark.parametrize("message", [ANNOUNCE, Capacity(capacity=0)], ids=lambda m: type(m).__name__)
def test_announce_and_capacity_only_from_the_dialer(message: Message) -> None:
    dialer, listener = pair()
    assert deliver(listener, dialer.send(message)) == [message]
    with pytest.raises(LocalProtocolError):
        listener.send(message)
    with pytest.raises(RemoteProtocolError):
        deliver(dialer, frame(message))


@pytest.mark.parametrize("message", [Ping(nonce=1), Pong(nonce=1), Goodbye()], ids=lambda m: type(m).__name__)
def test_symmetric_connection_messages(message: Message) -> None:
    dialer, listener = pair()
    assert deliver(listener, dialer.send(message)) == [message]
    assert deliver(dialer, listener.send(message)) == [message]


@pytest.mark.parametrize("message", [CHALLENGE, HELLO, WELCOME], ids=lambda m: type(m).__name__)
def test_handshake_messages_after_open(message: Message) -> None:
    dialer, listener = pair()
    for conn in (dialer, listener):
        with pytest.raises(RemoteProtocolError):
            deliver(conn, frame(message))
    for conn in pair():
        with pytest.raises(LocalProtocolError):
            conn.send(message)


def test_invalid_message_body_is_remote_error() -> None:
    dialer, _ = pair()
    with pytest.raises(RemoteProtocolError, match="invalid message"):
        deliver(dialer, encode_frame(msgspec.msgpack.encode({"t": "data", "stream_id": -1, "payload": b""})))
    dialer, _ = pair()
    with pytest.raises(RemoteProtocolError, match="undecodable"):
        deliver(dialer, encode_frame(b"\xc1"))


def test_deeply_nested_message_is_remote_error() -> None:
    _, listener = pair()
    body = b"\x83\xa1t\xa4ping\xa5nonce\x01\xa1x" + b"\x91" * 50_000 + b"\x01"
    with pytest.raises(RemoteProtocolError):
        deliver(listener, encode_frame(body))


def test_oversized_frame_is_too_large() -> None:
    conn = Connection(Side.DIALER, now=0.0, max_frame=64)
    with pytest.raises(RemoteProtocolError) as info:
        deliver(conn, encode_frame(b"x" * 64))
    assert info.value.code is ErrorCode.TOO_LARGE


# --- end of input ---------------------------------------------------------------------------


def test_clean_eof_between_frames_is_connection_closed() -> None:
    dialer, listener = pair()
    ping = Ping(nonce=1)
    listener_bytes = listener.send(ping)
    dialer.receive_data(listener_bytes, 0.0)
    dialer.receive_data(b"", 0.0)
    assert events(dialer) == [ping, ConnectionClosed()]
    assert dialer.phase is Phase.CLOSED
    assert dialer.next_event() is None


def test_eof_during_handshake_is_connection_closed() -> None:
    conn = Connection(Side.DIALER, now=0.0)
    assert deliver(conn, b"") == [ConnectionClosed()]


def test_eof_inside_a_frame_is_remote_error() -> None:
    dialer, listener = pair()
    data = listener.send(Ping(nonce=1))
    dialer.receive_data(data[:-1], 0.0)
    assert dialer.next_event() is None
    dialer.receive_data(b"", 0.0)
    with pytest.raises(RemoteProtocolError):
        dialer.next_event()


def test_close_stops_everything() -> None:
    dialer, listener = pair()
    dialer.close()
    assert dialer.phase is Phase.CLOSED
    assert deliver(dialer, listener.send(Ping(nonce=1))) == []
    with pytest.raises(LocalProtocolError):
        dialer.send(Ping(nonce=2))


# --- heartbeats -----------------------------------------------------------------------------


def test_tick_pings_once_the_interval_passed() -> None:
    dialer, _ = pair(heartbeat_interval=5.0, dead_after=15.0)
    assert dialer.tick(1.0) is None
    assert dialer.tick(4.99) is None
    ping = dialer.tick(5.0)
    assert ping is not None
    assert decode_message(ping[5:]) == Ping(nonce=1)
    assert dialer.tick(6.0) is None  # the interval restarts from the last ping
    second = dialer.tick(10.0)
    assert second is not None
    assert decode_message(second[5:]) == Ping(nonce=2)


def test_ping_from_tick_is_accepted_by_the_peer() -> None:
    dialer, listener = pair(heartbeat_interval=1.0)
    ping = dialer.tick(1.0)
    assert ping is not None
    assert deliver(listener, ping, 1.0) == [Ping(nonce=1)]


def test_tick_does_not_ping_during_the_handshake() -> None:
    conn = Connection(Side.DIALER, now=0.0, heartbeat_interval=1.0, dead_after=10.0)
    assert conn.tick(5.0) is None


def test_silent_peer_times_out() -> None:
    dialer, _ = pair(heartbeat_interval=5.0, dead_after=15.0)
    dialer.tick(15.0)  # exactly dead_after: still alive
    with pytest.raises(RemoteProtocolError) as info:
        dialer.tick(15.01)
    assert info.value.code is ErrorCode.TIMEOUT


def test_silent_peer_times_out_during_the_handshake() -> None:
    conn = Connection(Side.LISTENER, now=100.0, dead_after=3.0)
    conn.send(CHALLENGE)
    assert conn.tick(102.0) is None
    with pytest.raises(RemoteProtocolError) as info:
        conn.tick(103.5)
    assert info.value.code is ErrorCode.TIMEOUT


def test_received_data_resets_the_timer() -> None:
    dialer, listener = pair(heartbeat_interval=5.0, dead_after=15.0)
    deliver(dialer, listener.send(Pong(nonce=1)), now=10.0)
    dialer.tick(24.0)  # 14 s after the last bytes: alive
    with pytest.raises(RemoteProtocolError) as info:
        dialer.tick(25.5)
    assert info.value.code is ErrorCode.TIMEOUT


def test_partial_frame_also_resets_the_timer() -> None:
    dialer, listener = pair(dead_after=15.0)
    dialer.receive_data(listener.send(Ping(nonce=1))[:3], 14.0)
    dialer.tick(28.0)


def test_eof_does_not_reset_the_timer() -> None:
    dialer, _ = pair(dead_after=15.0)
    dialer.receive_data(b"", 14.0)
    with pytest.raises(RemoteProtocolError):
        dialer.tick(15.5)


# --- fuzzing --------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def feed_all(conn: Connection, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            if chunk:
                conn.receive_data(chunk, 0.0)
                events(conn)
        conn.receive_data(b"", 0.0)
        events(conn)
    except RemoteProtocolError:
        pass


@FUZZ
@given(side=st.sampled_from(Side), chunks=st.lists(st.binary(max_size=256), max_size=4))
def test_random_bytes_to_a_fresh_connection(side: Side, chunks: list[bytes]) -> None:
    feed_all(Connection(side, now=0.0, max_frame=4096), chunks)


TAGS = [
    "challenge",
    "hello",
    "welcome",
    "announce",
    "ping",
    "pong",
    "goodbye",
    "open",
    "list_models",
    "model_list",
    "data",
    "end",
    "cancel",
    "error",
    "bogus",
]
FIELDS = [
    "nonce",
    "software",
    "role",
    "public_key",
    "signature",
    "evidence",
    "model",
    "engine",
    "capacity",
    "stream_id",
    "kind",
    "stream",
    "max_tokens",
    "body",
    "payload",
    "usage",
    "models",
    "code",
    "message",
    "reason",
    "finish_reason",
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=70)
    | st.sampled_from(["client", "proxy", "worker", "chat", "completion"])
)
msgpack_values = (
    scalars
    | st.lists(scalars, max_size=3)
    | st.dictionaries(st.sampled_from(["id", "workers", "capacity", "prompt_tokens", "x"]), scalars, max_size=3)
)
random_bodies = st.builds(
    lambda tag, fields: msgspec.msgpack.encode({"t": tag, **fields}),
    st.sampled_from(TAGS),
    st.dictionaries(st.sampled_from(FIELDS), msgpack_values, max_size=6),
) | msgpack_values.map(msgspec.msgpack.encode)


@FUZZ
@given(side=st.sampled_from(Side), bodies=st.lists(random_bodies, min_size=1, max_size=3), opened=st.booleans())
def test_random_msgpack_frames(side: Side, bodies: list[bytes], opened: bool) -> None:
    if opened:
        dialer, listener = pair()
        conn = dialer if side is Side.DIALER else listener
    else:
        conn = Connection(side, now=0.0)
    feed_all(conn, [b"".join(encode_frame(b) for b in bodies)])


stream_ids = st.integers(min_value=1, max_value=12)
valid_messages = st.one_of(
    st.builds(open_msg, stream_ids),
    st.builds(ListModels, stream_id=stream_ids),
    st.builds(Data, stream_id=stream_ids, payload=st.just(b"x")),
    st.builds(End, stream_id=stream_ids, usage=st.just(USAGE)),
    st.builds(ModelList, stream_id=stream_ids, models=st.just([])),
    st.builds(Cancel, stream_id=stream_ids),
    st.builds(Error, stream_id=st.integers(min_value=0, max_value=12), code=st.just("x")),
    st.just(ANNOUNCE),
    st.just(Ping(nonce=1)),
    st.just(Pong(nonce=1)),
    st.just(Goodbye()),
    st.sampled_from([CHALLENGE, HELLO, WELCOME]),
)


@FUZZ
@given(
    side=st.sampled_from(Side),
    script=st.lists(st.tuples(st.booleans(), valid_messages), max_size=12),
)
def test_random_well_formed_messages_to_an_open_connection(side: Side, script: list[tuple[bool, Message]]) -> None:
    """Whatever valid-looking messages a peer sends, in whatever order, and whatever we send
    (when our own state machine lets us), peer input only ever raises RemoteProtocolError."""
    dialer, listener = pair(max_streams=3)
    conn = dialer if side is Side.DIALER else listener
    try:
        for local, message in script:
            if local:
                try:
                    conn.send(message)
                except LocalProtocolError:
                    pass
            else:
                conn.receive_data(frame(message), 0.0)
                events(conn)
    except RemoteProtocolError:
        pass
