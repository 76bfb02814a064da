"""Open the configured chain: a ``Ledger`` for ``chain``/``chain_url`` and the node's wallet."""

from __future__ import annotations

from pathlib import Path

from pytoniq_core import Address

from cocoon.chain.errors import ChainError
from cocoon.chain.ledger import Ledger
from cocoon.chain.sandbox import SandboxLedger
from cocoon.chain.wallet import Wallet
from cocoon.keys import load_or_create_identity


def open_ledger(chain: str, chain_url: str) -> Ledger:
    """``sandbox``: the local chain service at ``chain_url``; ``ton``: TON through liteservers
    (``chain_url`` = ``mainnet``, ``testnet`` or a global config file)."""
    if chain == "sandbox":
        if not chain_url:
            raise ChainError("config", "the sandbox chain needs chain_url (http://127.0.0.1:PORT)")
        return SandboxLedger(chain_url)
    if chain == "ton":
        from cocoon.chain.ton import TonLedger

        return TonLedger(chain_url or "mainnet")
    raise ChainError("config", f"unknown chain {chain!r}: use sandbox or ton")


def open_wallet(ledger: Ledger, key_file: Path) -> Wallet:
    """The node's wallet; its key is created (mode 0600) on first use."""
    return Wallet(ledger, load_or_create_identity(key_file), lock_file=lock_file_of(key_file))


def lock_file_of(key_file: Path) -> Path:
    """Where the processes sending from the wallet of ``key_file`` take turns (``Wallet``)."""
    return key_file.with_name(key_file.name + ".lock")


def parse_address(text: str) -> Address:
    try:
        return Address(text.strip())
    except Exception as exc:
        raise ChainError("config", f"{text!r} is not a TON address") from exc
