"""The client's link to a proxy is renewed before the proxy's attestation expires in the client's
eyes: a fresh connection is dialed and set up (payments) first, new requests go to it at once,
and the old connection closes once its requests are done, instead of being cut at expiry with
them."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.channel.peer import Peer
from cocoon.channel.verify import PeerIdentity, PeerVerifier
from cocoon.client import link as link_module
from cocoon.client.link import ProxyLink
from cocoon.protocol.messages import End, Open, Usage
from tests.unit.test_peer_relay import Recorder, open_connections

LIFETIME = 6.0  # the proxy's evidence, in the client's eyes: renewed 1.5 s (a quarter) before it ends


class ProxyDouble:
    """Stands in for ``dial``: each call is a new connection (a socket pair, no TLS) to a proxy
    whose evidence the client trusts for ``LIFETIME`` seconds from then."""

    def __init__(self) -> None:
        self.dialed: list[Peer] = []  # the client's side of each connection
        self.proxy_sides: list[Peer] = []
        self.handlers: list[Recorder] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def dial(self, host: str, port: int, **options: Any) -> Peer:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        proxy_reader, proxy_writer = await asyncio.open_connection(sock=theirs)
        dialer, listener = open_connections(loop.time())
        client_side = Peer(reader, writer, dialer, PeerIdentity("proxy", b"p" * 32, expires_at=time.time() + LIFETIME))
        proxy_side = Peer(proxy_reader, proxy_writer, listener, PeerIdentity("client", b"c" * 32))
        handler = Recorder()
        self.tasks.append(asyncio.create_task(proxy_side.serve(handler)))
        self.dialed.append(client_side)
        self.proxy_sides.append(proxy_side)
        self.handlers.append(handler)
        return client_side

    async def aclose(self) -> None:
        for peer in self.proxy_sides:
            await peer.aclose()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def dialing_link(monkeypatch: pytest.MonkeyPatch) -> tuple[ProxyDouble, ProxyLink]:
    """A link (not started) whose dials reach a ``ProxyDouble``."""
    proxy = ProxyDouble()
    monkeypatch.setattr(link_module, "dial", proxy.dial)
    return proxy, ProxyLink("127.0.0.1", 1, key=Ed25519PrivateKey.generate(), verifier=cast(PeerVerifier, None))


async def test_the_link_renews_its_connection_before_the_proxys_attestation_expires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy, link = dialing_link(monkeypatch)
    set_up: list[tuple[Peer, Peer | None]] = []  # (connection set up, the link's current one then)

    async def on_connect(peer: Peer) -> str:
        await asyncio.sleep(0.1)  # a payment attach takes a round trip, or a chain read
        set_up.append((peer, link.peer))
        return f"channel of connection {len(set_up)}"

    link.on_connect = on_connect
    link.start()
    gaps = 0

    async def watch() -> None:  # a request arriving at any moment finds a connection
        nonlocal gaps
        while True:
            gaps += not link.connected
            await asyncio.sleep(0.01)

    try:
        first = await link.get(timeout=5)
        watching = asyncio.create_task(watch())
        long = await first.open(
            lambda sid: Open(stream_id=sid, model="m", kind="chat", stream=True, max_tokens=0, body=b"{}")
        )
        await asyncio.wait_for(proxy.handlers[0].opened.get(), 5)  # the proxy has it
        async with asyncio.timeout(LIFETIME - 0.2):  # before the first connection's evidence expires
            while link.peer is first:
                await asyncio.sleep(0.01)
        link.sent(first, b"r" * 16)  # (as the request above was, in the client; noted here, after the switch)
        fresh = link.peer
        assert fresh is not None and fresh is proxy.dialed[1] and not fresh.closed
        assert not first.closed  # its request is still running
        # the fresh connection was set up (payments attached) before any request could use it
        assert [peer for peer, _ in set_up] == [first, fresh] and set_up[1][1] is first
        assert link.payment_of(fresh) == "channel of connection 2"
        assert link.payment_of(first) == "channel of connection 1"  # its answers are paid from it
        # requests on the fresh connection name the one still running on the old one
        assert link.awaited() == {b"r" * 16}

        await asyncio.sleep(0.3)
        assert not first.closed  # it waits for its request
        proxy.proxy_sides[0].send_nowait(End(stream_id=long.id, usage=Usage(completion_tokens=3)))
        assert isinstance(await long.receive(5), End)
        link.ended(first, b"r" * 16)
        async with asyncio.timeout(1.0):  # closed once idle, well before its expiry
            while not first.closed:
                await asyncio.sleep(0.01)
        expires_at = first.identity.expires_at
        assert expires_at is not None and time.time() < expires_at - 0.2 and "expired" not in first.close_reason
        assert link.awaited() == set() and gaps == 0 and link.peer is fresh and not fresh.closed
        watching.cancel()
    finally:
        await link.aclose()
        await proxy.aclose()


async def test_a_request_cut_with_its_connection_stays_named_as_awaited_for_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The proxy may have billed it just before, and writes such an answer off only once it
    has seen that connection close: an ``Open`` that did not name it meanwhile would be refused
    for an answer 'delivered' and unpaid."""
    proxy, link = dialing_link(monkeypatch)
    link.start()

    async def cut(peer: Peer) -> Peer:
        await proxy.proxy_sides[proxy.dialed.index(peer)].aclose("cut")
        async with asyncio.timeout(5):  # redialed
            while link.peer is peer or not link.connected:
                await asyncio.sleep(0.01)
        assert link.peer is not None
        return link.peer

    try:
        first = await link.get(timeout=5)
        link.sent(first, b"cut" * 5 + b"!")
        link.sent(first, b"end" * 5 + b"!")
        second = await cut(first)
        assert link.awaited() == {b"cut" * 5 + b"!", b"end" * 5 + b"!"}
        link.ended(first, b"cut" * 5 + b"!")  # its error reached the caller: still named
        link.ended(first, b"end" * 5 + b"!", delivered=True)  # its end had come: paid, not named
        assert link.awaited() == {b"cut" * 5 + b"!"}
        await cut(second)  # another connection lost meanwhile: still named, for ``CUT_NAMED``
        assert link.awaited() == {b"cut" * 5 + b"!"}
        monkeypatch.setattr(link_module, "CUT_NAMED", 0.0)  # (as if that had passed)
        assert link.awaited() == set()
    finally:
        await link.aclose()
        await proxy.aclose()


async def test_a_request_whose_stream_learns_of_the_close_before_the_link_stays_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A closing connection fails its streams first, so the caller's request ends (undelivered)
    while the link still counts it on that connection: it must be named all the same."""
    proxy, link = dialing_link(monkeypatch)
    link.start()
    try:
        first = await link.get(timeout=5)
        link.sent(first, b"cut" * 5 + b"!")
        first.closed = True  # the moment between its streams' failure and the link's noticing
        link.ended(first, b"cut" * 5 + b"!")
        assert link.awaited() == {b"cut" * 5 + b"!"}
        first.closed = False  # (so that it is really closed below)
    finally:
        await link.aclose()
        await proxy.aclose()
