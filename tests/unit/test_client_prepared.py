"""The client makes its next sender setups once a request has gone on its way, not while it is
on its way (the X25519 work would compete for the cores with the proxy and worker carrying it),
and once for a burst of requests."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cocoon.client.link import ProxyLink, ProxyPool
from cocoon.client.sealing import PER_KEY, Candidate
from cocoon.client.service import REFILL_DELAY, ClientService


def hpke_key() -> bytes:
    return X25519PrivateKey.generate().public_key().public_bytes_raw()


WORKERS = [Candidate(worker_id=bytes([i]) * 32, hpke_key=hpke_key(), model_hash=b"h" * 32) for i in (1, 2)]


async def test_sender_setups_are_made_after_the_request_has_gone_and_once_for_a_burst() -> None:
    client = ClientService(ProxyPool([cast(ProxyLink, object())]), idle_timeout=5.0, verifier=cast(Any, None))
    client._prepare_later(WORKERS[:1])
    timer = client._refill
    client._prepare_later(WORKERS)  # the burst's next request, to both workers
    assert client._refill is timer  # one refill for the burst
    await asyncio.sleep(0)
    assert len(client.prepared) == 0  # not while the requests are on their way
    await asyncio.sleep(REFILL_DELAY * 3)
    assert len(client.prepared) == 2 * PER_KEY
    assert len(client.prepared.take(WORKERS)) == 2
    client._prepare_later(WORKERS[1:])
    assert client._refill is not None and client._refill is not timer
    await asyncio.sleep(REFILL_DELAY * 3)
    assert len(client.prepared) == 2 * PER_KEY - 1  # the second topped up, the first left as it was
