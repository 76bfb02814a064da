"""The wallet's signed transfers: pytoniq's layout, with an expiry at every seqno."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.signing import VerifyKey
from pytoniq.contract.wallets.wallet import Wallet as PytoniqWallet
from pytoniq.contract.wallets.wallet import WalletV4
from pytoniq_core import Address

from cocoon.chain.ledger import AccountInfo
from cocoon.chain.wallet import DEFAULT_WALLET_ID, Transfer, Wallet, transfer_body

VALID_UNTIL = 1_800_000_000


def signed_parts(body: object) -> tuple[bytes, int, int, int]:
    """(signature, wallet id, valid until, seqno) of a transfer body."""
    reader = body.begin_parse()  # type: ignore[attr-defined]
    signature = reader.load_bytes(64)
    return signature, reader.load_uint(32), reader.load_uint(32), reader.load_uint(32)


def test_a_transfer_is_pytoniqs_and_expires_at_seqno_0_too() -> None:
    wallet = Wallet(ledger=None, key=Ed25519PrivateKey.generate())  # type: ignore[arg-type]
    message = PytoniqWallet.create_wallet_internal_message(
        destination=Address((0, b"d" * 32)), send_mode=3, value=10**9, body=None
    )
    later = transfer_body(wallet._secret, 5, DEFAULT_WALLET_ID, [message], VALID_UNTIL)
    assert later == WalletV4.raw_create_transfer_msg(wallet._secret, 5, DEFAULT_WALLET_ID, [message], VALID_UNTIL)
    first = transfer_body(wallet._secret, 0, DEFAULT_WALLET_ID, [message], VALID_UNTIL)
    pytoniqs = WalletV4.raw_create_transfer_msg(wallet._secret, 0, DEFAULT_WALLET_ID, [message], VALID_UNTIL)
    assert signed_parts(pytoniqs)[2] == 2**32 - 1  # valid for good: what this replaces
    signature, wallet_id, valid_until, seqno = signed_parts(first)
    assert (wallet_id, valid_until, seqno) == (DEFAULT_WALLET_ID, VALID_UNTIL, 0)
    # the signature covers the cell after it, as the wallet contract checks it
    reader = first.begin_parse()
    reader.skip_bits(512)
    VerifyKey(wallet.public_key).verify(reader.to_cell().hash, signature)


class LedgerDouble:
    """Test double for a ledger on TON: an active wallet whose seqno moves on as a message lands,
    which it does when ``land`` is set; notes when each message was sent."""

    def __init__(self) -> None:
        self.seqno = 1
        self.sent: list[float] = []
        self.land = asyncio.Event()

    async def account(self, address: object) -> AccountInfo:
        return AccountInfo("0:" + "00" * 32, "active", 10**12)

    async def run_get_method(self, address: object, method: str, stack: object = None) -> list[object]:
        return [self.seqno]

    async def chain_time(self) -> int:
        return VALID_UNTIL - 100

    async def send_external(self, boc: bytes) -> list[object]:
        self.sent.append(time.monotonic())
        await self.land.wait()
        self.seqno += 1
        return []  # (TON reports no transactions: the sender waits for the seqno)


async def test_processes_sending_from_one_wallet_take_its_seqno_in_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two messages with one seqno: the wallet takes one, and a sender on TON, which sees only the
    seqno move on, would report success for both. Two ``Wallet`` objects on one lock file (as a
    node and ``cocoon wallet`` beside it) send in turn."""
    monkeypatch.setattr("cocoon.chain.wallet.asyncio.sleep", fast_sleep)
    key, ledger = Ed25519PrivateKey.generate(), LedgerDouble()
    lock = tmp_path / "wallet.key.lock"
    node, cli = (Wallet(ledger, key, lock_file=lock) for _ in range(2))  # type: ignore[arg-type]
    transfer = Transfer(Address((0, b"d" * 32)), 10**9)
    first = asyncio.create_task(node.send([transfer]))
    await real_sleep(0.05)
    second = asyncio.create_task(cli.send([transfer]))
    await real_sleep(0.2)
    assert len(ledger.sent) == 1  # the second waits for the first's seqno to be taken
    ledger.land.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert len(ledger.sent) == 2 and ledger.seqno == 3
    assert lock.stat().st_mode & 0o777 == 0o600


real_sleep = asyncio.sleep


async def fast_sleep(seconds: float) -> None:
    await real_sleep(min(seconds, 0.01))  # (the wallet's 2 s polls of the seqno)
