"""The ``cocoon`` command.

Every option can also come from the role's table in the TOML config file (``--config``) and
from a ``COCOON_*`` environment variable; flags win over the environment, which wins over the
file. Errors end with one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from cocoon import __version__
from cocoon.cli_bench import bench
from cocoon.cli_chain import chain_app, registry_app, wallet_app
from cocoon.cli_tools import attest_app, fail, market
from cocoon.config import (
    ClientSettings,
    ConfigError,
    ProxySettings,
    WorkerSettings,
    load_settings,
)
from cocoon.keys import KeyFileError

app = typer.Typer(
    help="Cocoon: confidential AI inference. Run a client, a proxy or a worker, or a whole local network with `up`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # every option also reads COCOON_<COMMAND>_<OPTION>, e.g. COCOON_WORKER_CAPACITY=4
    context_settings={"auto_envvar_prefix": "COCOON", "show_default": True},
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="COCOON_CONFIG", help="TOML file; this command reads its own table of it."),
]
KeyFileOpt = Annotated[
    str | None,
    typer.Option(help="Ed25519 identity key (PEM, created with mode 0600 if missing). Default: the data dir."),
]
StatusOpt = Annotated[str | None, typer.Option(help="Write the node's state as JSON to this file (used by `up`).")]
LogOpt = Annotated[str | None, typer.Option(help="Log level: debug, info, warning or error.")]
HeartbeatOpt = Annotated[float | None, typer.Option(help="Seconds between heartbeats on each connection.")]
DeadOpt = Annotated[float | None, typer.Option(help="Seconds of silence after which a peer counts as dead.")]
ConnectOpt = Annotated[float | None, typer.Option(help="Seconds to dial a peer: TCP, TLS and the handshake.")]
PolicyOpt = Annotated[
    str | None,
    typer.Option(help="Attestation policy for peers: 'development' or a policy TOML file (docs/attestation.md)."),
]
CollateralOpt = Annotated[str | None, typer.Option(help="Directory of DCAP collateral files (<fmspc>.json).")]
PccsOpt = Annotated[
    str | None, typer.Option(help="Fetch missing DCAP collateral from this PCCS URL ('intel' = Intel PCS).")
]
TeeOpt = Annotated[str | None, typer.Option(help="Where this node's evidence comes from: sim, tdx or sev-snp.")]
VcekOpt = Annotated[str | None, typer.Option(help="SEV-SNP: file with this chip's VCEK certificate (DER).")]
ChainOpt = Annotated[str | None, typer.Option(help="SEV-SNP: file with the ASK and ARK certificates (PEM).")]
ExtendOpt = Annotated[
    bool | None,
    typer.Option("--extend-rtmr/--no-extend-rtmr", help="TDX: measure the config hash into RTMR3 once per boot."),
]


ChainKindOpt = Annotated[
    str | None, typer.Option("--chain", help="Pay and be paid on this chain: sandbox or ton. Default: no payments.")
]
ChainUrlOpt = Annotated[
    str | None, typer.Option(help="sandbox: the local chain's URL; ton: mainnet, testnet or a global config file.")
]
RootOpt = Annotated[str | None, typer.Option(help="Address of the registry (root contract).")]
WalletKeyOpt = Annotated[
    str | None, typer.Option(help="The wallet's key (created with mode 0600). Default: the data dir.")
]
PaymentsDbOpt = Annotated[str | None, typer.Option(help="SQLite file of vouchers and counters. Default: the data dir.")]


def _pin(text: str) -> dict[str, str]:
    """``HOST:PORT=KEY`` as a ``PeerPin`` table, validated with the rest of the settings."""
    address, sep, key = text.rpartition("=")
    if not sep:
        raise ConfigError(f"{text!r} should be HOST:PORT=PUBLIC_KEY")
    return {"address": address, "public_key": key}


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(f"cocoon {__version__}")
        raise typer.Exit()


@app.command()
def proxy(
    config: ConfigOpt = None,
    listen: Annotated[str | None, typer.Option(help="HOST:PORT to accept workers and clients on.")] = None,
    worker_key: Annotated[
        list[str] | None,
        typer.Option(help="Public key (hex) of a worker allowed to connect; repeat it. '*' accepts any worker."),
    ] = None,
    client_key: Annotated[
        list[str] | None,
        typer.Option(help="Public key (hex) of a client allowed to connect; repeat it. Default '*': any client."),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(help="A model this proxy serves even while no worker is up (503 rather than 404); repeat it."),
    ] = None,
    queue_timeout: Annotated[
        float | None, typer.Option(help="Seconds a request waits for a free worker slot before 429.")
    ] = None,
    max_queue: Annotated[
        int | None, typer.Option(help="Most requests waiting for a slot at once; more get 429.")
    ] = None,
    request_timeout: Annotated[
        float | None, typer.Option(help="Most seconds one request may take, retries included, before 504.")
    ] = None,
    first_token_timeout: Annotated[
        float | None, typer.Option(help="Seconds to wait for a worker's first chunk before trying another worker.")
    ] = None,
    inter_token_timeout: Annotated[
        float | None, typer.Option(help="Seconds of silence between chunks after which a stream fails (504).")
    ] = None,
    reputation_file: Annotated[
        str | None, typer.Option(help="Where worker reputation is kept across restarts. Default: the data dir.")
    ] = None,
    client_streams: Annotated[
        int | None, typer.Option(help="Concurrent requests one client may have; 0 = any.")
    ] = None,
    client_rate: Annotated[float | None, typer.Option(help="Requests per second one client may send; 0 = any.")] = None,
    max_tokens_cap: Annotated[
        int | None, typer.Option(help="Largest max_tokens a request may ask for; 0 = any.")
    ] = None,
    key_file: KeyFileOpt = None,
    status_file: StatusOpt = None,
    log_level: LogOpt = None,
    heartbeat_interval: HeartbeatOpt = None,
    dead_after: DeadOpt = None,
    connect_timeout: ConnectOpt = None,
    tee: TeeOpt = None,
    policy: PolicyOpt = None,
    collateral_dir: CollateralOpt = None,
    pccs_url: PccsOpt = None,
    chain: ChainKindOpt = None,
    chain_url: ChainUrlOpt = None,
    root: RootOpt = None,
    wallet_key: WalletKeyOpt = None,
    payments_db: PaymentsDbOpt = None,
    sev_vcek: VcekOpt = None,
    sev_chain: ChainOpt = None,
    extend_rtmr: ExtendOpt = None,
) -> None:
    """Route requests from clients to workers and relay the answers."""
    from cocoon.run import run_proxy, setup_logging

    def keys(values: list[str] | None) -> list[str] | str | None:
        if not values:
            return None
        return "*" if values == ["*"] else values

    try:
        settings = load_settings(
            ProxySettings,
            "proxy",
            config,
            dict(
                listen=listen,
                worker_keys=keys(worker_key),
                client_keys=keys(client_key),
                models=model or None,
                queue_timeout=queue_timeout,
                max_queue=max_queue,
                request_timeout=request_timeout,
                first_token_timeout=first_token_timeout,
                inter_token_timeout=inter_token_timeout,
                reputation_file=reputation_file,
                client_streams=client_streams,
                client_rate=client_rate,
                max_tokens_cap=max_tokens_cap,
                key_file=key_file,
                status_file=status_file,
                log_level=log_level,
                heartbeat_interval=heartbeat_interval,
                dead_after=dead_after,
                connect_timeout=connect_timeout,
                tee=tee,
                policy=policy,
                collateral_dir=collateral_dir,
                pccs_url=pccs_url,
                chain=chain,
                chain_url=chain_url,
                root=root,
                wallet_key=wallet_key,
                payments_db=payments_db,
                sev_vcek=sev_vcek,
                sev_chain=sev_chain,
                extend_rtmr=extend_rtmr,
            ),
        )
        setup_logging(settings.log_level, "proxy")
        run_proxy(settings)
    except (ConfigError, KeyFileError, OSError) as exc:
        fail(str(exc))


@app.command()
def worker(
    config: ConfigOpt = None,
    proxy: Annotated[
        list[str] | None,
        typer.Option("--proxy", help="Proxy to dial, as HOST:PORT=PUBLIC_KEY (hex); repeat it for several proxies."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Name of this worker in logs and status.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name announced to proxies.")] = None,
    engine: Annotated[
        str | None, typer.Option(help="Engine: llama_cpp (embedded) or openai_http (vLLM, SGLang, llama.cpp server).")
    ] = None,
    model_path: Annotated[
        str | None, typer.Option(help="GGUF file for llama_cpp. Default: the embedded SmolLM2-135M-Instruct.")
    ] = None,
    engine_url: Annotated[str | None, typer.Option(help="Base URL of the openai_http engine server.")] = None,
    engine_model: Annotated[
        str | None, typer.Option(help="Model name to ask the openai_http engine for. Default: its first model.")
    ] = None,
    engine_api_key: Annotated[str | None, typer.Option(help="Bearer key for the openai_http engine.")] = None,
    capacity: Annotated[
        int | None, typer.Option(help="Most requests served at once (llama_cpp loads one model instance per slot).")
    ] = None,
    queue: Annotated[
        int | None,
        typer.Option(help="Requests beyond --capacity that wait in the worker for a free slot (announced with it)."),
    ] = None,
    queue_timeout: Annotated[
        float | None, typer.Option(help="Seconds a request may wait for a slot before it is refused as saturated.")
    ] = None,
    price_coefficient: Annotated[
        float | None, typer.Option(help="Multiplier on the network's per-token price that this worker asks.")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads per llama_cpp slot; 0 = half the cores.")] = None,
    n_ctx: Annotated[
        int | None, typer.Option(help="Context window in tokens for llama_cpp (and the answer limit announced).")
    ] = None,
    reconnect_min: Annotated[
        float | None, typer.Option(help="First delay in seconds before redialing a lost proxy.")
    ] = None,
    reconnect_max: Annotated[
        float | None, typer.Option(help="Longest delay in seconds between redials (exponential backoff).")
    ] = None,
    key_file: KeyFileOpt = None,
    status_file: StatusOpt = None,
    log_level: LogOpt = None,
    heartbeat_interval: HeartbeatOpt = None,
    dead_after: DeadOpt = None,
    connect_timeout: ConnectOpt = None,
    tee: TeeOpt = None,
    policy: PolicyOpt = None,
    collateral_dir: CollateralOpt = None,
    pccs_url: PccsOpt = None,
    chain: ChainKindOpt = None,
    chain_url: ChainUrlOpt = None,
    root: RootOpt = None,
    wallet_key: WalletKeyOpt = None,
    payments_db: PaymentsDbOpt = None,
    sev_vcek: VcekOpt = None,
    sev_chain: ChainOpt = None,
    extend_rtmr: ExtendOpt = None,
    model_hash: Annotated[
        str | None, typer.Option(help="openai_http: SHA-256 (hex) of the served weights, for the claims.")
    ] = None,
) -> None:
    """Serve one model to one or more proxies, dialing out to each of them."""
    from cocoon.run import run_worker, setup_logging

    try:
        settings = load_settings(
            WorkerSettings,
            "worker",
            config,
            dict(
                proxies=[_pin(p) for p in proxy] if proxy else None,
                name=name,
                model=model,
                engine=engine,
                model_path=model_path,
                engine_url=engine_url,
                engine_model=engine_model,
                engine_api_key=engine_api_key,
                capacity=capacity,
                queue=queue,
                queue_timeout=queue_timeout,
                price_coefficient=price_coefficient,
                threads=threads,
                n_ctx=n_ctx,
                reconnect_min=reconnect_min,
                reconnect_max=reconnect_max,
                key_file=key_file,
                status_file=status_file,
                log_level=log_level,
                heartbeat_interval=heartbeat_interval,
                dead_after=dead_after,
                connect_timeout=connect_timeout,
                tee=tee,
                policy=policy,
                collateral_dir=collateral_dir,
                pccs_url=pccs_url,
                chain=chain,
                chain_url=chain_url,
                root=root,
                wallet_key=wallet_key,
                payments_db=payments_db,
                sev_vcek=sev_vcek,
                sev_chain=sev_chain,
                extend_rtmr=extend_rtmr,
                model_hash=model_hash,
            ),
        )
        setup_logging(settings.log_level, settings.name)
        run_worker(settings)
    except (ConfigError, KeyFileError, OSError) as exc:
        fail(str(exc))
    except Exception as exc:
        from cocoon.engine.base import EngineError

        if isinstance(exc, EngineError):
            fail(f"engine failed: {exc}")
        raise


@app.command()
def client(
    config: ConfigOpt = None,
    proxy: Annotated[
        list[str] | None,
        typer.Option(
            "--proxy", help="Proxy to use, as HOST:PORT=PUBLIC_KEY (hex); repeat it to fail over between proxies."
        ),
    ] = None,
    listen: Annotated[
        str | None,
        typer.Option(help="HOST:PORT of the OpenAI API (keep it on loopback)."),
    ] = None,
    max_body_bytes: Annotated[
        int | None, typer.Option(help="Largest request body accepted; larger ones get 413.")
    ] = None,
    request_timeout: Annotated[
        float | None, typer.Option(help="Most seconds one request may take in all before 504.")
    ] = None,
    idle_timeout: Annotated[
        float | None, typer.Option(help="Seconds without any answer from the network before 504.")
    ] = None,
    reconnect_max: Annotated[
        float | None, typer.Option(help="Longest delay in seconds between redials of the proxy.")
    ] = None,
    candidates: Annotated[
        int | None, typer.Option(help="Attested workers each request is sealed for, so the proxy can fail over (K).")
    ] = None,
    max_price: Annotated[
        float | None, typer.Option(help="Highest worker price coefficient to be routed to; 0 = any.")
    ] = None,
    routing: Annotated[
        str | None, typer.Option(help="Default routing preference: balanced, cheapest or fastest.")
    ] = None,
    key_file: KeyFileOpt = None,
    status_file: StatusOpt = None,
    log_level: LogOpt = None,
    heartbeat_interval: HeartbeatOpt = None,
    dead_after: DeadOpt = None,
    connect_timeout: ConnectOpt = None,
    policy: PolicyOpt = None,
    collateral_dir: CollateralOpt = None,
    pccs_url: PccsOpt = None,
    chain: ChainKindOpt = None,
    chain_url: ChainUrlOpt = None,
    root: RootOpt = None,
    wallet_key: WalletKeyOpt = None,
    payments_db: PaymentsDbOpt = None,
) -> None:
    """Serve the OpenAI HTTP API on loopback and forward requests to a proxy."""
    from cocoon.run import run_client, setup_logging

    try:
        settings = load_settings(
            ClientSettings,
            "client",
            config,
            dict(
                proxy=_pin(proxy[0]) if proxy else None,
                proxies=[_pin(p) for p in proxy[1:]] if proxy else None,  # flags replace the file's list
                listen=listen,
                max_body_bytes=max_body_bytes,
                request_timeout=request_timeout,
                idle_timeout=idle_timeout,
                reconnect_max=reconnect_max,
                candidates=candidates,
                max_price=max_price,
                routing=routing,
                key_file=key_file,
                status_file=status_file,
                log_level=log_level,
                heartbeat_interval=heartbeat_interval,
                dead_after=dead_after,
                connect_timeout=connect_timeout,
                policy=policy,
                collateral_dir=collateral_dir,
                pccs_url=pccs_url,
                chain=chain,
                chain_url=chain_url,
                root=root,
                wallet_key=wallet_key,
                payments_db=payments_db,
            ),
        )
        setup_logging(settings.log_level, "client")
        run_client(settings)
    except (ConfigError, KeyFileError, OSError) as exc:
        fail(str(exc))


@app.command()
def up(
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port of the client's OpenAI API; 0 picks a free one.")
    ] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=16, help="Number of workers to start.")] = 2,
    capacity: Annotated[int, typer.Option(min=1, max=64, help="Concurrent requests per worker.")] = 2,
    state_dir: Annotated[
        Path | None, typer.Option(help="Where keys, configs and logs of this network go. Default: <data dir>/up.")
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Stop after the first answer instead of serving until Ctrl-C.")
    ] = False,
    prompt: Annotated[
        str, typer.Option(help="The first chat request sent once the network is up.")
    ] = "Say hello to a new Cocoon user in one short sentence.",
    chain: Annotated[
        bool, typer.Option("--chain/--no-chain", help="Run the local chain and pay for every answer.")
    ] = True,
) -> None:
    """Start a whole local network (proxy, workers, client) on loopback with the embedded model,
    send it a first chat request, and serve until Ctrl-C."""
    from cocoon.up import UpError, run_up

    try:
        sys.exit(
            run_up(
                port=port,
                workers=workers,
                capacity=capacity,
                state_dir=state_dir,
                once=once,
                prompt=prompt,
                chain=chain,
            )
        )
    except (UpError, KeyFileError, OSError) as exc:  # a state dir that is a file, keys with loose modes
        fail(str(exc))


app.add_typer(attest_app, name="attest")
app.add_typer(chain_app, name="chain")
app.add_typer(wallet_app, name="wallet")
app.add_typer(registry_app, name="registry")
app.command()(market)
app.command()(bench)


@app.command("key")
def key_command(
    key_file: Annotated[Path, typer.Argument(help="Key file to show (created with mode 0600 if missing).")],
) -> None:
    """Print the public key (hex) of an identity key file, for pinning it in other nodes' configs."""
    from cocoon.keys import load_or_create_identity, public_bytes

    try:
        typer.echo(public_bytes(load_or_create_identity(key_file)).hex())
    except (KeyFileError, OSError) as exc:
        fail(str(exc))


SETTINGS_OF: dict[str, type[ProxySettings] | type[WorkerSettings] | type[ClientSettings]] = {
    "proxy": ProxySettings,
    "worker": WorkerSettings,
    "client": ClientSettings,
}
OPTION_FIELD = {"worker_key": "worker_keys", "client_key": "client_keys", "proxy": "proxies"}


def build_command() -> Any:
    """The click command, with each role option's default shown from its settings class (the
    options default to None so that an unset flag does not hide the config file)."""
    command: Any = typer.main.get_command(app)
    for name, settings in SETTINGS_OF.items():
        defaults = {f.name: f.default for f in msgspec.structs.fields(settings)}
        for param in command.commands[name].params:
            field = OPTION_FIELD.get(param.name or "", param.name or "")
            if name == "proxy" and field == "model":
                field = "models"
            default = defaults.get(field, msgspec.NODEFAULT)
            if hasattr(param, "show_default") and default not in (msgspec.NODEFAULT, "", [], None):
                param.show_default = json.dumps(default) if isinstance(default, list | dict) else str(default)
    return command


def main() -> None:
    build_command()()
