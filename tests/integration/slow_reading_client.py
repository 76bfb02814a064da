"""Test double: the real client, except that it takes a while to take each answer's end, as a
slow caller would: the proxy has billed the answer by then, and the client pays for it only
after. Run as ``python -m tests.integration.slow_reading_client client --config …``.
"""

from __future__ import annotations

import asyncio

from cocoon.cli import main
from cocoon.client.service import Call
from cocoon.protocol.messages import End, Message

READ_END_AFTER = 0.5  # seconds

_open = Call._open


async def open_the_end_slowly(self: Call, message: Message) -> Message | None:
    if isinstance(message, End):
        await asyncio.sleep(READ_END_AFTER)
    return await _open(self, message)


Call._open = open_the_end_slowly  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
