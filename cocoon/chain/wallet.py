"""A standard TON wallet (v4r2) driven from Python: the node's own account on the chain.

Messages are built and signed with pytoniq/pytoniq-core and sent through a ``Ledger`` as
external messages, so the sandbox runs exactly what TON would receive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.bindings import crypto_sign_seed_keypair
from pytoniq.contract.contract import Contract
from pytoniq.contract.wallets.wallet import WALLET_V4_R2_CODE, WalletV4
from pytoniq.contract.wallets.wallet import Wallet as _PytoniqWallet
from pytoniq_core import Address, Builder, Cell, StateInit, WalletMessage
from pytoniq_core.crypto.signature import sign_message

try:
    import fcntl
except ImportError:  # (no flock: Windows)
    fcntl = None  # type: ignore[assignment]

from cocoon.chain.contracts import EXIT_CODES, address_of
from cocoon.chain.errors import ChainError, GetMethodError
from cocoon.chain.ledger import Ledger, Transaction, raw

DEFAULT_WALLET_ID = 698983191  # the standard subwallet id of workchain 0
VALID_FOR = 60  # seconds an external message stays valid
CONFIRM_TIMEOUT = 90.0  # seconds to wait for a message to take effect on TON
LOCK_TIMEOUT = CONFIRM_TIMEOUT + 30.0  # seconds to wait for another process sending from the wallet
LOCK_POLL = 0.05


@dataclass(frozen=True)
class Transfer:
    """One internal message the wallet sends."""

    destination: Address
    value: int  # nanoTON
    body: Cell | None = None
    state_init: StateInit | None = None
    bounce: bool = True


def seed_of(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


class Wallet:
    """``lock_file``: held while a message is sent and confirmed, so that the processes of this
    machine that send from the wallet (a node, and ``cocoon wallet`` beside it) take its seqno in
    turn: two messages with one seqno, the wallet takes one, and on TON, where a sender sees only
    the seqno move on, both would report success."""

    def __init__(
        self,
        ledger: Ledger,
        key: Ed25519PrivateKey,
        wallet_id: int = DEFAULT_WALLET_ID,
        *,
        lock_file: Path | None = None,
    ) -> None:
        self.ledger = ledger
        self.lock_file = lock_file
        self.key = key
        self.public_key, self._secret = crypto_sign_seed_keypair(seed_of(key))
        self.wallet_id = wallet_id
        data = WalletV4.create_data_cell(self.public_key, wallet_id)
        self.state_init = StateInit(code=WALLET_V4_R2_CODE, data=data)
        self.address = address_of(self.state_init)
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"Wallet({raw(self.address)})"

    async def balance(self) -> int:
        return (await self.ledger.account(self.address)).balance

    async def seqno(self) -> int:
        info = await self.ledger.account(self.address)
        return await self._active_seqno() if info.status == "active" else 0

    async def _active_seqno(self) -> int:
        stack = await self.ledger.run_get_method(self.address, "seqno")
        return int(cast(int, stack[0]))

    def external(self, seqno: int, transfers: list[Transfer], deploy: bool, valid_until: int) -> bytes:
        """The signed external message that makes the wallet send ``transfers``."""
        messages = [
            _PytoniqWallet.create_wallet_internal_message(
                destination=t.destination,
                send_mode=3,
                value=t.value,
                body=t.body,
                state_init=t.state_init,
                bounce=t.bounce,
            )
            for t in transfers
        ]
        body = transfer_body(self._secret, seqno, self.wallet_id, messages, valid_until)
        message = Contract.create_external_msg(
            dest=self.address, state_init=self.state_init if deploy else None, body=body
        )
        return cast(bytes, message.serialize().to_boc())

    async def send(self, transfers: list[Transfer]) -> list[Transaction]:
        """Send ``transfers`` in one external message (at most 4) and wait until it took effect.
        Raises ``ChainError`` when a resulting transaction failed (sandbox) or on timeout (TON)."""
        if not 1 <= len(transfers) <= 4:
            raise ValueError("a v4 wallet sends 1 to 4 messages at once")
        async with self._lock, _locked(self.lock_file):  # one seqno at a time, in this process and beside it
            info = await self.ledger.account(self.address)
            if info.balance == 0:
                raise ChainError("no_funds", f"the wallet {raw(self.address)} has no TON; fund it first")
            needed = sum(t.value for t in transfers)
            if info.balance <= needed:
                # (the wallet would skip the transfers and still take its fee: send mode 3)
                raise ChainError(
                    "no_funds", f"the wallet {raw(self.address)} holds {info.balance} nanoTON, not the {needed} to send"
                )
            deploy = info.status != "active"
            seqno = 0 if deploy else await self._active_seqno()
            boc = self.external(seqno, transfers, deploy, await self.ledger.chain_time() + VALID_FOR)
            transactions = await self.ledger.send_external(boc)
            if transactions:
                check_transactions(transactions, skip=self.address)
            else:
                await self._wait_seqno(seqno + 1)
            return transactions

    async def _wait_seqno(self, target: int) -> None:
        deadline = time.monotonic() + CONFIRM_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if await self.seqno() >= target:
                    return
            except GetMethodError:
                pass
            await asyncio.sleep(2.0)
        raise ChainError("timeout", f"the wallet's message did not take effect within {CONFIRM_TIMEOUT:.0f} s")


@contextlib.asynccontextmanager
async def _locked(path: Path | None) -> AsyncIterator[None]:
    """An exclusive ``flock`` on ``path`` (created 0600), waited for up to ``LOCK_TIMEOUT``."""
    if path is None or fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ChainError("busy", f"another process has been sending from this wallet ({path})") from None
                await asyncio.sleep(LOCK_POLL)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def check_transactions(transactions: list[Transaction], skip: Address | None = None) -> None:
    """Raise for the first failed transaction (other than bounces coming home)."""
    for tx in transactions:
        if tx.success or tx.bounced:
            continue
        if skip is not None and tx.address == raw(skip) and tx.exit_code in (None, 0):
            continue
        reason = EXIT_CODES.get(tx.exit_code or 0, f"exit code {tx.exit_code}")
        raise ChainError("failed", f"the contract {tx.address} refused the message: {reason} ({tx.exit_code})")


def transfer_body(secret: bytes, seqno: int, wallet_id: int, messages: list[WalletMessage], valid_until: int) -> Cell:
    """A v4r2 wallet's signed transfer, as pytoniq's ``raw_create_transfer_msg`` makes it, but
    valid until ``valid_until`` at seqno 0 too, where pytoniq writes 2^32 - 1: the wallet's first
    message, valid for good, could land long after it was given up, in place of the one sent
    again (the contract checks the time at every seqno)."""
    signed = Builder().store_uint(wallet_id, 32).store_uint(valid_until, 32).store_uint(seqno, 32).store_uint(0, 8)
    for message in messages:
        signed.store_cell(message.serialize())
    cell = signed.end_cell()
    return Builder().store_bytes(sign_message(cell.hash, secret)).store_cell(cell).end_cell()
