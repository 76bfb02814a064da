"""The client's worker list past its TTL: the request uses it as it is, and the fresh list is asked
for only once that request has its first answer (so that the exchange never travels, or wakes the
client, while the request is on its way to the worker); a request that fails asks for it at once."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from cocoon.channel.peer import Peer
from cocoon.client.link import ProxyLink, ProxyPool
from cocoon.client.sealing import Candidate
from cocoon.client.service import WORKER_LIST_MAX_AGE, WORKER_LIST_TTL, ClientService, UpstreamError
from cocoon.openai.schemas import parse_request
from cocoon.protocol.errors import ErrorCode
from cocoon.protocol.messages import Cancel, ListModels, ListWorkers
from tests.unit.test_peer_relay import Pair, Recorder

MODEL = "bench-model"
REQUEST = parse_request("chat", b'{"model": "bench-model", "messages": [{"role": "user", "content": "hi"}]}')


class LinkDouble:
    """Test double of a proxy link: connected, and keeping the outcomes recorded on it."""

    name = "proxy-double"
    connected = True

    def __init__(self) -> None:
        self.outcomes: list[bool] = []
        self.awaiting: set[bytes] = set()

    def record(self, ok: bool, latency: float = 0.0) -> None:
        self.outcomes.append(ok)

    def awaited(self) -> set[bytes]:
        return self.awaiting


@dataclass
class CallDouble:
    """Test double of a call: its first answer is ``first``, or ``error`` is raised."""

    error: str = ""
    after_first_answer: Any = None
    cancelled: list[str] = field(default_factory=list)

    @property
    def stream(self) -> CallDouble:
        return self

    async def cancel(self, reason: str) -> None:
        self.cancelled.append(reason)

    async def abort(self, reason: str) -> None:
        self.cancelled.append(reason)

    async def first(self) -> str:
        if self.error:
            raise UpstreamError(self.error, "refused by the test double")
        return "first answer"


def answering(client: ClientService, monkeypatch: pytest.MonkeyPatch, *calls: CallDouble) -> list[CallDouble]:
    """``client.start`` chooses candidates (as the real one does) and returns the next of ``calls``."""
    pending = list(calls)

    async def start(kind: Any, request: Any, body: bytes, link: ProxyLink) -> Any:
        await client.candidates(MODEL, 0, "balanced", link)
        return pending.pop(0)

    async def pick(exclude: frozenset[int] = frozenset()) -> ProxyLink:
        return client.pool.links[0]

    monkeypatch.setattr(client, "start", start)
    monkeypatch.setattr(client, "_link", pick)
    return pending


def listing(client: ClientService, monkeypatch: pytest.MonkeyPatch, now: list[float], workers: list[Any]) -> list[str]:
    """The proxy's answer to a worker list, ``workers``; the models it was asked for, in order."""
    asked: list[str] = []

    async def worker_list(link: ProxyLink, model: str) -> tuple[float, list[Any]]:
        asked.append(model)
        return now[0], workers

    monkeypatch.setattr(client, "_worker_list", worker_list)
    return asked


CHOSEN = [Candidate(worker_id=b"w" * 32, hpke_key=b"k" * 32, model_hash=b"h" * 32)]


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> tuple[ClientService, list[str], list[float]]:
    now = [0.0]
    link = cast(ProxyLink, LinkDouble())
    client = ClientService(ProxyPool([link]), idle_timeout=5.0, verifier=cast(Any, None), clock=lambda: now[0])
    client._workers[(id(link), MODEL)] = (0.0, [])
    refreshed: list[str] = []
    monkeypatch.setattr(client, "_choose", lambda listed, model, cap, routing: CHOSEN)
    monkeypatch.setattr(client, "_refresh_worker_list", lambda link, model: refreshed.append(model))
    return client, refreshed, now


async def test_a_stale_list_is_refreshed_after_the_first_answer(
    service: tuple[ClientService, list[str], list[float]],
) -> None:
    client, refreshed, now = service
    link = client.pool.links[0]
    now[0] = WORKER_LIST_TTL + 0.5
    assert await client.candidates(MODEL, 0, "balanced", link) == CHOSEN
    assert refreshed == []  # not while the request is on its way
    client._refresh_stale_lists()  # what the call runs once its caller has the first answer
    assert refreshed == [MODEL]
    client._refresh_stale_lists()
    assert refreshed == [MODEL]  # once per staleness


async def test_a_fresh_list_is_not_refreshed(service: tuple[ClientService, list[str], list[float]]) -> None:
    client, refreshed, now = service
    now[0] = WORKER_LIST_TTL / 2
    await client.candidates(MODEL, 0, "balanced", client.pool.links[0])
    client._refresh_stale_lists()
    assert refreshed == []


async def test_a_list_past_its_maximum_age_is_asked_for_before_the_request(
    service: tuple[ClientService, list[str], list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, refreshed, now = service
    asked = listing(client, monkeypatch, now, [])
    now[0] = WORKER_LIST_MAX_AGE + 1
    assert await client.candidates(MODEL, 0, "balanced", client.pool.links[0]) == CHOSEN
    assert asked == [MODEL] and refreshed == []


async def test_a_request_that_has_its_first_answer_leaves_the_refresh_to_its_call(
    service: tuple[ClientService, list[str], list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, refreshed, now = service
    now[0] = WORKER_LIST_TTL + 0.5
    answering(client, monkeypatch, CallDouble())
    call, first = await client.begin("chat", REQUEST, b"{}")
    assert first == "first answer" and refreshed == []
    cast(Any, call).after_first_answer()  # what the call runs once its caller has the first answer
    assert refreshed == [MODEL]


async def test_a_request_that_fails_asks_for_the_list_at_once(
    service: tuple[ClientService, list[str], list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, refreshed, now = service
    now[0] = WORKER_LIST_TTL + 0.5
    answering(client, monkeypatch, CallDouble(error=ErrorCode.BAD_REQUEST))
    with pytest.raises(UpstreamError):
        await client.begin("chat", REQUEST, b"{}")
    assert refreshed == [MODEL]


async def test_a_request_sealed_again_for_a_fresh_list_asks_for_no_other(
    service: tuple[ClientService, list[str], list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, refreshed, now = service
    now[0] = WORKER_LIST_TTL + 0.5
    asked = listing(client, monkeypatch, now, [])
    answering(client, monkeypatch, CallDouble(error=ErrorCode.NO_WORKER), CallDouble())
    call, _ = await client.begin("chat", REQUEST, b"{}")
    assert asked == [MODEL]  # the fresh list, before the request was sealed again
    cast(Any, call).after_first_answer()
    assert refreshed == []  # and no background refresh beside it: the list is fresh


async def test_only_failures_of_the_proxy_count_against_it(
    service: tuple[ClientService, list[str], list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong model name or a refused payment says nothing about the proxy's health: counted as
    its failures, they would move all later traffic to another proxy."""
    client, _, _ = service
    link = cast(LinkDouble, client.pool.links[0])
    for code in (ErrorCode.BAD_REQUEST, ErrorCode.UNKNOWN_MODEL, ErrorCode.TOO_LARGE, ErrorCode.PAYMENT_REQUIRED):
        answering(client, monkeypatch, CallDouble(error=code))
        with pytest.raises(UpstreamError):
            await client.begin("chat", REQUEST, b"{}")
    assert link.outcomes == []
    answering(client, monkeypatch, CallDouble(error=ErrorCode.WORKER_LOST))
    with pytest.raises(UpstreamError):
        await client.begin("chat", REQUEST, b"{}")
    assert link.outcomes == [False]


async def test_a_connection_with_as_many_requests_in_flight_as_an_open_may_name_takes_no_more(
    service: tuple[ClientService, list[str], list[float]],
) -> None:
    """Every ``Open`` names the requests still awaiting their end, and the proxy drops a
    connection whose ``Open`` names more than it takes: the next request is a 429 instead."""
    from cocoon.protocol.messages import MAX_AWAITING

    client, _, _ = service
    link = cast(ProxyLink, client.pool.links[0])
    link.awaiting.update(i.to_bytes(16, "big") for i in range(MAX_AWAITING))
    with pytest.raises(UpstreamError) as caught:
        await client.start("chat", REQUEST, b"{}", link)
    assert caught.value.code == ErrorCode.SATURATED


async def test_a_fresh_list_without_a_usable_worker_is_asked_for_again(
    service: tuple[ClientService, list[str], list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # every worker in a list fetched a moment ago is suspended, and a new one joined since:
    # the request must find it (it failed with "every worker is suspended" until the list aged)
    client, _, now = service
    asked = listing(client, monkeypatch, now, ["the new worker"])

    def choose(listed: tuple[float, list[Any]], model: str, cap: int, routing: str) -> list[Candidate]:
        if not listed[1]:
            raise UpstreamError(ErrorCode.NO_WORKER, f"every worker for model {model!r} is suspended")
        return CHOSEN

    monkeypatch.setattr(client, "_choose", choose)
    now[0] = WORKER_LIST_TTL / 10
    assert await client.candidates(MODEL, 0, "balanced", client.pool.links[0]) == CHOSEN
    assert asked == [MODEL]


class CancelRecorder(Recorder):
    """The proxy's side of the connection: it answers nothing, and keeps the cancels it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.cancels: list[Cancel] = []

    def stream_cancelled(self, peer: Peer, message: Cancel) -> None:
        self.cancels.append(message)


@dataclass
class ConnectedLink:
    """Test double of a proxy link whose connection is ``peer``."""

    peer: Peer

    async def get(self) -> Peer:
        return self.peer


async def test_a_list_the_proxy_does_not_answer_in_time_is_cancelled() -> None:
    """Given up on, the ask for a list must close its stream: left open, it would count against
    the connection's streams, and keep the proxy's side of it, for as long as the connection."""
    proxy = CancelRecorder()
    async with Pair(listener_handler=proxy) as pair:
        link = cast(ProxyLink, ConnectedLink(pair.dialer))
        client = ClientService(ProxyPool([link]), idle_timeout=0.1, verifier=cast(Any, None))
        with pytest.raises(UpstreamError) as caught:
            await client._ask(lambda sid: ListWorkers(stream_id=sid, model=MODEL), link)
        assert caught.value.code == ErrorCode.TIMEOUT
        # and one whose caller leaves while it waits
        client.idle_timeout = 60.0
        asking = asyncio.create_task(client._ask(lambda sid: ListModels(stream_id=sid), link))
        await asyncio.wait_for(proxy.opened.get(), 5)
        await asyncio.wait_for(proxy.opened.get(), 5)
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        assert pair.dialer.open_streams == 0 and not pair.dialer._streams
        async with asyncio.timeout(5):
            while len(proxy.cancels) < 2:
                await asyncio.sleep(0.01)
        assert pair.listener.open_streams == 0
