"""``cocoon registry``: deploy the registry (root contract), show it, and change it as its owner."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cocoon.cli_chain.common import (
    MAX_COINS,
    ChainOpt,
    ChainUrlOpt,
    JsonOpt,
    Refused,
    Report,
    RootOpt,
    Target,
    WalletKeyOpt,
    address_doc,
    checked,
    execute,
    fixed_point,
    hex32,
    load_registry,
    load_wallet,
    opened,
    parse_ton,
    raw,
    ready_to_send,
    registry_lines,
    root_of,
    settled,
    short_text,
)
from cocoon.cli_tools import fail

if TYPE_CHECKING:
    from cocoon.chain.registry import RegistryAdmin, RegistryState


registry_app = typer.Typer(
    help="The registry (root contract): deploy it, show it, and change it as its owner.", no_args_is_help=True
)

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

MAX_UINT32 = 2**32 - 1
MAX_CLOSE_DELAY = 30 * 86400
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
