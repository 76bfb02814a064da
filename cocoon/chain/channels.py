"""Payment channels on the chain: addresses, state, and the messages each side sends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pytoniq_core import Address, StateInit

from cocoon.chain import contracts as c
from cocoon.chain.errors import ChainError, GetMethodError
from cocoon.chain.ledger import Ledger, StackItem, raw
from cocoon.chain.wallet import Transfer, Wallet


@dataclass(frozen=True)
class ChannelState:
    """A channel as the chain shows it. ``stake`` is 0 for worker channels."""

    address: str
    exists: bool
    balance: int = 0
    stake: int = 0
    redeemed: int = 0
    seqno: int = 0
    close_at: int = 0
    commit_seq: int = 0
    commit_hash: bytes = b""

    @property
    def open(self) -> bool:
        return self.exists and self.close_at == 0

    def cannot_redeem(self, amount: int, expiry: int, now: int) -> str:
        """Why the contract would refuse a voucher for ``amount`` in all, valid until ``expiry``,
        at ``now`` (unix time); "" when it would take it. Each refused redeem costs its fees."""
        if not self.exists:
            return "the channel does not exist"
        if self.close_at and now >= self.close_at:
            return "the channel has closed"
        if expiry <= now:
            return "the voucher has expired"
        if amount - self.redeemed > self.balance:
            return f"the voucher adds {amount - self.redeemed} nanoTON, more than the balance {self.balance}"
        return ""

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "exists": self.exists,
            "balance": self.balance,
            "stake": self.stake,
            "redeemed": self.redeemed,
            "seqno": self.seqno,
            "close_at": self.close_at,
            "commit_seq": self.commit_seq,
        }


def _ints(stack: list[StackItem]) -> list[int]:
    if not all(isinstance(x, int) for x in stack):
        raise ChainError("bad_response", "a channel get-method returned a non-integer")
    return [x for x in stack if isinstance(x, int)]


class Channel:
    """One channel contract, client→proxy (``kind="client"``) or proxy→worker (``"worker"``)."""

    def __init__(self, ledger: Ledger, kind: str, init: StateInit | None, address: Address | None = None) -> None:
        self.ledger = ledger
        self.kind = kind
        self.init = init
        self.address: Address = c.address_of(init) if init is not None else address
        self.code_hash = c.code(f"{kind}_channel").hash

    @classmethod
    def at(cls, ledger: Ledger, kind: str, channel_id: bytes) -> Channel:
        """A channel known by address only: readable, and payable once deployed."""
        return cls(ledger, kind, None, Address((0, channel_id)))

    @property
    def account_id(self) -> bytes:
        return c.account_id(self.address)

    @classmethod
    def client(
        cls,
        ledger: Ledger,
        *,
        root: Address,
        client: Address,
        proxy: Address,
        close_delay: int,
        client_key: bytes,
        proxy_key: bytes,
    ) -> Channel:
        init = c.client_channel_init(
            root=root, client=client, proxy=proxy, close_delay=close_delay, client_key=client_key, proxy_key=proxy_key
        )
        return cls(ledger, "client", init)

    @classmethod
    def worker(
        cls,
        ledger: Ledger,
        *,
        root: Address,
        proxy: Address,
        worker: Address,
        close_delay: int,
        proxy_key: bytes,
        worker_key: bytes,
    ) -> Channel:
        init = c.worker_channel_init(
            root=root, proxy=proxy, worker=worker, close_delay=close_delay, proxy_key=proxy_key, worker_key=worker_key
        )
        return cls(ledger, "worker", init)

    async def state(self) -> ChannelState:
        info = await self.ledger.account(self.address)
        if info.status != "active":
            return ChannelState(address=raw(self.address), exists=False)
        if info.code_hash is not None and info.code_hash != self.code_hash:
            raise ChainError("wrong_code", f"{raw(self.address)} does not run the {self.kind} channel's code")
        try:
            values = _ints(await self.ledger.run_get_method(self.address, "get_channel_state"))
            if self.kind == "client":
                balance, stake, redeemed, seqno, close_at = values
                return ChannelState(raw(self.address), True, balance, stake, redeemed, seqno, close_at)
            balance, redeemed, seqno, close_at = values
            commit_seq, commit_hash = _ints(await self.ledger.run_get_method(self.address, "get_commit"))
            return ChannelState(
                raw(self.address), True, balance, 0, redeemed, seqno, close_at, commit_seq,
                commit_hash.to_bytes(32, "big"),
            )  # fmt: skip
        except (GetMethodError, ValueError, TypeError, OverflowError) as exc:
            # (what it answers is input from the network: refused, never a node's crash)
            raise ChainError("wrong_code", f"{raw(self.address)} is not a {self.kind} channel") from exc

    # --- messages (each from the wallet of the side that may send it) ---

    async def top_up(self, wallet: Wallet, amount: int, stake: int | None = None) -> None:
        """Deposit ``amount`` (the channel keeps 0.01 TON of it), deploying the channel if new;
        client channels lock ``stake`` of it as the stake."""
        if self.kind == "client" and stake is None:
            stake = 0
        body = c.top_up(stake if self.kind == "client" else None)
        # bounceable: a channel that refuses it (closing or closed) sends the TON back instead of
        # keeping it uncredited; with its state init attached, a new channel is still deployed
        await wallet.send([Transfer(self.address, amount, body, self.init, bounce=True)])

    async def redeem(self, wallet: Wallet, signature: bytes, voucher_cell: Any) -> None:
        await wallet.send([Transfer(self.address, c.MIN_GAS * 2, c.redeem(signature, voucher_cell))])

    async def withdraw(self, wallet: Wallet, amount: int) -> None:
        await wallet.send([Transfer(self.address, c.MIN_GAS * 2, c.withdraw(amount))])

    async def start_close(self, wallet: Wallet) -> None:
        await wallet.send([Transfer(self.address, c.MIN_GAS * 2, c.start_close())])

    async def finish_close(self, wallet: Wallet) -> None:
        await wallet.send([Transfer(self.address, c.MIN_GAS * 2, c.finish_close())])

    async def commit(self, wallet: Wallet, signature: bytes, state_cell: Any) -> None:
        await wallet.send([Transfer(self.address, c.MIN_GAS * 2, c.commit(signature, state_cell))])
