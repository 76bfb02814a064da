"""Typed settings for every role: defaults, then a TOML file, then environment and flags.

One TOML file may hold a table per role (``[proxy]``, ``[worker]``, ``[client]``); each role
reads its own. Flags and ``COCOON_*`` environment variables (wired in ``cli``) override it.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

from cocoon.channel.connect import ConnectionOptions
from cocoon.files import FileTooLarge, read_bounded
from cocoon.protocol.framing import DEFAULT_MAX_FRAME

Seconds = Annotated[float, Meta(gt=0, le=86400)]
Address = Annotated[str, Meta(pattern=r"^(\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):\d{1,5}$")]  # host:port, [v6]:port
HexKey = Annotated[str, Meta(pattern=r"^[0-9a-fA-F]{64}$")]
LogLevel = Literal["debug", "info", "warning", "error"]
Nano = Annotated[int, Meta(ge=0, le=2**63 - 1)]  # an amount of nanoTON
TON = 10**9
MAX_CONFIG_BYTES = 1024 * 1024  # a node's config is a few KiB; more is a mistake (or /dev/zero)


class ConfigError(Exception):
    """Invalid configuration; the message is one line for the user."""


def data_dir() -> Path:
    """Where nodes keep keys and state: ``$COCOON_HOME`` or the XDG data directory."""
    if home := os.environ.get("COCOON_HOME"):
        return Path(home)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "cocoon"


class PeerPin(Struct, forbid_unknown_fields=True):
    """A peer to dial and, optionally, the public key it must present (on top of its evidence)."""

    address: Address
    public_key: HexKey | Literal[""] = ""


class _Common(Struct, forbid_unknown_fields=True, kw_only=True):
    key_file: str = ""
    status_file: str = ""
    log_level: LogLevel = "info"
    heartbeat_interval: Seconds = 5.0
    dead_after: Seconds = 15.0
    max_frame: Annotated[int, Meta(ge=64 * 1024, le=64 * 1024 * 1024)] = DEFAULT_MAX_FRAME
    connect_timeout: Seconds = 10.0  # dialing a proxy: TCP, TLS and the in-channel handshake
    policy: str = "development"  # attestation policy: "development" or a policy TOML file
    collateral_dir: str = ""  # DCAP collateral files (<fmspc>.json); default <data dir>/collateral
    pccs_url: str = ""  # fetch missing collateral from this PCCS ("intel" = Intel's PCS)
    # payments (docs/payments.md): no chain = no payments
    chain: Literal["", "sandbox", "ton"] = ""
    chain_url: str = ""  # sandbox: the local chain's URL; ton: mainnet, testnet or a global config file
    root: str = ""  # address of the registry (root contract)
    wallet_key: str = ""  # the wallet's Ed25519 key; default <data dir>/<role>-wallet.key
    payments_db: str = ""  # vouchers and counters (SQLite); default <data dir>/<role>-payments.db
    registry_poll: Seconds = 10.0  # seconds between checks of the registry's config version
    db_synchronous: Literal["normal", "full"] = "normal"  # full: survive power cuts too (slower)

    @property
    def payments(self) -> bool:
        return bool(self.chain)


class _Attested(_Common, kw_only=True):
    tee: Literal["sim", "tdx", "sev-snp"] = "sim"  # where this node's evidence comes from
    sev_vcek: str = ""  # SEV-SNP: the chip's VCEK (DER file)
    sev_chain: str = ""  # SEV-SNP: ASK and ARK (PEM file)
    extend_rtmr: bool = False  # TDX: measure the configuration hash into RTMR3 (once per boot)


class ProxySettings(_Attested, kw_only=True):
    listen: Address = "127.0.0.1:9300"
    worker_keys: list[HexKey] | Literal["*"] = "*"
    client_keys: list[HexKey] | Literal["*"] = "*"
    models: list[Annotated[str, Meta(min_length=1, max_length=256)]] = []
    queue_timeout: Annotated[float, Meta(ge=0, le=3600)] = 5.0
    max_queue: Annotated[int, Meta(ge=0, le=1_000_000)] = 256  # per model
    request_timeout: Seconds = 600.0  # a whole request, across retries
    first_token_timeout: Seconds = 120.0  # a worker's first chunk; past it, another worker is tried
    inter_token_timeout: Seconds = 60.0  # silence between chunks once streaming
    reputation_file: str = ""  # worker reputation, kept across restarts; default <data dir>/reputation.json
    client_streams: Annotated[int, Meta(ge=0, le=100_000)] = 64  # concurrent requests per client; 0 = any
    client_rate: Annotated[float, Meta(ge=0, le=1_000_000)] = 0.0  # requests per second per client; 0 = any
    max_tokens_cap: Annotated[int, Meta(ge=0, le=2**31)] = 0  # largest max_tokens accepted; 0 = any
    # price parameters published in the price book (the registry's, once the chain issue lands)
    price_nano_per_token: Annotated[int, Meta(ge=0, le=10**12)] = 1000
    prompt_multiplier: Annotated[float, Meta(ge=0, le=1000)] = 1.0
    cached_multiplier: Annotated[float, Meta(ge=0, le=1000)] = 0.5
    completion_multiplier: Annotated[float, Meta(ge=0, le=1000)] = 2.0
    reasoning_multiplier: Annotated[float, Meta(ge=0, le=1000)] = 2.0
    commission: Annotated[float, Meta(ge=0, le=1)] = 0.1
    # settlement (with a chain)
    redeem_threshold: Nano = TON  # redeem a client's vouchers once this much is unredeemed
    worker_deposit: Nano = TON  # funds put into each worker channel, topped up when half is owed
    settle_interval: Seconds = 5.0  # seconds between settlement rounds
    commit_interval: Seconds = 60.0  # seconds between on-chain commits of the state sequence number
    settle_on_exit: bool = False  # redeem everything and commit on shutdown


class WorkerSettings(_Attested, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] = "worker"
    proxies: list[PeerPin] = []
    model: Annotated[str, Meta(min_length=1, max_length=256)] = "SmolLM2-135M-Instruct"
    engine: Literal["llama_cpp", "openai_http", "benchmark"] = "llama_cpp"  # benchmark: synthetic, load tests only
    bench_tokens_per_second: Annotated[float, Meta(ge=0, le=1_000_000)] = 0.0  # benchmark engine; 0 = unpaced
    model_path: str = ""
    engine_url: str = ""
    engine_model: str = ""
    engine_api_key: str = ""
    model_hash: Annotated[str, Meta(pattern=r"^([0-9a-f]{64})?$")] = ""  # openai_http: SHA-256 of the weights
    capacity: Annotated[int, Meta(ge=1, le=4096)] = 2  # requests the engine runs at once
    # requests taken beyond ``capacity`` that wait in the worker for the engine: one that is
    # waiting here starts the moment a slot frees, instead of a round trip through the proxy later
    queue: Annotated[int, Meta(ge=0, le=4096)] = 1
    queue_timeout: Annotated[float, Meta(ge=0, le=3600)] = 5.0  # past it, a waiting request is refused (saturated)
    price_coefficient: Annotated[float, Meta(ge=0, le=1_000_000)] = 1.0
    threads: Annotated[int, Meta(ge=0, le=1024)] = 0
    n_ctx: Annotated[int, Meta(ge=256, le=1_048_576)] = 2048
    reconnect_min: Seconds = 0.5
    reconnect_max: Seconds = 10.0
    redeem_threshold: Nano = TON  # redeem the proxy's payout vouchers once this much is unredeemed
    settle_interval: Seconds = 5.0
    settle_on_exit: bool = False


class ClientSettings(_Common, kw_only=True):
    listen: Address = "127.0.0.1:8000"
    proxy: PeerPin | None = None
    proxies: list[PeerPin] = []  # more proxies: requests go to the healthiest, and fail over
    max_body_bytes: Annotated[int, Meta(ge=1024, le=64 * 1024 * 1024)] = 4 * 1024 * 1024
    request_timeout: Seconds = 600.0
    idle_timeout: Seconds = 120.0
    reconnect_max: Seconds = 5.0
    candidates: Annotated[int, Meta(ge=1, le=8)] = 3  # workers each request is sealed for (K)
    max_price: Annotated[float, Meta(ge=0, le=1_000_000)] = 0.0  # highest worker price coefficient; 0 = any
    routing: Literal["balanced", "cheapest", "fastest"] = "balanced"  # default routing preference
    deposit: Nano = 0  # with a chain: put this much into a proxy's channel when it has less left
    stake: Nano = 0  # of each deposit, lock this much as the stake; 0 = the registry's minimum


S = TypeVar("S", ProxySettings, WorkerSettings, ClientSettings)
CHANNEL_KEEPS = 10**7  # nanoTON a payment channel keeps of each deposit (contracts/README.md)


def load_settings(cls: type[S], role: str, path: Path | None, overrides: dict[str, Any]) -> S:
    """Defaults ← ``[role]`` table of the TOML file ← overrides that are not None."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            document = tomllib.loads(read_bounded(path, MAX_CONFIG_BYTES).decode())
        except FileTooLarge as exc:
            raise ConfigError(f"config {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config {path} is not UTF-8 text (byte {exc.start})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc
        table = document.get(role, {})
        if not isinstance(table, dict):
            raise ConfigError(f"config {path}: [{role}] must be a table")
        values.update(table)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = msgspec.convert(values, cls)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid {role} setting: {exc}") from exc
    if not settings.key_file:
        settings.key_file = str(data_dir() / f"{role}.key")
    if not settings.wallet_key:
        settings.wallet_key = str(data_dir() / f"{role}-wallet.key")
    if not settings.payments_db:
        settings.payments_db = str(data_dir() / f"{role}-payments.db")
    if settings.chain and not settings.root:
        raise ConfigError(f"{role}: a chain needs the registry's address (root)")
    if settings.dead_after <= settings.heartbeat_interval:
        # a peer would be declared dead before its next heartbeat was due
        raise ConfigError(f"invalid {role} setting: dead_after must be longer than heartbeat_interval")
    if isinstance(settings, WorkerSettings) and settings.reconnect_min > settings.reconnect_max:
        raise ConfigError(f"invalid {role} setting: reconnect_min must not be longer than reconnect_max")
    # a channel keeps 0.01 TON of every deposit, and refuses one that brings it no more
    if isinstance(settings, ProxySettings) and settings.worker_deposit < 2 * CHANNEL_KEEPS:
        raise ConfigError(f"invalid {role} setting: worker_deposit must be at least {2 * CHANNEL_KEEPS} (0.02 TON)")
    if isinstance(settings, ClientSettings) and settings.deposit and settings.deposit <= CHANNEL_KEEPS + settings.stake:
        raise ConfigError(
            f"invalid {role} setting: deposit must be above {CHANNEL_KEEPS} (0.01 TON, which the channel keeps) "
            "plus the stake, or 0 for no deposits"
        )
    return settings


def connection_options(settings: ProxySettings | WorkerSettings | ClientSettings) -> ConnectionOptions:
    return {
        "heartbeat_interval": settings.heartbeat_interval,
        "dead_after": settings.dead_after,
        "max_frame": settings.max_frame,
    }


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ConfigError(f"port of {address!r} is out of range")
    return host.strip("[]"), number
