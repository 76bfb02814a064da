"""``cocoon chain``: run the local chain (sandbox), show what a chain holds for Cocoon, use its faucet."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cocoon.cli_chain.common import (
    CHANNEL_KIND,
    AmountOpt,
    ChainOpt,
    ChainUrlOpt,
    JsonOpt,
    PaymentsDbOpt,
    Refused,
    Report,
    RootOpt,
    Target,
    WalletKeyOpt,
    address_arg,
    address_doc,
    chain_now,
    channel_address,
    channel_arg,
    channel_doc,
    channel_line,
    channel_state,
    coins,
    detect_channel,
    execute,
    existing_store,
    load_registry,
    load_wallet,
    opened,
    parse_ton,
    payments_db_file,
    raw,
    registry_lines,
    root_of,
    ton_text,
    when,
)
from cocoon.cli_tools import fail

if TYPE_CHECKING:
    from pytoniq_core import Address

    from cocoon.payments.store import ChannelRow, PaymentStore


chain_app = typer.Typer(help="The local chain (sandbox) and what any chain holds for Cocoon.", no_args_is_help=True)


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


def row_doc(row: ChannelRow) -> dict[str, Any]:
    voucher = None
    if row.seqno:
        voucher = {"seqno": row.seqno, **coins("amount", row.amount), "expiry": row.expiry}
    return {"role": row.role, "peer_key": row.peer_key.hex(), **coins("total", row.total), "voucher": voucher}


def all_rows(store: PaymentStore) -> list[ChannelRow]:
    return [row for role in CHANNEL_KIND for row in store.channels(role)]


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
