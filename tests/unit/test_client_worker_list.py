"""The client's worker list past its TTL: the request uses it as it is, and the fresh list is asked
for only once that request has its first answer (so that the exchange never travels, or wakes the
client, while the request is on its way to the worker)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from cocoon.client.link import ProxyLink, ProxyPool
from cocoon.client.sealing import Candidate
from cocoon.client.service import WORKER_LIST_MAX_AGE, WORKER_LIST_TTL, ClientService

MODEL = "bench-model"
CHOSEN = [Candidate(worker_id=b"w" * 32, hpke_key=b"k" * 32, model_hash=b"h" * 32)]


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> tuple[ClientService, list[str], list[float]]:
    now = [0.0]
    link = cast(ProxyLink, object())  # only its identity is used on this path
    client = ClientService(ProxyPool([link]), idle_timeout=5.0, verifier=cast(Any, None), clock=lambda: now[0])
    client._workers[(id(link), MODEL)] = (0.0, [])
    refreshed: list[str] = []
    monkeypatch.setattr(client, "_choose", lambda listed, model, cap, routing: CHOSEN)
    monkeypatch.setattr(client, "_refresh_worker_list", lambda link, model: refreshed.append(model))
    return client, refreshed, now


async def test_a_stale_list_is_refreshed_after_the_first_answer(
    service: tuple[ClientService, list[str], list[float]],
) -> None:
    client, refreshed, now = service
    link = client.pool.links[0]
    now[0] = WORKER_LIST_TTL + 0.5
    assert await client.candidates(MODEL, 0, "balanced", link) == CHOSEN
    assert refreshed == []  # not while the request is on its way
    client._refresh_stale_lists()  # what the call runs once its caller has the first answer
    assert refreshed == [MODEL]
    client._refresh_stale_lists()
    assert refreshed == [MODEL]  # once per staleness


async def test_a_fresh_list_is_not_refreshed(service: tuple[ClientService, list[str], list[float]]) -> None:
    client, refreshed, now = service
    now[0] = WORKER_LIST_TTL / 2
    await client.candidates(MODEL, 0, "balanced", client.pool.links[0])
    client._refresh_stale_lists()
    assert refreshed == []


async def test_a_list_past_its_maximum_age_is_asked_for_before_the_request(
    service: tuple[ClientService, list[str], list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, refreshed, now = service
    asked: list[str] = []

    async def worker_list(link: ProxyLink, model: str) -> tuple[float, list[Any]]:
        asked.append(model)
        return now[0], []

    monkeypatch.setattr(client, "_worker_list", worker_list)
    now[0] = WORKER_LIST_MAX_AGE + 1
    assert await client.candidates(MODEL, 0, "balanced", client.pool.links[0]) == CHOSEN
    assert asked == [MODEL] and refreshed == []
