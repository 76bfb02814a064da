"""Test double: the real client, except that when it attaches to a proxy it claims a voucher far
newer than any it signed (seqno 10^9, with a signature that cannot verify), as a client trying
to make the proxy believe its database was rolled back would. Run as
``python -m tests.integration.rollback_claiming_client client --config …``.
"""

from __future__ import annotations

import dataclasses

from cocoon.cli import main
from cocoon.client.payments import ClientPayments
from cocoon.payments.store import ChannelRow

_last_voucher = ClientPayments.last_voucher


def claim_a_newer_voucher(self: ClientPayments, proxy_key: bytes) -> ChannelRow | None:
    row = _last_voucher(self, proxy_key)
    if row is None:
        row = ChannelRow(b"\x00" * 32, "client", proxy_key, 0, 0, 0, 0, b"", 0)
    return dataclasses.replace(row, seqno=10**9, amount=10**15, expiry=2**32 - 1, signature=b"\x01" * 64)


ClientPayments.last_voucher = claim_a_newer_voucher  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
