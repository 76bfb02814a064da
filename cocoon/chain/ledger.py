"""The one interface through which nodes reach the chain, whichever backend serves it.

A backend only moves bytes: it sends signed external messages (built by ``cocoon.chain.wallet``)
and runs get-methods. The same messages go to the local sandbox and to TON, so everything the
TON backend would send is exercised against the sandbox in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Union

from pytoniq_core import Address, Cell, Slice

# Get-method stack values as pytoniq returns them: ints, cells, slices, null, and nested tuples.
StackItem = Union[int, Cell, Slice, None, list["StackItem"]]  # noqa: UP007 - a recursive alias


@dataclass(frozen=True)
class Transaction:
    """One transaction that a sent message caused (the sandbox reports them; TON does not)."""

    address: str  # raw form "0:<hex>"
    success: bool
    exit_code: int | None
    in_op: int | None
    bounced: bool = False


@dataclass(frozen=True)
class AccountInfo:
    address: str  # raw form
    status: str  # "active", "uninit", "frozen" or "nonexist"
    balance: int  # nanoTON
    code_hash: bytes | None = None


class Ledger(Protocol):
    """What every chain backend provides."""

    name: str

    async def send_external(self, boc: bytes) -> list[Transaction]:
        """Deliver a signed external message. The sandbox returns the transactions it caused;
        TON returns [] and the caller waits for the effect (the wallet's seqno)."""
        ...

    async def run_get_method(
        self, address: Address, method: str, stack: list[StackItem] | None = None
    ) -> list[StackItem]:
        """The result stack; ``GetMethodError`` on a non-zero exit code."""
        ...

    async def account(self, address: Address) -> AccountInfo: ...

    async def chain_time(self) -> int:
        """The chain's clock (unix seconds): external messages expire by it, not by ours."""
        ...

    async def aclose(self) -> None: ...


def raw(address: Address) -> str:
    return str(address.to_str(is_user_friendly=False))
