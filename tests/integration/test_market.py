"""Routing on price and measured quality, retries before the first token, stalled workers,
with fault-injecting test doubles around real workers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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


SPEEDS = {1: "", 2: "slow:0.05", 3: "slow:0.1", 4: "slow:0.2"}  # seconds added per token
PRICES = {1: "3.0", 2: "2.0", 3: "1.0", 4: "0.5"}  # the faster, the dearer


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Network:
    """Four workers of different speeds and prices: worker-1 fastest and dearest, worker-4
    slowest and cheapest (test doubles add delay to a real engine)."""
    root = Path(tmp_path_factory.mktemp("market"))
    net = Network(root, workers=0, capacity=2, client={"candidates": 4})
    for i in (1, 2, 3, 4):
        net.start_worker(i, ["--price-coefficient", PRICES[i], "--threads", "1"], fault=SPEEDS[i])
    net.wait_workers(4)
    run(net, 8, routing="balanced")  # every worker measured once or more before the comparisons
    yield net
    net.stop()


def shares(net: Network, receipts: list[dict[str, object]]) -> dict[int, int]:
    keys = {worker_key(net, i): i for i in (1, 2, 3, 4)}
    counts = dict.fromkeys((1, 2, 3, 4), 0)
    for receipt in receipts:
        counts[keys[str(receipt["worker"])]] += 1
    return counts


def test_fastest_sends_most_traffic_to_the_fastest(market: Network) -> None:
    counts = shares(market, run(market, 16, routing="fastest"))
    assert counts[1] == max(counts.values()) and counts[1] >= 6, counts
    assert counts[4] <= 2, counts


def test_cheapest_sends_most_traffic_to_the_cheapest(market: Network) -> None:
    counts = shares(market, run(market, 16, routing="cheapest"))
    assert counts[4] == max(counts.values()) and counts[4] >= 6, counts
    assert counts[1] <= 2, counts


def test_balanced_spreads_the_traffic(market: Network) -> None:
    # The fastest worker here wins every pair it is drawn into (half of them): about half of the
    # requests, so 32 of them keep a chance draw past three quarters near one in a thousand (16
    # did not: 14 of 16 once in CI)
    counts = shares(market, run(market, 32, routing="balanced"))
    assert sum(1 for c in counts.values() if c > 0) >= 2, counts
    assert max(counts.values()) <= 24, counts  # no single worker takes three quarters


def test_price_cap_is_never_violated(market: Network) -> None:
    counts = shares(market, run(market, 6, routing="fastest", max_price=1.5))
    assert counts[1] == counts[2] == 0 and counts[3] + counts[4] == 6, counts


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
        # the price book still lists it, as suspended
        (listed,) = httpx.get(net.url + "/market", timeout=10).json()["models"][0]["workers"]
        assert listed["state"] == "suspended" and listed["suspended_until"] > time.time()
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
    fast, cheap = workers[worker_key(market, 1)], workers[worker_key(market, 4)]
    assert fast["price_coefficient"] == 3.0 and cheap["price_coefficient"] == 0.5
    per_million = fast["nano_ton_per_million_tokens"]
    # 1000 nanoTON per token × 2.0 (completion multiplier) × 3.0 (coefficient) × 10^6 tokens
    assert per_million["completion"] == 6_000_000_000
    assert per_million["completion"] == 6 * cheap["nano_ton_per_million_tokens"]["completion"]
    assert fast["tokens_per_second"] > cheap["tokens_per_second"] > 0
    assert fast["free"] == fast["capacity"] == 2 + 1  # the engine's two slots and the worker's queue of one
    assert fast["errors"] == fast["timeouts"] == 0
    shown = subprocess.run(
        [sys.executable, "-m", "cocoon", "market", "--url", market.url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert shown.returncode == 0 and MODEL in shown.stdout and worker_key(market, 1)[:12] in shown.stdout
