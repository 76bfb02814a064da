"""The ``cocoon chain``, ``cocoon wallet`` and ``cocoon registry`` commands: the chain side of Cocoon.

Every command but ``chain serve`` takes ``--json`` (one JSON document on stdout) and otherwise
prints a short text. Amounts are given in TON as decimal strings (exact to the nanoTON) and shown
in TON and nanoTON. The chain modules are imported inside the commands: they take half a second
to load, which no other ``cocoon`` command should pay.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import re
import signal
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
    from cocoon.chain.registry import RegistryAdmin, RegistryState
    from cocoon.chain.wallet import Wallet
    from cocoon.payments.store import ChannelRow, PaymentStore

chain_app = typer.Typer(help="The local chain (sandbox) and what any chain holds for Cocoon.", no_args_is_help=True)
wallet_app = typer.Typer(
    help="The node's TON wallet and its payment channels: fund, withdraw, close, redeem.", no_args_is_help=True
)
registry_app = typer.Typer(
    help="The registry (root contract): deploy it, show it, and change it as its owner.", no_args_is_help=True
)


@chain_app.command("serve")
def chain_serve(
    state: Annotated[
        Path | None, typer.Option(help="File that keeps the chain's state across restarts. Default: the data dir.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback only is safe: the faucet is open).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on; 0 picks a free one.")] = 8645,
    status_file: Annotated[str | None, typer.Option(help="Write the service's state as JSON to this file.")] = None,
) -> None:
    """Run the local chain: the Cocoon contracts in TON's sandbox, with a faucet, until Ctrl-C."""
    from cocoon.chain.errors import ChainError
    from cocoon.chain.sandbox import ChainServer, default_state_file
    from cocoon.config import data_dir
    from cocoon.status import write_status

    async def main() -> None:
        server = ChainServer(state or default_state_file(data_dir()), host=host, port=port)
        url = await server.start()
        write_status(status_file or "", "ready", url=url, faucet=server.faucet)
        typer.echo(f"local chain on {url} (state in {server.state_file}); Ctrl-C stops it", err=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        waiting = asyncio.create_task(stop.wait())
        exited = asyncio.create_task(server.wait())
        await asyncio.wait({waiting, exited}, return_when=asyncio.FIRST_COMPLETED)
        if exited.done():
            raise ChainError("no_service", f"the chain service exited with code {exited.result()}")
        waiting.cancel()
        exited.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await exited
        await server.stop()

    try:
        asyncio.run(main())
    except ChainError as exc:
        fail(str(exc))


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
StakeOpt = Annotated[
    str | None, typer.Option("--stake", help="Of the amount, lock this much TON as the client channel's stake.")
]
ChannelOpt = Annotated[str, typer.Option("--channel", help="Address of the payment channel contract.")]
HashArg = Annotated[str, typer.Argument(help="The hash: 64 hex digits.", show_default=False)]
PublicKeyArg = Annotated[str, typer.Argument(help="The proxy's Ed25519 public key: 64 hex digits.")]
RoleOpt = Annotated[str, typer.Option("--role", help="Whose image it is: proxy or worker.")]
PriceOpt = Annotated[
    int | None,
    typer.Option(help="nanoTON per token at ×1, before multipliers. Deploy: 1000; set-params: unchanged."),
]
PromptMultOpt = Annotated[
    str | None, typer.Option(help="Price factor of prompt tokens, e.g. 1.5. Deploy: 1; set-params: unchanged.")
]
CachedMultOpt = Annotated[
    str | None, typer.Option(help="Price factor of cached prompt tokens. Deploy: 1; set-params: unchanged.")
]
CompletionMultOpt = Annotated[
    str | None, typer.Option(help="Price factor of completion tokens. Deploy: 1; set-params: unchanged.")
]
ReasoningMultOpt = Annotated[
    str | None, typer.Option(help="Price factor of reasoning tokens. Deploy: 1; set-params: unchanged.")
]
CommissionOpt = Annotated[
    int | None,
    typer.Option(help="The proxy's commission in basis points (0..10000). Deploy: 1000; set-params: unchanged."),
]
MinStakeOpt = Annotated[
    str | None,
    typer.Option(help="Least stake (TON) a client locks in a channel. Deploy: 0.1; set-params: unchanged."),
]
CloseDelayOpt = Annotated[
    int | None,
    typer.Option(help="Seconds from StartClose to FinishClose (at most 30 days). Deploy: 3600; set-params: unchanged."),
]

DEFAULT_CHAIN_URL = "http://127.0.0.1:8645"
MAX_COINS = 2**120 - 1
MAX_UINT32 = 2**32 - 1
MAX_CLOSE_DELAY = 30 * 86400
OP_FEE = TON // 100  # a channel keeps this much of every deposit (contracts/README.md, "Fees")
FEE_MARGIN = TON // 20  # what the wallet needs above a transfer's value for fees
CHANNEL_KIND = {"client": "client", "proxy_in": "client", "proxy_out": "worker", "worker": "worker"}
PAYEE_ROLES = ("proxy_in", "worker")
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


# --- values on the command line and in the output ---


def fixed_point(text: str, option: str, decimals: int, *, unit: str, maximum: int, positive: bool = False) -> int:
    """The decimal ``text`` times 10^``decimals``, exactly, as an integer in 0..``maximum``."""
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
    from cocoon.chain.wallet import Wallet
    from cocoon.keys import load_identity

    path = target.key_file
    if not path.exists():
        raise Refused(f"no wallet key at {path}: create one with `cocoon wallet new` or pass --wallet-key")
    return Wallet(ledger, load_identity(path))


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


def row_doc(row: ChannelRow) -> dict[str, Any]:
    voucher = None
    if row.seqno:
        voucher = {"seqno": row.seqno, **coins("amount", row.amount), "expiry": row.expiry}
    return {"role": row.role, "peer_key": row.peer_key.hex(), **coins("total", row.total), "voucher": voucher}


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


def all_rows(store: PaymentStore) -> list[ChannelRow]:
    return [row for role in CHANNEL_KIND for row in store.channels(role)]


# --- cocoon chain ---


@chain_app.command("status")
def chain_status(
    channel: Annotated[
        list[str] | None, typer.Option("--channel", help="Also show this channel's state; repeat for several.")
    ] = None,
    payments_db: PaymentsDbOpt = None,
    chain: ChainOpt = "sandbox",
    chain_url: ChainUrlOpt = None,
    root: RootOpt = None,
    wallet_key: WalletKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the registry, the wallet and the on-chain state of every channel of the payments database."""
    target = Target(chain, chain_url, root, wallet_key)
    execute(
        as_json,
        lambda: status(target, payments_db_file(payments_db), [channel_arg(text) for text in channel or []]),
    )


async def status(target: Target, db: Path, extra: list[Address]) -> Report:
    from cocoon.chain.contracts import account_id

    async with opened(target) as ledger:
        now = await chain_now(ledger)
        doc: dict[str, Any] = {"chain": target.chain, "chain_url": target.chain_url, "now": now}
        lines = [f"chain: {target.chain} at {target.chain_url}; chain time {when(now)}"]
        doc["registry"] = None
        if target.root:
            state = await load_registry(ledger, root_of(target))
            doc["registry"] = state.to_json()
            lines += registry_lines(state)
        else:
            lines.append("registry: none given (--root or COCOON_ROOT)")
        doc["wallet"] = None
        if target.key_file.exists():
            wallet = load_wallet(ledger, target)
            balance = await wallet.balance()
            doc["wallet"] = {**address_doc(wallet.address), **coins("balance", balance)}
            lines.append(f"wallet {raw(wallet.address)}: {ton_text(balance)} TON")
        else:
            lines.append(f"wallet: no key at {target.key_file}")
        channels: list[dict[str, Any]] = []
        seen: set[bytes] = set()
        with existing_store(db) as store:
            for row in all_rows(store) if store else []:
                kind = CHANNEL_KIND[row.role]
                known = await channel_state(ledger, kind, channel_address(row.channel))
                channels.append({**channel_doc(kind, known, now), "role": row.role, "db": row_doc(row)})
                lines.append(f"{channel_line(kind, known, now)}; we are {row.role}, owed {ton_text(row.total)} TON")
                seen.add(row.channel)
        for address in extra:
            if account_id(address) in seen:
                continue
            seen.add(account_id(address))
            kind, found = await detect_channel(ledger, address)
            channels.append({**channel_doc(kind, found, now), "role": None, "db": None})
            lines.append(channel_line(kind, found, now))
        doc["channels"] = channels
        if not channels:
            lines.append(f"channels: none in {db}")
        return Report(doc, lines)


@chain_app.command("faucet")
def chain_faucet(
    amount: AmountOpt,
    address: Annotated[
        str | None, typer.Option("--address", help="Address to fund. Default: the wallet of --wallet-key.")
    ] = None,
    chain: ChainOpt = "sandbox",
    chain_url: ChainUrlOpt = None,
    wallet_key: WalletKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send TON from the local chain's faucet (sandbox only), for local testing."""
    target = Target(chain, chain_url, None, wallet_key)
    execute(as_json, lambda: faucet(target, address_arg(address) if address else None, parse_ton(amount)))


async def faucet(target: Target, address: Address | None, value: int) -> Report:
    from cocoon.chain.sandbox import SandboxLedger

    async with opened(target) as ledger:
        if not isinstance(ledger, SandboxLedger):
            raise Refused("the faucet exists only on the sandbox chain")
        if address is None:
            address = load_wallet(ledger, target).address
        await ledger.faucet(address, value)
        balance = (await ledger.account(address)).balance
        doc = {**address_doc(address), **coins("amount", value), **coins("balance", balance)}
        return Report(doc, [f"sent {ton_text(value)} TON to {raw(address)}; it holds {ton_text(balance)} TON"])


# --- cocoon wallet ---


@wallet_app.command("new")
def wallet_new(wallet_key: WalletKeyOpt = None, as_json: JsonOpt = False) -> None:
    """Create the wallet's key file (mode 0600) and print the wallet's address; never overwrites a key."""
    from cocoon.keys import KeyFileError, load_or_create_identity

    path = wallet_key_file(wallet_key)
    if path.exists():
        fail(f"{path} already exists: a wallet key is never overwritten")
        return
    try:
        key = load_or_create_identity(path)
    except (KeyFileError, OSError) as exc:
        fail(str(exc))
        return
    report = address_report(path, key)
    report.lines[0] = f"created {path}; " + report.lines[0]
    show(report, as_json)


@wallet_app.command("address")
def wallet_address(wallet_key: WalletKeyOpt = None, as_json: JsonOpt = False) -> None:
    """Print the wallet's address, raw and user-friendly (no chain access needed)."""
    from cocoon.keys import KeyFileError, load_identity

    path = wallet_key_file(wallet_key)
    if not path.exists():
        fail(f"no wallet key at {path}: create one with `cocoon wallet new`")
        return
    try:
        key = load_identity(path)
    except (KeyFileError, OSError) as exc:
        fail(str(exc))
        return
    show(address_report(path, key), as_json)


def address_report(path: Path, key: Ed25519PrivateKey) -> Report:
    from cocoon.keys import public_bytes

    doc = {**address_doc(offline_address(key)), "public_key": public_bytes(key).hex(), "key_file": str(path)}
    return Report(doc, [f"wallet {doc['address']}", f"user-friendly: {doc['address_friendly']}"])


@wallet_app.command("balance")
def wallet_balance(
    payments_db: PaymentsDbOpt = None,
    chain: ChainOpt = "sandbox",
    chain_url: ChainUrlOpt = None,
    wallet_key: WalletKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the wallet's balance and, for each client channel of the payments database, what it holds
    on chain and what we spent through it."""
    target = Target(chain, chain_url, None, wallet_key)
    execute(as_json, lambda: balance(target, payments_db_file(payments_db)))


async def balance(target: Target, db: Path) -> Report:
    async with opened(target) as ledger:
        wallet = load_wallet(ledger, target)
        held = await wallet.balance()
        now = await chain_now(ledger)
        doc: dict[str, Any] = {**address_doc(wallet.address), **coins("balance", held)}
        lines = [f"wallet {raw(wallet.address)}: {ton_text(held)} TON"]
        channels = []
        with existing_store(db) as store:
            for row in store.channels("client") if store else []:
                state = await channel_state(ledger, "client", channel_address(row.channel))
                entry = {**channel_doc("client", state, now), "proxy_key": row.peer_key.hex()}
                channels.append({**entry, **coins("spent", row.total)})
                lines.append(f"{channel_line('client', state, now)}; we spent {ton_text(row.total)} TON")
        doc["channels"] = channels
        return Report(doc, lines)


@wallet_app.command("deposit")
def wallet_deposit(
    proxy_wallet: Annotated[str, typer.Option("--proxy-wallet", help="The proxy's wallet address (the payee).")],
    proxy_key: Annotated[str, typer.Option("--proxy-key", help="The proxy's Ed25519 public key: 64 hex digits.")],
    amount: AmountOpt,
    stake: StakeOpt = None,
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--key-file", help="The client's identity key, which signs vouchers. Default: <data dir>/client.key."
        ),
    ] = None,
    payments_db: PaymentsDbOpt = None,
    chain: ChainOpt = "sandbox",
    chain_url: ChainUrlOpt = None,
    root: RootOpt = None,
    wallet_key: WalletKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Open or fund the channel from this client to a proxy. The stake defaults to the registry's
    minimum for a new channel and to 0 for an existing one."""
    target = Target(chain, chain_url, root, wallet_key)
    execute(
        as_json,
        lambda: deposit(
            target,
            proxy=address_arg(proxy_wallet),
            proxy_key=hex32(proxy_key, "--proxy-key"),
            value=parse_ton(amount),
            stake=parse_ton(stake, "--stake", positive=False) if stake is not None else None,
            key_file=key_file or data_dir() / "client.key",
            db=payments_db_file(payments_db),
        ),
    )


def check_deposit(value: int, stake: int) -> None:
    if value <= OP_FEE:
        raise Refused(f"--amount must be more than {ton_text(OP_FEE)} TON: the channel keeps that much of a deposit")
    if stake > value - OP_FEE:
        raise Refused(
            f"a stake of {ton_text(stake)} TON is more than the deposit credits "
            f"({ton_text(value)} − {ton_text(OP_FEE)} TON); deposit more or pass a smaller --stake"
        )


async def deposit(
    target: Target, *, proxy: Address, proxy_key: bytes, value: int, stake: int | None, key_file: Path, db: Path
) -> Report:
    from cocoon.chain.channels import Channel
    from cocoon.keys import load_or_create_identity, public_bytes
    from cocoon.payments.store import PaymentStore

    async with opened(target) as ledger:
        root = root_of(target)
        registry = await load_registry(ledger, root)
        wallet = load_wallet(ledger, target)
        client_key = public_bytes(load_or_create_identity(key_file))
        channel = Channel.client(
            ledger,
            root=root,
            client=wallet.address,
            proxy=proxy,
            close_delay=registry.params.close_delay,
            client_key=client_key,
            proxy_key=proxy_key,
        )
        before = await channel.state()
        if before.close_at:
            raise Refused(f"the channel {before.address} is closing: it takes no more deposits")
        if stake is None:
            stake = 0 if before.exists else registry.params.min_client_stake
        check_deposit(value, stake)
        await ready_to_send(wallet, value)
        await channel.top_up(wallet, value, stake)
        after = await settled(ledger, channel.state, lambda s: s.balance > before.balance, "the deposit")
        with contextlib.closing(PaymentStore(db)) as store:
            if store.channel(channel.account_id) is None:
                store.add_channel(channel.account_id, "client", proxy_key)
        now = await chain_now(ledger)
        doc = {
            "channel": channel_doc("client", after, now),
            "created": not before.exists,
            **coins("deposited", value),
            **coins("stake_added", stake),
            "proxy_wallet": raw(proxy),
            "proxy_key": proxy_key.hex(),
            "client_key": client_key.hex(),
            "close_delay": registry.params.close_delay,
            "payments_db": str(db),
        }
        verb = "opened" if not before.exists else "funded"
        lines = [f"{verb} {after.address} with {ton_text(value)} TON", channel_line("client", after, now)]
        return Report(doc, lines)


@wallet_app.command("topup")
def wallet_topup(
    channel: ChannelOpt,
    amount: AmountOpt,
    stake: StakeOpt = None,
    chain: ChainOpt = "sandbox",
    chain_url: ChainUrlOpt = None,
    wallet_key: WalletKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add funds to an existing channel (a client channel, or a worker channel from the proxy's wallet)."""
    target = Target(chain, chain_url, None, wallet_key)
    execute(
        as_json,
        lambda: topup(
            target,
            channel_arg(channel),
            parse_ton(amount),
            parse_ton(stake, "--stake", positive=False) if stake is not None else 0,
        ),
    )


async def topup(target: Target, address: Address, value: int, stake: int) -> Report:
    from cocoon.chain.channels import Channel
    from cocoon.chain.contracts import account_id

    async with opened(target) as ledger:
        wallet = load_wallet(ledger, target)
        kind, before = await detect_channel(ledger, address)
        if not before.exists:
            raise Refused(f"no channel at {raw(address)}: open one with `cocoon wallet deposit`")
        if before.close_at:
            raise Refused(f"the channel {before.address} is closing: it takes no more deposits")
        if kind == "worker" and stake:
            raise Refused("worker channels have no stake: leave out --stake")
        check_deposit(value, stake)
        await ready_to_send(wallet, value)
        channel = Channel.at(ledger, kind, account_id(address))
        await channel.top_up(wallet, value, stake if kind == "client" else None)
        after = await settled(ledger, channel.state, lambda s: s.balance > before.balance, "the top-up")
        now = await chain_now(ledger)
        doc = {"channel": channel_doc(kind, after, now), **coins("deposited", value), **coins("stake_added", stake)}
        return Report(doc, [f"added {ton_text(value)} TON", channel_line(kind, after, now)])


@wallet_app.command("withdraw")
def wallet_withdraw(
    channel: ChannelOpt,
    amount: AmountOpt,
    chain: ChainOpt = "sandbox",
    chain_url: ChainUrlOpt = None,
    wallet_key: WalletKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Take TON back from a client channel; only what is above the stake can be withdrawn."""
    target = Target(chain, chain_url, None, wallet_key)
    execute(as_json, lambda: withdraw(target, channel_arg(channel), parse_ton(amount)))


async def withdraw(target: Target, address: Address, value: int) -> Report:
    from cocoon.chain.channels import Channel
    from cocoon.chain.contracts import account_id

    async with opened(target) as ledger:
        wallet = load_wallet(ledger, target)
        kind, before = await detect_channel(ledger, address)
        now = await chain_now(ledger)
        if not before.exists:
            raise Refused(f"no channel at {raw(address)}")
        if kind != "client":
            raise Refused("only a client channel allows withdrawals: close a worker channel to get its funds back")
        if before.close_at and now >= before.close_at:
            raise Refused(f"the channel {before.address} is {phase(before, now)}: use `cocoon wallet close`")
        free = before.balance - before.stake
        if value > free:
            raise Refused(
                f"cannot withdraw {ton_text(value)} TON: the channel holds {ton_text(before.balance)} TON of which "
                f"the stake of {ton_text(before.stake)} TON stays locked, so at most {ton_text(max(free, 0))} TON"
            )
        await ready_to_send(wallet, 0)
        channel = Channel.at(ledger, "client", account_id(address))
        await channel.withdraw(wallet, value)
        after = await settled(ledger, channel.state, lambda s: s.balance < before.balance, "the withdrawal")
        doc = {"channel": channel_doc(kind, after, now), **coins("withdrawn", value)}
        return Report(doc, [f"withdrew {ton_text(value)} TON", channel_line(kind, after, now)])


@wallet_app.command("close")
def wallet_close(
    channel: ChannelOpt,
    chain: ChainOpt = "sandbox",
    chain_url: ChainUrlOpt = None,
    wallet_key: WalletKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Close a channel we pay through: StartClose while it is open, FinishClose once the close delay
    has passed (it pays the rest back to the payer); in between, say when it can be finished."""
    target = Target(chain, chain_url, None, wallet_key)
    execute(as_json, lambda: close(target, channel_arg(channel)))


async def close(target: Target, address: Address) -> Report:
    from cocoon.chain.channels import Channel
    from cocoon.chain.contracts import account_id

    async with opened(target) as ledger:
        wallet = load_wallet(ledger, target)
        kind, before = await detect_channel(ledger, address)
        if not before.exists:
            raise Refused(f"no channel at {raw(address)}")
        channel = Channel.at(ledger, kind, account_id(address))
        now = await chain_now(ledger)
        after = before
        if before.close_at == 0:
            await ready_to_send(wallet, 0)
            await channel.start_close(wallet)
            after = await settled(ledger, channel.state, lambda s: s.close_at != 0, "StartClose")
            action = "start_close"
        elif now < before.close_at:
            action = "wait"
        elif before.balance == 0:
            action = "none"
        else:
            await ready_to_send(wallet, 0)
            await channel.finish_close(wallet)
            after = await settled(ledger, channel.state, lambda s: s.balance == 0, "FinishClose")
            action = "finish_close"
        now = await chain_now(ledger)
        message = {
            "start_close": f"close started: it can be finished from {when(after.close_at)}",
            "wait": f"closing: it can be finished from {when(after.close_at)}, in {after.close_at - now} s",
            "none": "already closed",
            "finish_close": f"closed: {ton_text(before.balance)} TON went back to the payer",
        }[action]
        doc = {"action": action, "channel": channel_doc(kind, after, now), "now": now}
        if action == "finish_close":
            doc.update(coins("paid_out", before.balance))
        return Report(doc, [message, channel_line(kind, after, now)])


@wallet_app.command("redeem")
def wallet_redeem(
    channel: Annotated[
        str | None, typer.Option("--channel", help="Redeem only this channel. Default: every one we are paid through.")
    ] = None,
    payments_db: PaymentsDbOpt = None,
    chain: ChainOpt = "sandbox",
    chain_url: ChainUrlOpt = None,
    wallet_key: WalletKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Redeem the newest stored voucher of each channel that pays us (a proxy's client channels, a
    worker's channels) where the chain has an older one. Pass the role's --payments-db and wallet."""
    target = Target(chain, chain_url, None, wallet_key)
    db = payments_db_file(payments_db)
    if not db.exists():
        fail(f"no payments database at {db}: pass the proxy's or worker's --payments-db")
    execute(as_json, lambda: redeem(target, db, channel_arg(channel) if channel else None))


async def redeem(target: Target, db: Path, only: Address | None) -> Report:
    from cocoon.chain.contracts import account_id
    from cocoon.payments.store import PaymentStore

    async with opened(target) as ledger:
        wallet = load_wallet(ledger, target)
        with contextlib.closing(PaymentStore(db)) as store:
            rows = [row for role in PAYEE_ROLES for row in store.channels(role)]
            if only is not None:
                rows = [row for row in rows if row.channel == account_id(only)]
                if not rows:
                    raise Refused(f"{raw(only)} is not a channel that pays us in {db}")
            results = [await redeem_one(ledger, wallet, store, row) for row in rows]
    failed = [r for r in results if r["status"] == "failed"]
    lines = [redeem_line(r) for r in results] or [f"nothing to redeem: {db} has no channel that pays us"]
    paid = sum(int(r["paid_nano"]) for r in results)
    doc = {"channels": results, **coins("paid", paid)}
    error = f"{len(failed)} channel(s) could not be redeemed: {failed[0]['error']}" if failed else ""
    return Report(doc, lines, error)


async def redeem_one(ledger: Ledger, wallet: Wallet, store: PaymentStore, row: ChannelRow) -> dict[str, Any]:
    from cocoon.chain.channels import Channel
    from cocoon.chain.errors import ChainError
    from cocoon.payments.accounts import latest_voucher
    from cocoon.payments.vouchers import TAG_CLIENT_VOUCHER, TAG_WORKER_VOUCHER

    kind = CHANNEL_KIND[row.role]
    channel = Channel.at(ledger, kind, row.channel)
    before = await channel.state()
    now = await chain_now(ledger)
    result: dict[str, Any] = {"channel": before.address, "role": row.role, "kind": kind, "seqno": row.seqno}
    result.update(coins("amount", row.amount), onchain_seqno=before.seqno)
    redeemed = before.redeemed
    signed = latest_voucher(row, TAG_CLIENT_VOUCHER if kind == "client" else TAG_WORKER_VOUCHER)
    if signed is None:
        status = "no_voucher"
    elif not before.exists:
        status = "absent"
    elif before.seqno >= row.seqno:
        status = "up_to_date"
    elif before.close_at and now >= before.close_at:
        status = "closed"
    elif row.expiry < now:
        status = "expired"
    else:
        try:
            await ready_to_send(wallet, 0)
            await channel.redeem(wallet, signed.signature, signed.voucher.cell())
            done = await settled(ledger, channel.state, lambda s: s.seqno >= row.seqno, "the redemption")
            redeemed = done.redeemed
            status = "redeemed"
        except (Refused, ChainError) as exc:
            status = "failed"
            result["error"] = str(exc)
    if before.exists:
        store.set_redeemed(row.channel, redeemed)
    result.update(status=status, **coins("redeemed", redeemed), **coins("paid", redeemed - before.redeemed))
    return result


def redeem_line(result: dict[str, Any]) -> str:
    head = f"{result['channel']} ({result['role']}): "
    status = result["status"]
    if status == "redeemed":
        return head + (
            f"redeemed voucher #{result['seqno']}: {result['paid']} TON paid, {result['redeemed']} TON in total"
        )
    if status == "failed":
        return head + f"voucher #{result['seqno']} failed: {result['error']}"
    reasons = {
        "no_voucher": "no voucher yet",
        "absent": "the channel does not exist on chain",
        "up_to_date": f"voucher #{result['onchain_seqno']} already redeemed ({result['redeemed']} TON)",
        "closed": "the channel is closed",
        "expired": f"voucher #{result['seqno']} has expired",
    }
    return head + reasons[status]


# --- cocoon registry ---

ROLES = {"proxy": 1, "worker": 2}  # contracts.ROLE_PROXY, ROLE_WORKER


def param_changes(
    price_per_token: int | None,
    prompt_mult: str | None,
    cached_mult: str | None,
    completion_mult: str | None,
    reasoning_mult: str | None,
    commission_bps: int | None,
    min_stake: str | None,
    close_delay: int | None,
) -> dict[str, int]:
    """The registry parameters given on the command line, checked, as ``RootParams`` fields."""
    changes: dict[str, int] = {}
    for field, value, maximum in (
        ("price_per_token", price_per_token, MAX_COINS),
        ("commission_bps", commission_bps, 10000),
        ("close_delay", close_delay, MAX_CLOSE_DELAY),
    ):
        if value is not None:
            if not 0 <= value <= maximum:
                option = "--" + field.replace("_", "-")
                raise Refused(f"{option} must be between 0 and {maximum}, not {value}")
            changes[field] = value
    for field, text in (
        ("prompt_mult", prompt_mult),
        ("cached_mult", cached_mult),
        ("completion_mult", completion_mult),
        ("reasoning_mult", reasoning_mult),
    ):
        if text is not None:
            option = "--" + field.replace("_", "-")
            changes[field] = fixed_point(text, option, 4, unit="a factor such as 1.5", maximum=MAX_UINT32)
    if min_stake is not None:
        changes["min_client_stake"] = parse_ton(min_stake, "--min-stake", positive=False)
    return changes


@registry_app.command("deploy")
def registry_deploy(
    price_per_token: PriceOpt = None,
    prompt_mult: PromptMultOpt = None,
    cached_mult: CachedMultOpt = None,
    completion_mult: CompletionMultOpt = None,
    reasoning_mult: ReasoningMultOpt = None,
    commission_bps: CommissionOpt = None,
    min_stake: MinStakeOpt = None,
    close_delay: CloseDelayOpt = None,
    nonce: Annotated[
        int, typer.Option(help="Initial config version: one owner deploys several registries with different ones.")
    ] = 0,
    chain: ChainOpt = "sandbox",
    chain_url: ChainUrlOpt = None,
    wallet_key: WalletKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Deploy a new registry owned by the wallet and print its address."""
    target = Target(chain, chain_url, None, wallet_key)
    args = (price_per_token, prompt_mult, cached_mult, completion_mult, reasoning_mult, commission_bps)
    execute(as_json, lambda: deploy(target, param_changes(*args, min_stake, close_delay), checked_nonce(nonce)))


def checked_nonce(nonce: int) -> int:
    if not 0 <= nonce <= MAX_UINT32:
        raise Refused(f"--nonce must be between 0 and {MAX_UINT32}")
    return nonce


async def deploy(target: Target, changes: dict[str, int], nonce: int) -> Report:
    from cocoon.chain.contracts import RootParams, address_of, root_init
    from cocoon.chain.registry import ROOT_MESSAGE_VALUE, RegistryAdmin

    params = RootParams(**changes)
    async with opened(target) as ledger:
        wallet = load_wallet(ledger, target)
        root = address_of(root_init(wallet.address, params, nonce))
        if (await ledger.account(root)).status == "active":
            raise Refused(
                f"this wallet already deployed a registry with these parameters and nonce {nonce}, at {raw(root)}:"
                " pass another --nonce"
            )
        await ready_to_send(wallet, ROOT_MESSAGE_VALUE)
        admin = await RegistryAdmin.deploy(wallet, params, nonce)
        await settled(ledger, lambda: ledger.account(admin.root), lambda a: a.status == "active", "the registry")
        state = await load_registry(ledger, admin.root)
        doc = {"root": state.address, **address_doc(admin.root), "version": state.version, "registry": state.to_json()}
        return Report(doc, [f"deployed the registry {state.address}", *registry_lines(state)])


@registry_app.command("show")
def registry_show(
    chain: ChainOpt = "sandbox", chain_url: ChainUrlOpt = None, root: RootOpt = None, as_json: JsonOpt = False
) -> None:
    """Show everything the registry holds, with its config version."""
    target = Target(chain, chain_url, root, None)
    execute(as_json, lambda: show_registry(target))


async def show_registry(target: Target) -> Report:
    async with opened(target) as ledger:
        state = await load_registry(ledger, root_of(target))
        return Report(state.to_json(), registry_lines(state))


Change = Callable[["RegistryAdmin", "RegistryState"], Awaitable[None]]


def change_registry(target: Target, as_json: bool, what: str, details: dict[str, Any], change: Change) -> None:
    """One change by the registry's owner; ``details`` describe it in the JSON output."""
    execute(as_json, lambda: changed(target, what, details, change))


def checked(make: Callable[[], T]) -> T:
    """Arguments checked before any chain access: a bad one ends the command (exit code 2)."""
    try:
        return make()
    except Refused as exc:
        fail(str(exc))
        raise  # unreachable: fail exits


async def changed(target: Target, what: str, details: dict[str, Any], change: Change) -> Report:
    from cocoon.chain.registry import ROOT_MESSAGE_VALUE, RegistryAdmin

    async with opened(target) as ledger:
        root = root_of(target)
        before = await load_registry(ledger, root)
        wallet = load_wallet(ledger, target)
        if raw(wallet.address) != before.owner:
            raise Refused(f"the wallet {raw(wallet.address)} is not the registry's owner ({before.owner})")
        await ready_to_send(wallet, ROOT_MESSAGE_VALUE)
        await change(RegistryAdmin(wallet, root), before)
        after = await settled(
            ledger, lambda: load_registry(ledger, root), lambda s: s.version != before.version, "the change"
        )
        doc = {"root": after.address, "change": what, **details, "version": after.version, "registry": after.to_json()}
        return Report(doc, [f"{what}: the registry {after.address} is now at config version {after.version}"])


def role_of(text: str) -> int:
    if text not in ROLES:
        raise Refused(f"--role must be proxy or worker, not {text!r}")
    return ROLES[text]


@registry_app.command("add-image")
def registry_add_image(
    image_hash: HashArg,
    role: RoleOpt,
    chain: ChainOpt = "sandbox",
    chain_url: ChainUrlOpt = None,
    root: RootOpt = None,
    wallet_key: WalletKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Allow an image hash (`cocoon attest image-hash`) for proxies or workers."""
    role_id, digest = checked(lambda: (role_of(role), hex32(image_hash, "the image hash")))
    change_registry(
        Target(chain, chain_url, root, wallet_key),
        as_json,
        "add-image",
        {"role": role, "hash": digest.hex()},
        lambda admin, _: admin.add_image(role_id, digest),
    )


@registry_app.command("remove-image")
def registry_remove_image(
    image_hash: HashArg,
    role: RoleOpt,
    chain: ChainOpt = "sandbox",
    chain_url: ChainUrlOpt = None,
    root: RootOpt = None,
    wallet_key: WalletKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop allowing an image hash for proxies or workers."""
    role_id, digest = checked(lambda: (role_of(role), hex32(image_hash, "the image hash")))
    change_registry(
        Target(chain, chain_url, root, wallet_key),
        as_json,
        "remove-image",
        {"role": role, "hash": digest.hex()},
        lambda admin, _: admin.remove_image(role_id, digest),
    )


@registry_app.command("add-model")
def registry_add_model(
    model_hash: HashArg,
    name: Annotated[str, typer.Argument(help="The model's name (1..127 bytes); an existing hash is renamed.")],
    chain: ChainOpt = "sandbox",
    chain_url: ChainUrlOpt = None,
    root: RootOpt = None,
    wallet_key: WalletKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Allow a model (the SHA-256 of its weights) under a name, or rename it."""
    digest, label = checked(lambda: (hex32(model_hash, "the model hash"), short_text(name, "the model name")))
    change_registry(
        Target(chain, chain_url, root, wallet_key),
        as_json,
        "add-model",
        {"hash": digest.hex(), "name": label},
        lambda admin, _: admin.set_model(digest, label),
    )


@registry_app.command("remove-model")
def registry_remove_model(
    model_hash: HashArg,
    chain: ChainOpt = "sandbox",
    chain_url: ChainUrlOpt = None,
    root: RootOpt = None,
    wallet_key: WalletKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop allowing a model."""
    digest = checked(lambda: hex32(model_hash, "the model hash"))
    change_registry(
        Target(chain, chain_url, root, wallet_key),
        as_json,
        "remove-model",
        {"hash": digest.hex()},
        lambda admin, _: admin.remove_model(digest),
    )


@registry_app.command("add-proxy")
def registry_add_proxy(
    public_key: PublicKeyArg,
    endpoint: Annotated[str, typer.Argument(help="Where clients and workers reach it, e.g. proxy.example:9300.")],
    chain: ChainOpt = "sandbox",
    chain_url: ChainUrlOpt = None,
    root: RootOpt = None,
    wallet_key: WalletKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a proxy (its public key and endpoint), or change its endpoint."""
    key, where = checked(lambda: (hex32(public_key, "the public key"), short_text(endpoint, "the endpoint")))
    change_registry(
        Target(chain, chain_url, root, wallet_key),
        as_json,
        "add-proxy",
        {"public_key": key.hex(), "endpoint": where},
        lambda admin, _: admin.set_proxy(key, where),
    )


@registry_app.command("remove-proxy")
def registry_remove_proxy(
    public_key: PublicKeyArg,
    chain: ChainOpt = "sandbox",
    chain_url: ChainUrlOpt = None,
    root: RootOpt = None,
    wallet_key: WalletKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove a proxy from the registry."""
    key = checked(lambda: hex32(public_key, "the public key"))
    change_registry(
        Target(chain, chain_url, root, wallet_key),
        as_json,
        "remove-proxy",
        {"public_key": key.hex()},
        lambda admin, _: admin.remove_proxy(key),
    )


@registry_app.command("set-params")
def registry_set_params(
    price_per_token: PriceOpt = None,
    prompt_mult: PromptMultOpt = None,
    cached_mult: CachedMultOpt = None,
    completion_mult: CompletionMultOpt = None,
    reasoning_mult: ReasoningMultOpt = None,
    commission_bps: CommissionOpt = None,
    min_stake: MinStakeOpt = None,
    close_delay: CloseDelayOpt = None,
    chain: ChainOpt = "sandbox",
    chain_url: ChainUrlOpt = None,
    root: RootOpt = None,
    wallet_key: WalletKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change the registry's price and channel parameters; those not given keep their value."""
    args = (price_per_token, prompt_mult, cached_mult, completion_mult, reasoning_mult, commission_bps)
    changes = checked(lambda: param_changes(*args, min_stake, close_delay))
    if not changes:
        fail("nothing to change: give at least one parameter")
    change_registry(
        Target(chain, chain_url, root, wallet_key),
        as_json,
        "set-params",
        {"changed": changes},
        lambda admin, before: admin.set_params(dataclasses.replace(before.params, **changes)),
    )
