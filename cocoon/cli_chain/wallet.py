"""``cocoon wallet``: the node's TON wallet and its payment channels (fund, withdraw, close, redeem)."""

from __future__ import annotations

import contextlib
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
    checked,
    coins,
    detect_channel,
    execute,
    existing_store,
    hex32,
    load_registry,
    load_wallet,
    offline_address,
    opened,
    parse_ton,
    payments_db_file,
    phase,
    raw,
    ready_to_send,
    root_of,
    settled,
    show,
    ton_text,
    wallet_key_file,
    when,
)
from cocoon.cli_tools import fail
from cocoon.config import TON, data_dir

if TYPE_CHECKING:
    from pytoniq_core import Address

    from cocoon.chain.ledger import Ledger
    from cocoon.chain.wallet import Wallet
    from cocoon.payments.store import ChannelRow, PaymentStore


wallet_app = typer.Typer(
    help="The node's TON wallet and its payment channels: fund, withdraw, close, redeem.", no_args_is_help=True
)

StakeOpt = Annotated[
    str | None, typer.Option("--stake", help="Of the amount, lock this much TON as the client channel's stake.")
]
ChannelOpt = Annotated[str, typer.Option("--channel", help="Address of the payment channel contract.")]

OP_FEE = TON // 100  # a channel keeps this much of every deposit (contracts/README.md, "Fees")
PAYEE_ROLES = ("proxy_in", "worker")


@wallet_app.command("new")
def wallet_new(wallet_key: WalletKeyOpt = None, as_json: JsonOpt = False) -> None:
    """Create the wallet's key file (mode 0600) and print the wallet's address; never overwrites a key."""
    path = wallet_key_file(wallet_key)
    report = checked(lambda: address_report(path, create=True))
    report.lines[0] = f"created {path}; " + report.lines[0]
    show(report, as_json)


@wallet_app.command("address")
def wallet_address(wallet_key: WalletKeyOpt = None, as_json: JsonOpt = False) -> None:
    """Print the wallet's address, raw and user-friendly (no chain access needed)."""
    path = wallet_key_file(wallet_key)
    show(checked(lambda: address_report(path, create=False)), as_json)


def address_report(path: Path, *, create: bool) -> Report:
    """The wallet's address from its key file, which ``create`` makes (never over an existing key)
    and which is otherwise read."""
    from cocoon.keys import KeyFileError, load_identity, load_or_create_identity, public_bytes

    if create and path.exists():
        raise Refused(f"{path} already exists: a wallet key is never overwritten")
    if not create and not path.exists():
        raise Refused(f"no wallet key at {path}: create one with `cocoon wallet new`")
    try:
        key = load_or_create_identity(path) if create else load_identity(path)
    except (KeyFileError, OSError) as exc:
        raise Refused(str(exc)) from exc
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
