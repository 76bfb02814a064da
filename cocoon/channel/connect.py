"""Opening a hop: TLS 1.3, then the in-channel handshake, on both sides."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Sequence
from typing import TypedDict

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon import __version__
from cocoon.channel.handshake import check_hello, make_hello
from cocoon.channel.peer import READ_SIZE, Peer
from cocoon.channel.tls import certificate_evidence, certificate_public_key, client_context
from cocoon.channel.verify import PeerIdentity, PeerRejected, PeerVerifier
from cocoon.protocol.connection import Connection, ConnectionClosed, Side
from cocoon.protocol.errors import ErrorCode, RemoteProtocolError
from cocoon.protocol.messages import Challenge, Error, Hello, Message, Role, Welcome

HANDSHAKE_TIMEOUT = 10.0
CLOSE_TIMEOUT = 1.0  # seconds a failed handshake's connection is given to close
SOFTWARE = f"cocoon-py/{__version__}"


def software_version(software: str) -> tuple[int, ...] | None:
    """The version of a peer that runs this implementation (``cocoon-py/X.Y.Z``, from its
    handshake), or None for any other software: what a newer message may be sent to."""
    name, _, version = software.partition("/")
    parts = version.split(".")
    if name != "cocoon-py" or len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


class ConnectionOptions(TypedDict, total=False):
    heartbeat_interval: float
    dead_after: float
    max_frame: int


class HandshakeFailed(Exception):
    """The hop could not be opened; the message says why, safe to log."""


async def _next_message(reader: asyncio.StreamReader, conn: Connection) -> Message:
    loop = asyncio.get_running_loop()
    while True:
        event = conn.next_event()
        if isinstance(event, ConnectionClosed):
            raise HandshakeFailed("peer closed the connection during the handshake")
        if event is not None:
            return event
        data = await reader.read(READ_SIZE)
        conn.receive_data(data, loop.time())


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close a connection that failed its handshake and wait (briefly) until it is: a TLS
    connection closes in steps, and one left half-closed when its event loop ends leaks its socket."""
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()


async def accept(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    cert_der: bytes | Sequence[bytes],
    role: Role,
    verifier: PeerVerifier,
    connection_options: ConnectionOptions | None = None,
) -> Peer:
    """Listener side: challenge the dialer and verify its proof. Closes on failure.

    ``cert_der`` may list several certificates (the current one and the one it renewed), as
    the dialer signs over whichever it was shown."""
    loop = asyncio.get_running_loop()
    conn = Connection(Side.LISTENER, now=loop.time(), **(connection_options or {}))
    nonce = os.urandom(32)
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            writer.write(conn.send(Challenge(nonce=nonce, software=SOFTWARE)))
            hello = await _next_message(reader, conn)
            if not isinstance(hello, Hello):  # the table lets only a connection error through
                raise HandshakeFailed(f"the dialer gave up: {getattr(hello, 'message', '')}"[:200])
            check_hello(hello, nonce, cert_der)
            try:
                identity = verifier(hello.role, hello.public_key, hello.evidence, hello.software)
            except PeerRejected as exc:
                raise RemoteProtocolError(str(exc), ErrorCode.UNAUTHORIZED) from exc
            writer.write(conn.send(Welcome(role=role, software=SOFTWARE)))
            await writer.drain()
    except RemoteProtocolError as exc:
        with contextlib.suppress(Exception):
            writer.write(conn.send(Error(stream_id=0, code=exc.code, message=str(exc)[:1000])))
            await writer.drain()
        await _close(writer)
        raise HandshakeFailed(f"{exc.code}: {exc}") from exc
    except (TimeoutError, ConnectionError, ssl.SSLError, OSError, HandshakeFailed) as exc:
        await _close(writer)
        raise HandshakeFailed(str(exc) or type(exc).__name__) from exc
    return Peer(reader, writer, conn, identity)


async def dial(
    host: str,
    port: int,
    *,
    key: Ed25519PrivateKey,
    role: Role,
    verifier: PeerVerifier,
    listener_role: Role = "proxy",
    evidence: bytes = b"",
    connection_options: ConnectionOptions | None = None,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> Peer:
    """Dialer side: check the listener's certificate key, then prove who we are. ``timeout``
    bounds the TCP and TLS connect, and then the in-channel handshake."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=client_context())
    except (TimeoutError, OSError) as exc:
        raise HandshakeFailed(f"cannot reach {host}:{port}: {exc or type(exc).__name__}") from exc
    conn = Connection(Side.DIALER, now=loop.time(), **(connection_options or {}))
    try:
        async with asyncio.timeout(timeout):
            ssl_object = writer.get_extra_info("ssl_object")
            cert_der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
            if not cert_der:
                raise HandshakeFailed("listener sent no certificate")
            try:
                listener_key = certificate_public_key(cert_der)
            except ValueError as exc:
                raise HandshakeFailed(str(exc)) from exc
            challenge = await _next_message(reader, conn)
            if not isinstance(challenge, Challenge):  # pragma: no cover - table forbids it
                raise HandshakeFailed("expected a challenge")
            try:
                identity: PeerIdentity = verifier(
                    listener_role, listener_key, certificate_evidence(cert_der), challenge.software
                )
            except PeerRejected as exc:
                raise HandshakeFailed(f"listener rejected: {exc}") from exc
            writer.write(conn.send(make_hello(key, role, challenge.nonce, cert_der, SOFTWARE, evidence)))
            await writer.drain()
            answer = await _next_message(reader, conn)
            if isinstance(answer, Error):
                raise HandshakeFailed(f"rejected by {host}:{port}: {answer.code}: {answer.message}")
            if not isinstance(answer, Welcome) or answer.role != listener_role:
                raise HandshakeFailed(f"{host}:{port} is not a {listener_role}")
    except RemoteProtocolError as exc:
        await _close(writer)
        raise HandshakeFailed(f"{host}:{port} broke the protocol: {exc}") from exc
    except (TimeoutError, ConnectionError, ssl.SSLError, OSError) as exc:
        await _close(writer)
        raise HandshakeFailed(f"handshake with {host}:{port} failed: {exc or type(exc).__name__}") from exc
    except HandshakeFailed:
        await _close(writer)
        raise
    return Peer(reader, writer, conn, identity, label=f"{listener_role}@{host}:{port}")
