"""TLS 1.3 contexts on the node's Ed25519 key, with self-signed certificates."""

from __future__ import annotations

import asyncio
import datetime
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from cocoon.channel.tls import (
    CERT_LIFETIME,
    certificate_public_key,
    client_context,
    make_certificate,
    server_context,
)
from cocoon.keys import public_bytes


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_server_context_certificate_carries_the_key(key: Ed25519PrivateKey) -> None:
    ctx, cert_der = server_context(key)
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_3
    assert certificate_public_key(cert_der) == public_bytes(key)


def test_certificate_is_self_signed_and_short_lived(key: Ed25519PrivateKey) -> None:
    now = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    cert = make_certificate(key, now)
    assert cert.subject == cert.issuer
    common_name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == "cocoon-" + public_bytes(key)[:8].hex()
    assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
    assert cert.not_valid_after_utc == now + CERT_LIFETIME
    cert.verify_directly_issued_by(cert)  # signed by its own key


def test_fresh_certificates_differ(key: Ed25519PrivateKey) -> None:
    _, first = server_context(key)
    _, second = server_context(key)
    assert first != second  # new serial number each time
    assert certificate_public_key(first) == certificate_public_key(second)


def test_certificate_with_an_ec_key_is_rejected() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not-ed25519")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ec_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ec_key, hashes.SHA256())
    )
    with pytest.raises(ValueError, match="Ed25519"):
        certificate_public_key(cert.public_bytes(serialization.Encoding.DER))


def test_garbage_certificate_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        certificate_public_key(b"not a certificate")


def test_client_context_checks_no_ca() -> None:
    ctx = client_context()
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode is ssl.CERT_NONE
    assert not ctx.check_hostname


async def test_loopback_tls13_connection(key: Ed25519PrivateKey) -> None:
    server_ctx, cert_der = server_context(key)
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.set_result(await reader.readexactly(5))
        writer.write(b"pong!")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    try:
        port = server.sockets[0].getsockname()[1]
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context())
            try:
                ssl_object = writer.get_extra_info("ssl_object")
                assert ssl_object.version() == "TLSv1.3"
                peer_der = ssl_object.getpeercert(binary_form=True)
                assert peer_der == cert_der
                assert certificate_public_key(peer_der) == public_bytes(key)
                writer.write(b"ping!")
                await writer.drain()
                assert await reader.readexactly(5) == b"pong!"
                assert await received == b"ping!"
            finally:
                writer.close()
                await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


async def test_tls12_client_is_refused(key: Ed25519PrivateKey) -> None:
    server_ctx, _ = server_context(key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    try:
        port = server.sockets[0].getsockname()[1]
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        async with asyncio.timeout(5):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await asyncio.open_connection("127.0.0.1", port, ssl=old)
    finally:
        server.close()
        await server.wait_closed()
