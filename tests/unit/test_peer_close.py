"""A connection ends with a connection-level error, sent or received, and takes no new stream
once the peer said goodbye."""

from __future__ import annotations

import asyncio

import pytest

from cocoon.channel.peer import PeerGone
from cocoon.protocol.errors import ErrorCode
from cocoon.protocol.messages import Data, Error, Goodbye, Open
from tests.unit.test_peer_relay import Pair


async def test_a_connection_error_from_the_peer_ends_the_connection_on_both_sides() -> None:
    async with Pair() as pair:
        stream = await pair.stream()
        pair.listener.send_nowait(Error(stream_id=0, code=ErrorCode.BAD_REQUEST, message="announce a wallet"))
        lost = await stream.receive(5)  # the stream learns at once, not after its own timeout
        assert isinstance(lost, Error) and lost.code == ErrorCode.CONNECTION_LOST
        assert "announce a wallet" in lost.message
        await asyncio.wait_for(pair.tasks[0], 5)  # the dialer's read loop has ended
        assert pair.dialer.closed
        await asyncio.wait_for(pair.tasks[1], 5)  # and the sender closed its side
        assert pair.listener.closed
        with pytest.raises(PeerGone):
            await pair.dialer.open(
                lambda sid: Open(stream_id=sid, model="m", kind="chat", stream=True, max_tokens=0, body=b"{}")
            )


async def test_no_stream_opens_after_the_peer_said_goodbye() -> None:
    async with Pair() as pair:
        await pair.stream()
        pair.listener.send_nowait(Goodbye(reason="draining"))
        for _ in range(100):
            if pair.dialer.conn.goodbye_received:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(PeerGone, match="goodbye"):
            await pair.dialer.open(
                lambda sid: Open(stream_id=sid, model="m", kind="chat", stream=True, max_tokens=0, body=b"{}")
            )
        assert not pair.dialer.closed  # streams already open may still finish


async def test_a_peer_that_reads_nothing_is_dropped_instead_of_holding_the_writer() -> None:
    """A relay waiting to write to a client that stopped reading (while it still pings) would
    hold its worker slot forever: after ``dead_after`` the connection is given up."""
    async with Pair() as pair:
        stream = await pair.stream()
        pair.dialer.writer.transport.pause_reading()  # the dialer reads nothing more
        pair.listener.write_timeout = 0.5  # (its heartbeat still sees the dialer alive)
        payload = b"x" * 200_000
        with pytest.raises(PeerGone, match="took nothing"):
            async with asyncio.timeout(10):
                while True:
                    pair.listener.send_nowait(Data(stream_id=stream.id, payload=payload))
                    await pair.listener.flush()


async def test_a_connection_closed_here_keeps_the_reason_given_here() -> None:
    """Closing a connection ends its read loop, which then reads the end of the stream: that
    is not the peer closing it, and the logs and the streams' errors keep the reason we gave."""
    async with Pair() as pair:
        stream = await pair.stream()
        await pair.dialer.aclose("renewed: the proxy's attestation expires")
        await asyncio.wait_for(pair.tasks[0], 5)  # the dialer's read loop has ended
        assert pair.dialer.close_reason == "renewed: the proxy's attestation expires"
        lost = await stream.receive(5)
        assert isinstance(lost, Error) and "attestation expires" in lost.message
        await asyncio.wait_for(pair.tasks[1], 5)
        assert pair.listener.close_reason == "peer closed the connection"


async def test_a_stream_opened_across_our_goodbye_is_refused_and_the_connection_goes_on() -> None:
    """A worker renewing its connection says goodbye while the proxy may still send a request on
    it: that request is refused as ``shutting_down`` (the proxy sends it elsewhere), never handed
    on, and the requests running on the connection are not cut."""
    async with Pair() as pair:
        running = await pair.stream()
        pair.listener.send_nowait(Goodbye(reason="renewed"))
        crossing = await pair.dialer.open(  # before the dialer read the goodbye
            lambda sid: Open(stream_id=sid, model="m", kind="chat", stream=True, max_tokens=0, body=b"{}")
        )
        refused = await crossing.receive(5)
        assert isinstance(refused, Error) and refused.code == ErrorCode.SHUTTING_DOWN
        assert pair.dialer.conn.goodbye_received and pair.handler.opened.empty()
        pair.listener.send_nowait(Data(stream_id=running.id, payload=b"still answered"))
        assert await running.receive(5) == Data(stream_id=running.id, payload=b"still answered")
        assert not pair.dialer.closed and not pair.listener.closed
