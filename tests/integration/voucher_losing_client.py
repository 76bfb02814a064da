"""Test double: the real client, except that the first voucher it signs never leaves it (it is
signed and kept in its books as usual, as if the proxy stopped before receiving it). Run as
``python -m tests.integration.voucher_losing_client client --config …``.
"""

from __future__ import annotations

from typing import Any

from cocoon.channel.peer import Peer
from cocoon.cli import main
from cocoon.protocol.messages import Voucher

_send_at_once = Peer.send_at_once
_lost: list[int] = []


def lose_the_first_voucher(self: Peer, message: Any) -> bool:
    if isinstance(message, Voucher) and not _lost:
        _lost.append(message.seqno)
        return True
    return _send_at_once(self, message)


Peer.send_at_once = lose_the_first_voucher  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
