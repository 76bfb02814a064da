"""The proxy's per-client limits count a client's key, not its connection: more connections
(or reconnecting) give no more concurrent requests and no fresh rate allowance."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from cocoon.channel.peer import Peer
from cocoon.channel.verify import PeerIdentity
from cocoon.config import ProxySettings
from cocoon.protocol.errors import ErrorCode
from cocoon.protocol.messages import Error, Open
from cocoon.proxy.service import Proxy


class ClientConnection:
    """Test double of a client's connection: what the proxy sends on it."""

    def __init__(self, key: bytes) -> None:
        self.identity = PeerIdentity("client", key)
        self.sent: list[Any] = []

    def send_nowait(self, message: Any) -> bool:
        self.sent.append(message)
        return True


def limited(settings: ProxySettings) -> tuple[Proxy, asyncio.Event]:
    proxy = Proxy.__new__(Proxy)  # only admission is exercised: no listener, no workers
    proxy.settings = settings
    proxy.payments = None
    proxy._relays = {}
    proxy._client_relays = {}
    proxy._buckets = {}
    proxy._buckets_pruned = 0.0
    proxy._client_channels = {}
    proxy._ids_in_flight = set()
    gate = asyncio.Event()

    async def held_relay(client: Peer, request: Open, channel: bytes | None = None) -> None:  # in flight until released
        await gate.wait()

    proxy._relay = held_relay  # type: ignore[method-assign]
    return proxy, gate


def request(sid: int) -> Open:
    return Open(stream_id=sid, model="m", kind="chat", stream=True, max_tokens=0, body=b"x")


def refused(connection: ClientConnection) -> str:
    return next((m.message for m in connection.sent if isinstance(m, Error) and m.code == ErrorCode.SATURATED), "")


async def test_concurrent_requests_are_counted_per_client_key() -> None:
    proxy, gate = limited(ProxySettings(client_streams=2))
    first, second = ClientConnection(b"k" * 32), ClientConnection(b"k" * 32)
    proxy.start_relay(cast(Peer, first), request(1))
    proxy.start_relay(cast(Peer, second), request(1))
    proxy.start_relay(cast(Peer, second), request(3))  # a third from the same key, on either connection
    assert "too many concurrent" in refused(second)
    other = ClientConnection(b"o" * 32)
    proxy.start_relay(cast(Peer, other), request(1))
    assert refused(other) == ""
    gate.set()
    await asyncio.gather(*proxy._relays.values())
    await asyncio.sleep(0)
    assert proxy._client_relays == {} and proxy._relays == {}
    proxy.start_relay(cast(Peer, second), request(5))
    assert len([m for m in second.sent if isinstance(m, Error)]) == 1  # admitted again


async def test_the_rate_limit_survives_reconnecting() -> None:
    proxy, gate = limited(ProxySettings(client_rate=1.0))
    first = ClientConnection(b"k" * 32)
    proxy.start_relay(cast(Peer, first), request(1))
    assert refused(first) == ""
    again = ClientConnection(b"k" * 32)  # a new connection of the same client
    proxy.start_relay(cast(Peer, again), request(1))
    assert "rate limit" in refused(again)
    gate.set()
    await asyncio.gather(*proxy._relays.values())


class OpenBooksDouble:
    """Test double for the proxy's payments at admission: nothing billed yet, nothing refused."""

    class store:
        @staticmethod
        def request_billed(request_id: bytes) -> bool:
            return False

    def note_open(self, *args: Any) -> None:
        pass

    def refusal(self, channel: bytes | None, awaiting: object) -> str:
        return ""


async def test_a_request_id_under_way_is_not_admitted_twice() -> None:
    """The id is billed once: a second request under it while the first runs would be served
    and never billed (a client sealing many prompts under one id would pay for one)."""
    proxy, gate = limited(ProxySettings())
    proxy.payments = cast(Any, OpenBooksDouble())
    client = ClientConnection(b"k" * 32)
    proxy.start_relay(cast(Peer, client), Open(stream_id=1, model="m", kind="chat", stream=True, max_tokens=0,
                                               body=b"x", request_id=b"r" * 16))  # fmt: skip
    proxy.start_relay(cast(Peer, client), Open(stream_id=3, model="m", kind="chat", stream=True, max_tokens=0,
                                               body=b"y", request_id=b"r" * 16))  # fmt: skip
    (error,) = [m for m in client.sent if isinstance(m, Error)]
    assert (error.stream_id, error.code) == (3, ErrorCode.BAD_REQUEST) and "under way" in error.message
    gate.set()
    await asyncio.gather(*proxy._relays.values())
    await asyncio.sleep(0)
    assert proxy._ids_in_flight == set()  # done: the books' own check takes over
