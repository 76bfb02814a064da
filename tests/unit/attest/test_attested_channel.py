"""Attested hops in memory: TLS on loopback with evidence in the certificate and the hello."""

from __future__ import annotations

import asyncio
import datetime
import ssl

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.attest.policy import development_policy
from cocoon.attest.provider import SimQuoteSource, make_node_evidence
from cocoon.attest.sim import SimAuthority
from cocoon.attest.verifier import EvidenceVerifier
from cocoon.channel.attested import AttestedVerifier
from cocoon.channel.connect import HandshakeFailed, accept, dial
from cocoon.channel.tls import certificate_evidence, make_certificate, server_context
from cocoon.keys import public_bytes
from cocoon.protocol.connection import Connection, Side
from cocoon.protocol.errors import ErrorCode
from cocoon.protocol.messages import Challenge, Error


def evidence_for(authority: SimAuthority, role: str, key: Ed25519PrivateKey) -> bytes:
    now = int(datetime.datetime.now(datetime.UTC).timestamp())
    node = make_node_evidence(
        SimQuoteSource(authority), role=role, channel_key=public_bytes(key), hpke_key=bytes(32), now=now
    )
    return node.raw


async def handshake(
    authority: SimAuthority, proxy_evidence: bytes, worker_evidence: bytes, proxy_key: Ed25519PrivateKey
) -> tuple[str, str]:
    """Run one worker → proxy handshake; returns (proxy side outcome, worker side outcome)."""
    verifier = EvidenceVerifier(development_policy(), sim_root_der=authority.root_der)
    ctx, cert_der = server_context(proxy_key, proxy_evidence)
    outcome: dict[str, str] = {}

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = await accept(
                reader, writer, cert_der=cert_der, role="proxy", verifier=AttestedVerifier(verifier, accept={"worker"})
            )
            outcome["proxy"] = "accepted " + peer.identity.role
            await peer.aclose()
        except HandshakeFailed as exc:
            outcome["proxy"] = str(exc)

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    worker_key = Ed25519PrivateKey.generate()
    try:
        peer = await dial(
            "127.0.0.1",
            port,
            key=worker_key,
            role="worker",
            verifier=AttestedVerifier(verifier, accept={"proxy"}),
            evidence=worker_evidence,
        )
        outcome["worker"] = "accepted " + peer.identity.role
        await peer.aclose()
    except HandshakeFailed as exc:
        outcome["worker"] = str(exc)
    await asyncio.sleep(0.05)
    server.close()
    await server.wait_closed()
    return outcome.get("proxy", ""), outcome["worker"]


def test_certificate_carries_the_evidence() -> None:
    key = Ed25519PrivateKey.generate()
    cert = make_certificate(key, datetime.datetime.now(datetime.UTC), b"evidence-bytes")
    assert certificate_evidence(cert.public_bytes(serialization.Encoding.DER)) == b"evidence-bytes"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime <= datetime.timedelta(hours=24, minutes=5)


def test_mutual_attestation_succeeds(authority: SimAuthority) -> None:
    proxy_key = Ed25519PrivateKey.generate()
    worker_key = Ed25519PrivateKey.generate()

    async def run() -> tuple[str, str]:
        verifier = EvidenceVerifier(development_policy(), sim_root_der=authority.root_der)
        ctx, cert_der = server_context(proxy_key, evidence_for(authority, "proxy", proxy_key))
        accepted: list[str] = []

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = await accept(
                reader, writer, cert_der=cert_der, role="proxy", verifier=AttestedVerifier(verifier, accept={"worker"})
            )
            accepted.append(peer.identity.role)
            assert peer.identity.attestation.simulated
            await peer.aclose()

        server = await asyncio.start_server(on_connection, "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        peer = await dial(
            "127.0.0.1",
            port,
            key=worker_key,
            role="worker",
            verifier=AttestedVerifier(verifier, accept={"proxy"}),
            evidence=evidence_for(authority, "worker", worker_key),
        )
        await asyncio.sleep(0.05)
        await peer.aclose()
        server.close()
        await server.wait_closed()
        return accepted[0], peer.identity.role

    assert asyncio.run(run()) == ("worker", "proxy")


def test_proxy_certificate_key_must_be_the_bound_key(authority: SimAuthority) -> None:
    """Evidence lifted from another proxy's certificate does not vouch for this one's key."""
    other = Ed25519PrivateKey.generate()
    _, worker = asyncio.run(
        handshake(authority, evidence_for(authority, "proxy", other), b"", Ed25519PrivateKey.generate())
    )
    assert "key_mismatch" in worker


def test_worker_without_evidence_is_refused(authority: SimAuthority) -> None:
    proxy_key = Ed25519PrivateKey.generate()
    proxy, worker = asyncio.run(handshake(authority, evidence_for(authority, "proxy", proxy_key), b"", proxy_key))
    assert "attestation failed" in proxy and "malformed" in proxy
    assert "rejected" in worker


def test_worker_presenting_another_nodes_evidence_is_refused(authority: SimAuthority) -> None:
    proxy_key = Ed25519PrivateKey.generate()
    stolen = evidence_for(authority, "worker", Ed25519PrivateKey.generate())
    proxy, _ = asyncio.run(handshake(authority, evidence_for(authority, "proxy", proxy_key), stolen, proxy_key))
    assert "key_mismatch" in proxy


@pytest.mark.parametrize("role", ["client"])
def test_clients_are_not_attested(role: str, authority: SimAuthority) -> None:
    verifier = AttestedVerifier(EvidenceVerifier(development_policy(), sim_root_der=authority.root_der), accept={role})
    identity = verifier(role, bytes(32), b"", "test")
    assert identity.attestation is None


def test_a_dialer_that_answers_the_challenge_with_an_error_fails_the_handshake_cleanly(
    authority: SimAuthority,
) -> None:
    """A connection error instead of the hello: the listener's ``accept`` says why, instead of
    failing an assertion."""
    proxy_key = Ed25519PrivateKey.generate()

    async def run() -> str:
        verifier = EvidenceVerifier(development_policy(), sim_root_der=authority.root_der)
        ctx, cert_der = server_context(proxy_key, evidence_for(authority, "proxy", proxy_key))
        outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                worker_only = AttestedVerifier(verifier, accept={"worker"})
                await accept(reader, writer, cert_der=cert_der, role="proxy", verifier=worker_only)
                outcome.set_result("accepted")
            except HandshakeFailed as exc:
                outcome.set_result(f"failed: {exc}")
            except Exception as exc:  # what the fix prevents: an unexpected error escaping accept
                outcome.set_result(f"escaped: {type(exc).__name__}")

        server = await asyncio.start_server(on_connection, "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        client_ctx = ssl.create_default_context()
        client_ctx.check_hostname = False
        client_ctx.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        conn = Connection(Side.DIALER, now=0.0)
        while (event := conn.next_event()) is None:
            conn.receive_data(await reader.read(65536), 0.0)
        assert isinstance(event, Challenge)
        writer.write(conn.send(Error(stream_id=0, code=ErrorCode.BAD_REQUEST, message="changed my mind")))
        result = await asyncio.wait_for(outcome, 10)
        writer.close()
        server.close()
        await server.wait_closed()
        return result

    result = asyncio.run(run())
    assert result.startswith("failed: ") and "changed my mind" in result
