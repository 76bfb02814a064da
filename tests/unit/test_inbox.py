"""A stream's inbox: answers in order to one consumer, a timeout per wait (armed lazily)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import cast

import pytest

from cocoon.channel.peer import Inbox, Peer, Stream
from cocoon.protocol.errors import ErrorCode
from cocoon.protocol.messages import Data, Error


def data(i: int) -> Data:
    return Data(stream_id=1, payload=b"%d" % i)


async def test_messages_come_in_order_whether_waited_for_or_not() -> None:
    inbox = Inbox()
    inbox.put_nowait(data(0))
    assert inbox.qsize() == 1 and await inbox.get(1.0) == data(0) and inbox.empty()
    waiting = asyncio.create_task(inbox.get(1.0))
    await asyncio.sleep(0)
    inbox.put_nowait(data(1))
    inbox.put_nowait(data(2))
    assert await waiting == data(1)
    assert inbox.get_nowait() == data(2)


async def test_a_wait_times_out_after_its_own_timeout() -> None:
    inbox = Inbox()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await inbox.get(0.05)
    assert 0.04 <= loop.time() - started < 1.0


async def test_every_wait_restarts_the_timeout() -> None:
    inbox = Inbox()
    loop = asyncio.get_running_loop()

    async def feed() -> None:
        for i in range(5):
            await asyncio.sleep(0.03)
            inbox.put_nowait(data(i))

    feeder = asyncio.create_task(feed())
    for i in range(5):  # 0.15 s in all, never 0.06 s silent
        assert await inbox.get(0.06) == data(i)
    await feeder
    started = loop.time()
    with pytest.raises(TimeoutError):
        await inbox.get(0.06)
    assert loop.time() - started >= 0.05


async def test_a_shorter_timeout_than_the_last_one_is_honoured() -> None:
    inbox = Inbox()
    inbox.put_nowait(data(0))
    waiting = asyncio.create_task(inbox.get(30.0))
    assert await waiting == data(0)
    other = asyncio.create_task(inbox.get(30.0))
    await asyncio.sleep(0.01)
    other.cancel()  # a consumer that went away leaves nothing behind
    with pytest.raises(asyncio.CancelledError):
        await other
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await inbox.get(0.05)
    assert loop.time() - started < 1.0
    inbox.put_nowait(data(1))
    assert await inbox.get(None) == data(1)


@pytest.mark.parametrize("waited", [True, False])
async def test_a_finished_stream_leaves_nothing_in_the_event_loop(waited: bool) -> None:
    # the lazy timer of a long wait must not keep a finished stream's inbox alive until its
    # deadline: at a thousand requests a second that grew a proxy by tens of MiB
    stream = Stream(cast(Peer, None), 1)
    first = asyncio.create_task(stream.receive(600.0))
    await asyncio.sleep(0)
    stream.queue.put_nowait(data(0))
    assert await first == data(0)
    stream.closed = True  # as the read loop marks it when the closing message arrives
    stream.queue.put_nowait(Error(stream_id=1, code=ErrorCode.TIMEOUT, message="done"))
    if waited:
        assert isinstance(await stream.receive(600.0), Error)
    else:
        assert isinstance(stream.receive_nowait(), Error)
    inbox = weakref.ref(stream.queue)
    del stream, first
    gc.collect()
    assert inbox() is None
