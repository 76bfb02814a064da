"""Async entry points of the three roles: build each from its settings and run it until a
signal (SIGINT or SIGTERM) asks it to stop."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import msgspec
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.attest.errors import AttestationError
from cocoon.attest.model_hash import model_hash
from cocoon.attest.node import NodeAttestation, build_attestation
from cocoon.attest.policy import PolicyError
from cocoon.attest.verifier import EvidenceVerifier
from cocoon.chain.access import open_ledger, open_wallet, parse_address
from cocoon.chain.errors import ChainError
from cocoon.chain.registry import RegistryState, RegistryWatcher, policy_from_registry, read_registry
from cocoon.channel.attested import AttestedVerifier
from cocoon.client.api import build_app
from cocoon.client.link import ProxyLink, ProxyPool
from cocoon.client.payments import ClientPayments
from cocoon.client.service import ClientService
from cocoon.config import (
    ClientSettings,
    ConfigError,
    PeerPin,
    ProxySettings,
    WorkerSettings,
    connection_options,
    data_dir,
    split_address,
)
from cocoon.engine.base import Engine
from cocoon.keys import load_or_create_identity, parse_public_key
from cocoon.payments.store import PaymentStore
from cocoon.proxy.service import Proxy
from cocoon.status import write_status
from cocoon.worker.service import Worker

log = logging.getLogger("cocoon")


def setup_logging(level: str, role: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


async def _until_signalled(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` until it ends or SIGINT / SIGTERM arrives, then cancel it cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(main)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


SECRET_SETTINGS = frozenset({"engine_api_key"})


def config_hash(settings: ProxySettings | WorkerSettings | ClientSettings) -> bytes:
    """SHA-256 of the node's settings (secrets left out), bound into its claims."""
    values = {k: v for k, v in msgspec.to_builtins(settings).items() if k not in SECRET_SETTINGS}
    return hashlib.sha256(msgspec.json.encode(values, order="sorted")).digest()


def attestation_of(
    settings: ProxySettings | WorkerSettings | ClientSettings, role: str, model_hash: bytes = b""
) -> NodeAttestation:
    try:
        return build_attestation(
            role=role,
            tee=getattr(settings, "tee", "none"),
            policy=settings.policy,
            data_dir=data_dir(),
            collateral_dir=settings.collateral_dir,
            pccs_url=settings.pccs_url,
            sev_vcek=getattr(settings, "sev_vcek", ""),
            sev_chain=getattr(settings, "sev_chain", ""),
            model_hash=model_hash,
            config_hash=config_hash(settings),
            extend_rtmr=getattr(settings, "extend_rtmr", False),
        )
    except (PolicyError, AttestationError) as exc:
        raise ConfigError(str(exc)) from exc


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run a node on uvloop: each answer chunk wakes every process on its way, and uvloop's
    event loop and TLS cost about a quarter less CPU per wake-up than asyncio's own
    (docs/benchmarks.md). asyncio's loop where uvloop is not available."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def run_proxy(settings: ProxySettings) -> None:
    key = load_or_create_identity(Path(settings.key_file))
    attestation = attestation_of(settings, "proxy")
    _run(_until_signalled(Proxy(settings, key, attestation).run()))


MAX_URL = 2048


def check_engine_url(url: str) -> None:
    """``ConfigError`` unless ``url`` is an http(s) URL with a host (its text is not quoted: it
    may hold a password)."""
    try:
        parsed = httpx.URL(url) if len(url) <= MAX_URL else None
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"engine_url must be an http:// or https:// URL with a host, of at most {MAX_URL} characters")


def make_engine(settings: WorkerSettings) -> Engine:
    if settings.engine == "benchmark":
        from cocoon.engine.synthetic import BenchmarkEngine

        log.warning("SYNTHETIC benchmark engine: answers are filler words, for load tests only")
        return BenchmarkEngine(tokens_per_second=settings.bench_tokens_per_second, max_tokens=settings.n_ctx)
    if settings.engine == "openai_http":
        from cocoon.engine.openai_http import OpenAIHttpEngine

        if not settings.engine_url:
            raise ConfigError("engine openai_http needs engine_url (the server's base URL)")
        check_engine_url(settings.engine_url)
        return OpenAIHttpEngine(
            settings.engine_url,
            model=settings.engine_model or None,
            api_key=settings.engine_api_key or None,
            max_tokens=settings.n_ctx,
        )
    from cocoon.engine.llama_cpp import LlamaCppEngine

    threads = settings.threads or max(1, (os.cpu_count() or 2) // 2)
    return LlamaCppEngine(
        Path(settings.model_path) if settings.model_path else None,
        slots=settings.capacity,
        n_ctx=settings.n_ctx,
        threads=threads,
    )


def worker_model_hash(settings: WorkerSettings) -> bytes:
    """SHA-256 of the served weights (cached), or the configured hash for remote engines."""
    if settings.engine == "benchmark":
        return hashlib.sha256(b"cocoon benchmark engine").digest()
    if settings.engine == "openai_http":
        if not settings.model_hash:
            log.warning("no model_hash configured for the openai_http engine: policies that list models reject it")
        return bytes.fromhex(settings.model_hash)
    from cocoon.engine.llama_cpp import embedded_model_path

    path = Path(settings.model_path) if settings.model_path else embedded_model_path()
    return model_hash(path, cache=data_dir() / "model-hashes.json")


def run_worker(settings: WorkerSettings) -> None:
    key = load_or_create_identity(Path(settings.key_file))
    engine = make_engine(settings)
    attestation = attestation_of(settings, "worker", worker_model_hash(settings))

    async def main() -> None:
        await Worker(settings, engine, key, attestation).run()

    _run(_until_signalled(main()))


async def client_payments(
    settings: ClientSettings, key: Ed25519PrivateKey, verifier: EvidenceVerifier
) -> tuple[ClientPayments, RegistryWatcher]:
    """The client's chain side: the registry (policy, prices, proxies), wallet and books."""
    try:
        ledger = open_ledger(settings.chain, settings.chain_url)
        root = parse_address(settings.root)
        registry = await read_registry(ledger, root)
    except ChainError as exc:
        raise ConfigError(f"cannot read the registry: {exc}") from exc
    base = verifier.policy
    verifier.set_policy(policy_from_registry(base, registry))
    payments = ClientPayments(
        ledger=ledger,
        wallet=open_wallet(ledger, Path(settings.wallet_key)),
        root=root,
        key=key,
        store=PaymentStore(Path(settings.payments_db), settings.db_synchronous),
        registry=registry,
        deposit=settings.deposit,
        stake=settings.stake,
    )

    def follow(state: RegistryState) -> None:
        verifier.set_policy(policy_from_registry(base, state))
        payments.update_registry(state)

    watcher = RegistryWatcher(ledger, root, follow, settings.registry_poll)
    watcher.state = registry
    return payments, watcher


def registry_pins(registry: RegistryState) -> list[PeerPin]:
    """The proxies the registry lists, each pinned to its key."""
    pins = []
    for public_key, endpoint in sorted(registry.proxies.items()):
        try:
            split_address(endpoint)
        except (ValueError, ConfigError):
            log.warning("the registry lists proxy %s… at %r, which is not HOST:PORT", public_key.hex()[:16], endpoint)
            continue
        pins.append(PeerPin(address=endpoint, public_key=public_key.hex()))
    return pins


def run_client(settings: ClientSettings) -> None:
    pins = ([settings.proxy] if settings.proxy else []) + settings.proxies
    if not pins and not settings.payments:
        raise ConfigError("the client needs a proxy: --proxy HOST:PORT=PUBLIC_KEY or [client.proxy] in the config")
    key = load_or_create_identity(Path(settings.key_file))
    evidence_verifier = attestation_of(settings, "client").verifier
    host, port = split_address(settings.listen)

    def link_to(pin: PeerPin) -> ProxyLink:
        proxy_host, proxy_port = split_address(pin.address)
        pinned = {"proxy": [parse_public_key(pin.public_key)]} if pin.public_key else {}
        return ProxyLink(
            proxy_host,
            proxy_port,
            key=key,
            verifier=AttestedVerifier(evidence_verifier, accept={"proxy"}, pinned=pinned),
            reconnect_max=settings.reconnect_max,
            connection_options=connection_options(settings),
            connect_timeout=settings.connect_timeout,
        )

    async def main() -> None:
        payments: ClientPayments | None = None
        background: list[asyncio.Task[None]] = []
        proxies = pins
        if settings.payments:
            payments, watcher = await client_payments(settings, key, evidence_verifier)
            background.append(asyncio.create_task(watcher.run()))
            if not proxies:
                assert watcher.state is not None
                proxies = registry_pins(watcher.state)
                if not proxies:
                    raise ConfigError("the registry lists no proxy and none is configured")
        links = [link_to(pin) for pin in proxies]
        if payments is not None:
            for link in links:
                link.on_connect = payments.attach
        pool = ProxyPool(links)
        pool.start()
        service = ClientService(
            pool,
            idle_timeout=settings.idle_timeout,
            request_timeout=settings.request_timeout,
            verifier=evidence_verifier,
            candidates=settings.candidates,
            max_price_milli=round(settings.max_price * 1000),
            routing=settings.routing,
            payments=payments,
        )
        app = build_app(service, max_body_bytes=settings.max_body_bytes)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
            lifespan="off",
            proxy_headers=False,  # nothing here uses the caller's address: no X-Forwarded-* layer per request
            # httptools (a dependency) rather than h11: about a fifth less of the client's CPU
            # per streamed token (docs/benchmarks.md); uvicorn falls back to h11 without it
            http="auto",
        )
        server = uvicorn.Server(config)
        try:  # bound here: uvicorn ends the process (SystemExit, a traceback) when it cannot bind
            listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        except OSError as exc:
            raise ConfigError(f"the client cannot listen on {settings.listen}: {exc.strerror or exc}") from exc
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.02)
        if serving.done():
            await serving
            raise ConfigError(f"the client could not listen on {settings.listen}")
        bound = server.servers[0].sockets[0].getsockname()
        url = f"http://{bound[0]}:{bound[1]}/v1"
        log.info("OpenAI API on %s", url)
        write_status(settings.status_file, "ready", url=url)
        try:
            await serving
        finally:
            server.should_exit = True
            for task in background:
                task.cancel()
            await pool.aclose()
            if payments is not None:
                await payments.ledger.aclose()
                payments.store.close()

    _run(_until_signalled(main()))
