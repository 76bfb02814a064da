"""Test double: the real client, except that it never signs a voucher (it verifies answers and
keeps receipts as usual). Run as ``python -m tests.integration.unpaying_client client --config …``.
"""

from __future__ import annotations

from cocoon.cli import main
from cocoon.client.service import Call
from cocoon.seal.usage import UsageRecord


def pay_nothing(self: Call, record: UsageRecord, billed: int = 0) -> None:
    self.finished()


Call.pay = pay_nothing  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
