"""Routing on price and measured quality, retries before the first token, stalled workers,
with fault-injecting test doubles around real workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.network import MODEL, Network

pytestmark = pytest.mark.integration

ASK = [{"role": "user", "content": "Write a long story about a dragon."}]


def run(net: Network, count: int, **extra: object) -> list[dict[str, object]]:
    with openai.OpenAI(base_url=net.url, api_key="unused", max_retries=0, timeout=60) as client:
        for _ in range(count):
            answer = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=6, extra_body=extra)
            assert answer.usage.completion_tokens == 6
    return httpx.get(net.url + "/cocoon/receipts", params={"limit": count}, timeout=10).json()["data"]


def worker_key(net: Network, i: int) -> str:
    from cocoon.keys import load_identity, public_bytes

    return public_bytes(load_identity(net.root / f"worker-{i}.key")).hex()


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Network:
    """worker-1: fast and dear (price 2.0); worker-2: slow (50 ms a token) and cheap (1.0)."""
    root = Path(tmp_path_factory.mktemp("market"))
    net = Network(root, workers=0, capacity=2)
    net.start_worker(1, ["--price-coefficient", "2.0"])
    net.start_worker(2, ["--price-coefficient", "1.0"], fault="slow:0.05")
    net.wait_workers(2)
    yield net
    net.stop()


def test_fastest_sends_most_traffic_to_the_fastest(market: Network) -> None:
    receipts = run(market, 8, routing="fastest")
    fast = sum(r["worker"] == worker_key(market, 1) for r in receipts)
    assert fast >= 6, receipts


def test_cheapest_sends_most_traffic_to_the_cheapest(market: Network) -> None:
    receipts = run(market, 8, routing="cheapest")
    cheap = sum(r["worker"] == worker_key(market, 2) for r in receipts)
    assert cheap >= 6, receipts


def test_price_cap_is_never_violated(market: Network) -> None:
    receipts = run(market, 4, routing="fastest", max_price=1.5)
    assert all(r["worker"] == worker_key(market, 2) for r in receipts)


def test_worker_failing_before_its_first_token_costs_nothing(tmp_path: Path) -> None:
    net = Network(tmp_path, workers=0, capacity=2)
    try:
        net.start_worker(1, fault="fail_first")
        net.start_worker(2)
        net.wait_workers(2)
        receipts = run(net, 6)
        assert all(r["worker"] == worker_key(net, 2) for r in receipts)  # billed only by the worker that answered
        assert "failed before its first chunk" in net.nodes["proxy"].log or "suspended" in net.nodes["proxy"].log
    finally:
        net.stop()


def test_stalled_worker_is_detected_and_suspended(tmp_path: Path) -> None:
    net = Network(tmp_path, workers=0, capacity=2, proxy={"inter_token_timeout": 1.0})
    try:
        net.start_worker(1, fault="stall")
        net.wait_workers(1)
        with openai.OpenAI(base_url=net.url, api_key="unused", max_retries=0, timeout=30) as client:
            for _ in range(3):
                stream = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=50, stream=True)
                with pytest.raises(openai.APIError, match="timed out"):
                    for _ in stream:
                        pass
            net.nodes["proxy"].wait_for_log("timed out waiting for the next chunk")
            with pytest.raises(openai.InternalServerError) as excinfo:  # suspended: no worker left
                client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5)
            assert excinfo.value.status_code == 503
        net.start_worker(2)
        net.wait_workers(2)
        assert all(r["worker"] == worker_key(net, 2) for r in run(net, 2))
    finally:
        net.stop()


def test_price_book_shows_prices_capacity_and_measured_speed(market: Network) -> None:
    run(market, 2, routing="balanced")
    book = httpx.get(market.url + "/market", timeout=10).json()
    assert book["prices"]["nano_per_token"] == 1000
    (entry,) = book["models"]
    workers = {w["worker"]: w for w in entry["workers"]}
    fast, cheap = workers[worker_key(market, 1)], workers[worker_key(market, 2)]
    assert fast["price_coefficient"] == 2.0 and cheap["price_coefficient"] == 1.0
    per_million = fast["nano_ton_per_million_tokens"]
    # 1000 nanoTON per token × 2.0 (completion multiplier) × 2.0 (coefficient) × 10^6 tokens
    assert per_million["completion"] == 4_000_000_000
    assert per_million["completion"] == 2 * cheap["nano_ton_per_million_tokens"]["completion"]
    assert fast["tokens_per_second"] > cheap["tokens_per_second"] > 0
    assert fast["free"] == fast["capacity"] == 2
    shown = subprocess.run(
        [sys.executable, "-m", "cocoon", "market", "--url", market.url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert shown.returncode == 0 and MODEL in shown.stdout and worker_key(market, 1)[:12] in shown.stdout
