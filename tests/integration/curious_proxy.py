"""Test double: the real proxy, made curious. It records every byte it receives from and sends
to its peers (after TLS, i.e. everything the proxy itself handles) to $COCOON_TEST_RECORD, then
runs as usual: ``python -m tests.integration.curious_proxy proxy --config …``."""

from __future__ import annotations

import os

from cocoon.cli import main
from cocoon.protocol.connection import Connection
from cocoon.protocol.messages import Message

record = open(os.environ["COCOON_TEST_RECORD"], "ab", buffering=0)  # open for the life of the process
original_receive = Connection.receive_data
original_send = Connection.send


def receive_data(self: Connection, data: bytes, now: float) -> None:
    record.write(data)
    original_receive(self, data, now)


def send(self: Connection, message: Message) -> bytes:
    data = original_send(self, message)
    record.write(data)
    return data


Connection.receive_data = receive_data  # type: ignore[method-assign]
Connection.send = send  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
