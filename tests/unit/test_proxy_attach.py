"""A client's payment channel belongs to its connection only while that connection lives."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from cocoon.channel.peer import Peer
from cocoon.channel.verify import PeerIdentity
from cocoon.protocol.messages import Cancel, End, Open, PayAccount, PayTerms, Usage
from cocoon.proxy.payments import ProxyPayments
from cocoon.proxy.service import Proxy, _ClientHandler
from tests.unit.test_peer_relay import Pair, Recorder

CHANNEL = b"\x07" * 32


class SlowPayments:
    """Test double for the proxy's payments: the chain read in ``attach`` waits for ``gate``."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.only: list[bytes | None] = []  # the channel each attach was limited to

    async def attach(
        self, client_key: bytes, request: PayAccount, first: bool, live: object = (), *, only: bytes | None = None
    ) -> PayTerms:
        self.only.append(only)
        await self.gate.wait()
        return PayTerms(stream_id=request.stream_id, root=b"r" * 32, proxy_wallet=b"w" * 32, close_delay=3600,
                        channel=CHANNEL, min_stake=1, exists=True, balance=10, stake=1, redeemed=0, charged=0,
                        paid=0, seqno=0)  # fmt: skip


class ClosingClient:
    """A client connection that can go away mid-attach."""

    def __init__(self) -> None:
        self.closed = False
        self.identity = PeerIdentity("client", b"c" * 32)
        self.sent: list[Any] = []

    async def send(self, message: Any) -> None:
        self.sent.append(message)


async def test_a_client_gone_while_its_channel_was_read_keeps_no_channel() -> None:
    proxy = Proxy.__new__(Proxy)  # only the attach path is exercised: no settings, no listener
    payments = SlowPayments()
    proxy.payments = cast(ProxyPayments, payments)
    proxy._client_channels = {}
    proxy._live_numbers = set()
    client = ClosingClient()
    attach = asyncio.create_task(proxy._attach(cast(Peer, client), PayAccount(stream_id=1, wallet=b"a" * 32)))
    await asyncio.sleep(0.01)
    client.closed = True  # the connection ended, and its books were cleaned up, meanwhile
    payments.gate.set()
    await attach
    # else a later connection could find this channel (before, under a reused id()) and be billed to it
    assert proxy._client_channels == {} and client.sent == []
    live = ClosingClient()
    attach = asyncio.create_task(proxy._attach(cast(Peer, live), PayAccount(stream_id=1, wallet=b"a" * 32)))
    await attach
    assert proxy._client_channels == {cast(Peer, live): CHANNEL} and isinstance(live.sent[0], PayTerms)


async def test_what_a_client_awaits_on_a_closed_connection_is_lost_only_once_it_had_time_to_arrive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An answer that reached the client just before its connection closed is paid for (and no
    longer awaited) within ``CLOSED_WRITE_OFF_DELAY``: only then is one it still awaits lost."""
    from cocoon.proxy import service

    proxy = Proxy.__new__(Proxy)
    proxy._live_numbers = {1, 2}
    proxy._closed_at = {}
    assert not proxy._gone(1) and proxy._gone(7)  # open; closed long ago (or never seen)
    proxy._client_closed(1)
    assert not proxy._gone(1) and not proxy._gone(2)
    monkeypatch.setattr(service, "CLOSED_WRITE_OFF_DELAY", 0.0)
    assert proxy._gone(1) and not proxy._gone(2)


class GivingUpPayments:
    """Test double for the proxy's payments: records the answers written off as given up."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bytes]] = []

    def given_up(self, channel: bytes, request_id: bytes) -> None:
        self.calls.append((channel, request_id))


def test_a_cancel_that_crosses_a_billed_end_gives_that_answer_up() -> None:
    proxy = Proxy.__new__(Proxy)  # only the cancel path is exercised
    payments = GivingUpPayments()
    proxy.payments = cast(ProxyPayments, payments)
    proxy._relays = {}
    proxy._billed = {}
    client = cast(Peer, ClosingClient())
    proxy._client_channels = {client: CHANNEL}
    proxy._billed_ends(client)[5] = (b"r" * 16, CHANNEL)  # as ``_relay_to`` notes it when it bills the end
    proxy.cancel_relay(client, 7)  # a stream still running, or unknown: nothing billed
    assert payments.calls == []
    proxy.cancel_relay(client, 5)
    proxy.cancel_relay(client, 5)  # (once)
    assert payments.calls == [(CHANNEL, b"r" * 16)]


async def test_a_request_is_billed_to_the_channel_it_was_admitted_on() -> None:
    """A client must not move an admitted request's bill to another (empty) channel by naming
    it before the answer ends: the relay carries the channel from admission, and a connection
    attached to one channel asks the books for that one only."""
    proxy = Proxy.__new__(Proxy)
    payments = SlowPayments()
    payments.gate.set()
    proxy.payments = cast(ProxyPayments, payments)
    proxy._client_channels = {}
    proxy._live_numbers = set()
    proxy._relays, proxy._client_relays, proxy._ids_in_flight = {}, {}, set()
    relayed: list[bytes | None] = []

    async def relay_double(client: Peer, request: Open, channel: bytes | None = None) -> None:
        relayed.append(channel)

    proxy._relay = relay_double  # type: ignore[method-assign]
    proxy.admit = lambda client, message: None  # type: ignore[method-assign]
    client = ClosingClient()
    await proxy._attach(cast(Peer, client), PayAccount(stream_id=1, wallet=b"a" * 32))
    assert payments.only == [None]
    proxy.start_relay(cast(Peer, client), Open(stream_id=3, model="m", kind="chat", stream=True, max_tokens=0,
                                               body=b"x", request_id=b"r" * 16))  # fmt: skip
    proxy._client_channels[cast(Peer, client)] = b"\x08" * 32  # (what a second attach could not do)
    await asyncio.gather(*proxy._relays.values())
    assert relayed == [CHANNEL]
    await proxy._attach(cast(Peer, client), PayAccount(stream_id=5, wallet=b"b" * 32))
    assert payments.only == [None, b"\x08" * 32]


class CancelsToTheProxy(Recorder):
    """A client connection's handler at the proxy: streams opened are kept (the test answers
    them), cancels go to the proxy's own handler."""

    def __init__(self, proxy: Proxy) -> None:
        super().__init__()
        self.proxy_handler = _ClientHandler(proxy)

    def stream_cancelled(self, peer: Peer, message: Cancel) -> None:
        self.proxy_handler.stream_cancelled(peer, message)


async def test_a_cancel_that_crosses_a_billed_end_on_the_wire_gives_that_answer_up() -> None:
    """Over a real connection: the end closes the stream at the proxy as it is sent, and the
    client's cancel, sent before the end reached it, arrives after. It must still reach
    ``cancel_relay``: the client dropped the end, has no receipt, cannot pay, and would be
    refused every later request as owing for it."""
    proxy = Proxy.__new__(Proxy)  # only the cancel path is exercised
    payments = GivingUpPayments()
    proxy.payments = cast(ProxyPayments, payments)
    proxy._relays = {}
    proxy._billed = {}
    async with Pair(listener_handler=CancelsToTheProxy(proxy)) as pair:
        stream = await pair.stream()  # the client (dialer) sent a request to the proxy (listener)
        client = pair.listener
        proxy._client_channels = {client: CHANNEL}
        proxy._billed_ends(client)[stream.id] = (b"r" * 16, CHANNEL)  # billed, as ``_relay_to`` does
        client.send_nowait(End(stream_id=stream.id, usage=Usage(completion_tokens=3), receipt=b"signed"))
        stream.cancel_nowait("the caller left")  # before the end arrives: they cross
        async with asyncio.timeout(5):
            while not payments.calls:
                await asyncio.sleep(0.01)
        assert payments.calls == [(CHANNEL, b"r" * 16)]
        assert not pair.dialer.closed and not pair.listener.closed
