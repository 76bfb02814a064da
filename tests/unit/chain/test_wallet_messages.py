"""The wallet's signed transfers: pytoniq's layout, with an expiry at every seqno."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.signing import VerifyKey
from pytoniq.contract.wallets.wallet import Wallet as PytoniqWallet
from pytoniq.contract.wallets.wallet import WalletV4
from pytoniq_core import Address

from cocoon.chain.wallet import DEFAULT_WALLET_ID, Wallet, transfer_body

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
