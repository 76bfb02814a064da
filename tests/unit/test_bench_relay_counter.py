"""The relay benchmark's load generator: it counts SSE events, and times the gaps between them
as the kernel received them, not as the load generator got round to reading them (it shares the
cores with the network it measures, and its own waits for a CPU are not the network's)."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time

import pytest

from benchmarks.relay import Batch, _SSECounter

EVENT = b'data: {"choices": []}\n\n'


def serve_two_writes(listener: socket.socket) -> None:
    """The answer in two writes 100 ms apart, from its own thread (the reader's event loop will
    be busy when the second one goes)."""
    connection, _ = listener.accept()
    with connection:
        request = b""
        while b"\r\n\r\n" not in request:
            request += connection.recv(4096)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + EVENT)
        time.sleep(0.1)
        connection.sendall(EVENT + EVENT)
        time.sleep(0.05)


async def test_a_gap_is_timed_by_the_kernel_not_by_a_late_reader() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        server = threading.Thread(target=serve_two_writes, args=(listener,))
        server.start()
        batch = Batch()
        counter = _SSECounter(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", batch, 0.0)
        run = asyncio.create_task(counter.run("127.0.0.1", listener.getsockname()[1]))
        while counter.received == 0:
            await asyncio.sleep(0.001)
        # the reader's event loop is busy from 20 ms after the first event until 400 ms after
        # it: the second write, 100 ms after the first, waits unread meanwhile
        asyncio.get_running_loop().call_later(0.02, time.sleep, 0.38)
        await asyncio.wait_for(run, 10)
        server.join()
    assert counter.status == 200 and counter.received == 3
    assert len(batch.gaps) == 2 and batch.gaps[1] == 0.0  # the two events that came together
    if sys.platform.startswith("linux"):
        assert counter.stamped
        assert 0.07 < batch.gaps[0] < 0.25  # the 100 ms between the writes, not the reader's 400
    else:
        pytest.skip("the kernel times reads on Linux only")
