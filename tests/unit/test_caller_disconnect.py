"""The client's HTTP handler runs a request's work in its own task and stops it when the caller
disconnects (``_unless_disconnected``): the work sees the cancellation and cleans up, the handler
gets None, and a cancellation from elsewhere (the server stopping) still goes through."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from cocoon.client.api import _disconnected, _unless_disconnected
from cocoon.protocol.messages import Data


class CallerDouble:
    """Test double of the ASGI ``receive`` of a caller: it leaves when ``leave`` is set."""

    def __init__(self) -> None:
        self.leave = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.leave.wait()
        return {"type": "http.disconnect"}


class CallDouble:
    """Test double of a call in flight: records the cancellation of its stream."""

    def __init__(self) -> None:
        self.stream = self
        self.cancelled: list[str] = []

    async def abort(self, reason: str) -> None:
        self.cancelled.append(reason)


async def test_work_that_finishes_gives_its_result() -> None:
    caller = CallerDouble()
    watcher = asyncio.create_task(_disconnected(caller.receive))

    async def work() -> str:
        await asyncio.sleep(0)
        return "answer"

    assert await _unless_disconnected(None, work(), watcher) == "answer"
    watcher.cancel()  # as the handler does when it is done: not taken for the caller leaving
    await asyncio.sleep(0.01)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_a_caller_that_leaves_stops_the_work_and_cancels_the_call() -> None:
    caller, call = CallerDouble(), CallDouble()
    watcher = asyncio.create_task(_disconnected(caller.receive))
    saw: list[str] = []

    async def work() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            saw.append("cancelled")
            raise
        return "never"

    asyncio.get_running_loop().call_later(0.01, caller.leave.set)
    assert await _unless_disconnected(cast(Any, call), work(), watcher) is None
    assert saw == ["cancelled"] and call.cancelled == ["caller disconnected"]
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # the handler goes on to answer 499


async def test_work_that_swallows_the_cancellation_still_counts_as_the_caller_gone() -> None:
    caller, call = CallerDouble(), CallDouble()
    watcher = asyncio.create_task(_disconnected(caller.receive))

    async def work() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass
        return "late"

    asyncio.get_running_loop().call_later(0.01, caller.leave.set)
    assert await _unless_disconnected(cast(Any, call), work(), watcher) is None
    assert call.cancelled == ["caller disconnected"]


async def test_a_cancellation_from_elsewhere_goes_through() -> None:
    caller = CallerDouble()
    watcher = asyncio.create_task(_disconnected(caller.receive))

    async def work() -> str:
        await asyncio.sleep(30)
        return "never"

    handler = asyncio.create_task(_unless_disconnected(None, work(), watcher))
    await asyncio.sleep(0.01)
    handler.cancel()  # the server stopping
    with pytest.raises(asyncio.CancelledError):
        await handler
    watcher.cancel()


async def test_a_caller_leaving_as_the_work_finishes_does_not_cancel_what_follows() -> None:
    caller = CallerDouble()
    watcher = asyncio.create_task(_disconnected(caller.receive))
    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def finish_and_leave() -> None:
        # in the same turn: the watcher then ends first, and its callback is already scheduled
        # when the work's result reaches this task
        caller.leave.set()
        done.set_result("answer")

    asyncio.get_running_loop().call_later(0.01, finish_and_leave)
    assert await _unless_disconnected(None, done, watcher) == "answer"
    for _ in range(5):
        await asyncio.sleep(0)  # the watcher finishes meanwhile: this task is not cancelled for it
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_a_server_stopping_while_the_work_cleans_up_after_the_caller_still_stops_it() -> None:
    caller, call = CallerDouble(), CallDouble()
    watcher = asyncio.create_task(_disconnected(caller.receive))
    cleaning = asyncio.Event()

    async def work() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cleaning.set()
            await asyncio.sleep(30)  # cleanup that takes a while
            raise
        return "never"

    handler = asyncio.create_task(_unless_disconnected(cast(Any, call), work(), watcher))
    caller.leave.set()
    await asyncio.wait_for(cleaning.wait(), 5)
    handler.cancel()  # the server stopping
    with pytest.raises(asyncio.CancelledError):
        await handler


class LinkDouble:
    """Test double of a proxy link: the request ids whose end is awaited."""

    def __init__(self) -> None:
        self.awaiting: set[bytes] = set()

    def ended(self, peer: object, request_id: bytes, *, delivered: bool = False) -> None:
        self.awaiting.discard(request_id)


async def test_a_caller_that_leaves_a_non_streamed_request_no_longer_awaits_its_end() -> None:
    """Every later request names the ones still awaited, and the proxy refuses more than 1,024:
    a request its caller gave up must leave the set, and the proxy must be told to stop it."""
    from cocoon.channel.peer import Peer, Stream
    from cocoon.client.sealing import Receipts
    from cocoon.client.service import Call
    from cocoon.openai.schemas import parse_request
    from cocoon.protocol.messages import Cancel, Data
    from tests.unit.seal.test_receipts import Setup
    from tests.unit.test_peer_relay import FakePeer

    setup = Setup(max_tokens=None)
    peer = FakePeer()
    stream = Stream(cast(Peer, peer), 1)
    peer._streams = {1: stream}
    link = LinkDouble()
    request = parse_request("chat", b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}')
    call = Call("chat", request, stream, 5.0, 10.0, setup.call, Receipts(), link=cast(Any, link))
    link.awaiting.add(setup.call.request_id)
    caller = CallerDouble()
    watcher = asyncio.create_task(_disconnected(caller.receive))
    first = Data(stream_id=1, payload=b'{"id": "x", "object": "chat.completion", "choices": []}')
    work = asyncio.create_task(_unless_disconnected(call, call.response(first), watcher))
    await asyncio.sleep(0.01)  # waiting for the rest of the answer
    caller.leave.set()
    assert await asyncio.wait_for(work, 5) is None
    assert link.awaiting == set()
    assert any(isinstance(m, Cancel) for m in peer.sent)


class PaymentsDouble:
    """Test double of the client's books: records the answers it is asked to pay for."""

    def __init__(self) -> None:
        self.paid: list[bytes] = []

    def pay(self, channel: bytes, record: Any, price_milli: int, billed: int) -> tuple[int, object]:
        self.paid.append(record.request_id)
        return 7, Data(stream_id=0, payload=b"voucher")  # any message stands for the voucher


class PayingLinkDouble(LinkDouble):
    """A link whose connection pays into one channel."""

    peer = None

    def __init__(self) -> None:
        super().__init__()
        self.delivered: list[bool] = []

    def ended(self, peer: object, request_id: bytes, *, delivered: bool = False) -> None:
        super().ended(peer, request_id, delivered=delivered)
        self.delivered.append(delivered)


async def test_a_caller_that_leaves_once_the_answers_end_has_come_still_pays_for_it() -> None:
    """The proxy billed it when it relayed the end; dropped unpaid with the cancelled stream, it
    would leave the channel with an answer delivered and not covered, and the proxy refuses the
    next requests for that until the client attaches again."""
    from types import SimpleNamespace

    from cocoon.channel.peer import Peer, Stream
    from cocoon.client.sealing import Receipts
    from cocoon.client.service import Call
    from cocoon.openai.schemas import parse_request
    from cocoon.protocol.messages import Cancel
    from tests.unit.seal.test_receipts import Setup, end
    from tests.unit.test_peer_relay import FakePeer

    setup = Setup(max_tokens=None)
    peer = FakePeer()
    sent_at_once: list[object] = []
    peer.send_at_once = sent_at_once.append  # type: ignore[attr-defined]
    stream = Stream(cast(Peer, peer), 1)
    peer._streams = {1: stream}
    link, payments = PayingLinkDouble(), PaymentsDouble()
    paying = SimpleNamespace(channel=SimpleNamespace(account_id=b"\x01" * 32))
    request = parse_request("chat", b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}')
    call = Call(
        "chat", request, stream, 5.0, 10.0, setup.call, Receipts(),
        link=cast(Any, link), payments=cast(Any, payments), paying=cast(Any, paying),
    )  # fmt: skip
    link.awaiting.add(setup.call.request_id)
    receipt = setup.receipt()
    # the last chunk reached the caller, which left; the sealed receipt and the end came meanwhile
    stream.queue.put_nowait(Data(stream_id=1, payload=setup.sealer.seal(b'{"choices": []}')))
    stream.queue.put_nowait(Data(stream_id=1, payload=setup.sealer.seal(receipt, final=True)))
    stream.queue.put_nowait(end(receipt))
    stream.closed = True  # (the end closes the stream)
    await call.abort("caller disconnected")
    assert payments.paid == [setup.call.request_id] and len(sent_at_once) == 1
    assert link.awaiting == set() and link.delivered == [True]
    assert not any(isinstance(m, Cancel) for m in peer.sent)  # nothing left to stop
