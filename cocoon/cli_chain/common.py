"""What the ``cocoon chain``, ``wallet`` and ``registry`` commands share: the common options, the
values on the command line and in the output, the run of a command, and the chain, wallet,
registry and channel helpers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer

from cocoon.cli_tools import fail
from cocoon.config import TON, data_dir

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from pytoniq_core import Address

    from cocoon.chain.channels import ChannelState
    from cocoon.chain.ledger import Ledger
    from cocoon.chain.registry import RegistryState
    from cocoon.chain.wallet import Wallet
    from cocoon.payments.store import PaymentStore


# --- options shared by the commands ---

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of text.")]
ChainOpt = Annotated[
    str, typer.Option("--chain", envvar="COCOON_CHAIN", help="The chain: sandbox (`cocoon chain serve`) or ton.")
]
ChainUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--chain-url",
        envvar="COCOON_CHAIN_URL",
        help="sandbox: the local chain's URL (default http://127.0.0.1:8645); ton: mainnet, testnet or a config file.",
    ),
]
RootOpt = Annotated[str | None, typer.Option("--root", envvar="COCOON_ROOT", help="Address of the registry contract.")]
WalletKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--wallet-key",
        envvar="COCOON_WALLET_KEY",
        help="The wallet's Ed25519 key file (PEM). Default: <data dir>/client-wallet.key.",
    ),
]
PaymentsDbOpt = Annotated[
    Path | None,
    typer.Option(
        "--payments-db", help="The node's payments database (SQLite). Default: <data dir>/client-payments.db."
    ),
]
AmountOpt = Annotated[str, typer.Option("--amount", help="Amount in TON, a decimal such as 1.5 (exact to 1 nanoTON).")]

DEFAULT_CHAIN_URL = "http://127.0.0.1:8645"
MAX_COINS = 2**120 - 1
FEE_MARGIN = TON // 20  # what the wallet needs above a transfer's value for fees
CHANNEL_KIND = {"client": "client", "proxy_in": "client", "proxy_out": "worker", "worker": "worker"}
SETTLE_TIMEOUT = 90.0  # seconds for a contract to show a message's effect on TON
T = TypeVar("T")


class Refused(Exception):
    """The command cannot do what was asked; the message is one line for the user."""


@dataclass(frozen=True)
class Target:
    """The chain, registry and wallet a command works on (the shared options)."""

    chain: str
    url: str | None
    root: str | None
    wallet_key: Path | None

    @property
    def chain_url(self) -> str:
        if self.url:
            return self.url
        return DEFAULT_CHAIN_URL if self.chain == "sandbox" else "mainnet"

    @property
    def key_file(self) -> Path:
        return wallet_key_file(self.wallet_key)


@dataclass
class Report:
    """What a command prints: ``doc`` with --json, else ``lines``. A non-empty ``error`` is shown
    after it, and the command then exits with code 2."""

    doc: dict[str, Any]
    lines: list[str]
    error: str = ""


def wallet_key_file(path: Path | None) -> Path:
    return path or data_dir() / "client-wallet.key"


def payments_db_file(path: Path | None) -> Path:
    return path or data_dir() / "client-payments.db"


def show(report: Report, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(report.doc, indent=2))
    else:
        for line in report.lines:
            typer.echo(line)
    if report.error:
        fail(report.error)


def execute(as_json: bool, job: Callable[[], Coroutine[Any, Any, Report]]) -> None:
    """Run one command's async logic; its errors end the command with one line (exit code 2).
    ``job`` parses the command line before it makes the coroutine, so bad input touches no chain."""
    from cocoon.chain.errors import ChainError
    from cocoon.keys import KeyFileError

    try:
        report = asyncio.run(job())
    except (Refused, ChainError, KeyFileError, OSError, sqlite3.Error) as exc:
        fail(str(exc))
        return
    show(report, as_json)


def checked(make: Callable[[], T]) -> T:
    """Arguments checked before any chain access: a bad one ends the command (exit code 2)."""
    try:
        return make()
    except Refused as exc:
        fail(str(exc))
        raise  # unreachable: fail exits


# --- values on the command line and in the output ---


MAX_NUMBER_TEXT = 64


def fixed_point(text: str, option: str, decimals: int, *, unit: str, maximum: int, positive: bool = False) -> int:
    """The decimal ``text`` times 10^``decimals``, exactly, as an integer in 0..``maximum``."""
    if len(text) > MAX_NUMBER_TEXT:  # before any conversion: int() refuses over 4,300 digits with a traceback
        raise Refused(f"{option} takes {unit}, not {len(text)} characters")
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite():
        raise Refused(f"{option} takes {unit}, not {text!r}")
    if value < 0:
        raise Refused(f"{option} cannot be negative ({text})")
    _, digits, exponent = value.as_tuple()
    number = int("".join(map(str, digits)))
    shift = int(exponent) + decimals  # the result is number × 10^shift
    if number == 0:
        scaled = 0
    elif len(digits) + shift > len(str(maximum)):
        raise Refused(f"{option} {text} is too large")
    elif shift >= 0:
        scaled = number * int(10**shift)
    elif -shift > len(digits) or number % int(10**-shift):
        smallest = f"{Decimal(1).scaleb(-decimals):f}"
        raise Refused(f"{option} {text} has more than {decimals} decimals (the smallest step is {smallest})")
    else:
        scaled = number // int(10**-shift)
    if scaled > maximum:
        raise Refused(f"{option} {text} is too large")
    if positive and scaled == 0:
        raise Refused(f"{option} must be more than 0")
    return scaled


def parse_ton(text: str, option: str = "--amount", positive: bool = True) -> int:
    """An amount in TON on the command line, as nanoTON."""
    return fixed_point(text, option, 9, unit="an amount of TON such as 1.5", maximum=MAX_COINS, positive=positive)


def ton_text(nano: int) -> str:
    """nanoTON as TON, without trailing zeros: 1500000000 → "1.5"."""
    whole, part = divmod(abs(nano), TON)
    text = f"{whole}.{part:09d}".rstrip("0").rstrip(".")
    return f"-{text}" if nano < 0 else text


def coins(name: str, nano: int) -> dict[str, Any]:
    """An amount in JSON: ``{name: "1.5", name_nano: 1500000000}``."""
    return {name: ton_text(nano), f"{name}_nano": nano}


def factor_text(units: int, decimals: int) -> str:
    return f"{Decimal(units).scaleb(-decimals).normalize():f}"


def hex32(text: str, what: str) -> bytes:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()):
        raise Refused(f"{what} {text!r} is not 64 hex digits")
    return bytes.fromhex(text.strip())


def short_text(text: str, what: str) -> str:
    if not 1 <= len(text.encode()) <= 127:
        raise Refused(f"{what} must be 1 to 127 bytes of UTF-8")
    return text


def when(unix: int) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def address_arg(text: str) -> Address:
    from cocoon.chain.access import parse_address

    return parse_address(text)


def channel_arg(text: str) -> Address:
    address = address_arg(text)
    if address.wc != 0:
        raise Refused(f"{text}: payment channels live in workchain 0")
    return address


def channel_address(channel_id: bytes) -> Address:
    """The address of the channel with this account id (channels live in workchain 0)."""
    from pytoniq_core import Address

    return Address((0, channel_id))


def raw(address: Address) -> str:
    return str(address.to_str(is_user_friendly=False))


def address_doc(address: Address) -> dict[str, str]:
    """The raw form and the user-friendly forms (non-bounceable for paying a wallet, bounceable)."""
    return {
        "address": raw(address),
        "address_friendly": str(address.to_str(is_user_friendly=True, is_bounceable=False)),
        "address_bounceable": str(address.to_str(is_user_friendly=True, is_bounceable=True)),
    }


# --- the chain, the wallet, the registry ---


@contextlib.asynccontextmanager
async def opened(target: Target) -> AsyncIterator[Ledger]:
    from cocoon.chain.access import open_ledger

    ledger = open_ledger(target.chain, target.chain_url)
    try:
        yield ledger
    finally:
        await ledger.aclose()


def load_wallet(ledger: Ledger, target: Target) -> Wallet:
    """The wallet of ``--wallet-key``, which must exist: only ``wallet new`` creates one."""
    from cocoon.chain.access import lock_file_of
    from cocoon.chain.wallet import Wallet
    from cocoon.keys import load_identity

    path = target.key_file
    if not path.exists():
        raise Refused(f"no wallet key at {path}: create one with `cocoon wallet new` or pass --wallet-key")
    return Wallet(ledger, load_identity(path), lock_file=lock_file_of(path))


def offline_address(key: Ed25519PrivateKey) -> Address:
    """The wallet's address: it derives from the key alone (``Wallet`` only keeps the ledger)."""
    from cocoon.chain.ledger import Ledger
    from cocoon.chain.wallet import Wallet

    return Wallet(cast(Ledger, None), key).address


async def chain_now(ledger: Ledger) -> int:
    """The chain's clock: the sandbox's may be set ahead of the wall clock."""
    from cocoon.chain.sandbox import SandboxLedger

    if isinstance(ledger, SandboxLedger):
        return int((await ledger.status())["now"])
    return int(time.time())


async def ready_to_send(wallet: Wallet, value: int) -> None:
    """Refuse here what the chain would refuse less clearly: a v4 wallet silently skips a transfer
    it cannot pay, and its messages expire by this machine's clock (a sandbox clock set far ahead
    makes the wallet refuse them)."""
    from cocoon.chain.wallet import VALID_FOR

    balance = await wallet.balance()
    if balance < value + FEE_MARGIN:
        raise Refused(
            f"the wallet {raw(wallet.address)} holds {ton_text(balance)} TON: sending {ton_text(value)} TON "
            f"needs about {ton_text(value + FEE_MARGIN)} TON with the fees"
        )
    ahead = await chain_now(wallet.ledger) - int(time.time())
    if ahead >= VALID_FOR:
        raise Refused(
            f"the chain's clock is {ahead} s ahead of this machine's: the wallet's messages, valid for "
            f"{VALID_FOR} s by this clock, would be refused"
        )


async def settled(ledger: Ledger, read: Callable[[], Awaitable[T]], done: Callable[[T], bool], what: str) -> T:
    """Read until ``done``. The sandbox runs a message and everything it causes at once; on TON a
    contract handles a wallet's message a block or two after the wallet."""
    deadline = time.monotonic() + (0 if ledger.name == "sandbox" else SETTLE_TIMEOUT)
    while True:
        value = await read()
        if done(value):
            return value
        if time.monotonic() >= deadline:
            raise Refused(f"{what} did not show on the chain")
        await asyncio.sleep(2.0)


def root_of(target: Target) -> Address:
    if not target.root:
        raise Refused("no registry given: pass --root ADDRESS or set COCOON_ROOT")
    return address_arg(target.root)


async def load_registry(ledger: Ledger, root: Address) -> RegistryState:
    from cocoon.chain.registry import read_registry

    info = await ledger.account(root)
    if info.status != "active":
        raise Refused(f"no registry at {raw(root)} (the account is {info.status})")
    return await read_registry(ledger, root)


def registry_lines(state: RegistryState) -> list[str]:
    p = state.params
    mults = ", ".join(
        f"{name} ×{factor_text(value, 4)}"
        for name, value in (
            ("prompt", p.prompt_mult),
            ("cached", p.cached_mult),
            ("completion", p.completion_mult),
            ("reasoning", p.reasoning_mult),
        )
    )
    lines = [
        f"registry {state.address}: config version {state.version}, owner {state.owner}",
        f"  price {p.price_per_token} nanoTON per token; {mults}",
        f"  proxy commission {factor_text(p.commission_bps, 2)} %; min client stake {ton_text(p.min_client_stake)} TON;"
        f" close delay {p.close_delay} s",
    ]
    lines += [f"  proxy image {h.hex()}" for h in sorted(state.proxy_images)]
    lines += [f"  worker image {h.hex()}" for h in sorted(state.worker_images)]
    lines += [f"  model {h.hex()} {name}" for h, name in sorted(state.models.items())]
    lines += [f"  proxy {k.hex()} at {endpoint}" for k, endpoint in sorted(state.proxies.items())]
    return lines


# --- channels ---


def phase(state: ChannelState, now: int) -> str:
    """absent, open, closing (delay running), closable (FinishClose may be sent) or closed."""
    if not state.exists:
        return "absent"
    if state.close_at == 0:
        return "open"
    if now < state.close_at:
        return "closing"
    return "closed" if state.balance == 0 else "closable"


async def channel_state(ledger: Ledger, kind: str, address: Address) -> ChannelState:
    from cocoon.chain.channels import Channel
    from cocoon.chain.contracts import account_id

    return await Channel.at(ledger, kind, account_id(address)).state()


async def detect_channel(ledger: Ledger, address: Address) -> tuple[str, ChannelState]:
    """The channel's kind ("client" or "worker"; "" if it does not exist) and state. The client
    channel's get-method returns 5 values and the worker channel's 4: try one, then the other."""
    from cocoon.chain.channels import ChannelState
    from cocoon.chain.errors import ChainError

    info = await ledger.account(address)
    if info.status != "active":
        return "", ChannelState(raw(address), exists=False)
    for kind in ("client", "worker"):
        try:
            return kind, await channel_state(ledger, kind, address)
        except ChainError as exc:
            if exc.code != "wrong_code":
                raise
        except ValueError:  # a worker channel's values read as a client channel's
            pass
    raise Refused(f"{raw(address)} is not a Cocoon payment channel")


def channel_doc(kind: str, state: ChannelState, now: int) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "address": state.address,
        "kind": kind or None,
        "exists": state.exists,
        "phase": phase(state, now),
        **coins("balance", state.balance),
        **coins("stake", state.stake),
        **coins("redeemed", state.redeemed),
        "seqno": state.seqno,
        "close_at": state.close_at,
    }
    if kind == "worker":
        doc["commit_seq"] = state.commit_seq
    return doc


def channel_line(kind: str, state: ChannelState, now: int) -> str:
    name = f"{kind} channel" if kind else "channel"
    if not state.exists:
        return f"{name} {state.address}: does not exist"
    text = f"{name} {state.address}: {phase(state, now)}, balance {ton_text(state.balance)} TON"
    if kind == "client":
        text += f", stake {ton_text(state.stake)} TON"
    text += f", redeemed {ton_text(state.redeemed)} TON up to voucher #{state.seqno}"
    if state.close_at:
        text += f", {'closes' if now < state.close_at else 'closable since'} {when(state.close_at)}"
    return text


@contextlib.contextmanager
def existing_store(path: Path) -> Iterator[PaymentStore | None]:
    """The payments database at ``path``, or None where there is none (it is not created)."""
    from cocoon.payments.store import PaymentStore

    store = PaymentStore(path) if path.exists() else None
    try:
        yield store
    finally:
        if store is not None:
            store.close()
