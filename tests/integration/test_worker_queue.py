"""A worker takes ``queue`` requests beyond its engine's slots; they wait in the worker, unsealed,
and start as soon as a slot frees, or are refused as saturated after ``queue_timeout``."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from benchmarks.overhead import ENGINE_DONE
from tests.integration.network import MODEL, Network

pytestmark = pytest.mark.integration

MESSAGES: Any = [{"role": "user", "content": "Count for me."}]
PACED = {"engine": "benchmark", "bench_tokens_per_second": 40.0}  # 20 tokens: half a second
NO_PROXY_QUEUE = {"queue_timeout": 0.0}  # the proxy refuses what no worker takes at once


async def answers(url: str, count: int) -> list[str | int]:
    """``count`` streamed requests at once: each one's text, or its HTTP error status."""

    async def one(api: openai.AsyncOpenAI) -> str | int:
        try:
            stream = await api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        except openai.APIStatusError as exc:
            return exc.status_code

    async with openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=30) as api:
        return list(await asyncio.gather(*(one(api) for _ in range(count))))


def test_a_request_beyond_the_engines_slots_waits_in_the_worker_and_starts_when_one_frees(tmp_path: Path) -> None:
    net = Network(tmp_path, workers=1, capacity=1, worker={**PACED, "queue": 1}, proxy=NO_PROXY_QUEUE)
    try:
        results = asyncio.run(answers(net.url, 3))
        text = "".join(f" w{j}" for j in range(20))
        # one runs, one waits in the worker; the third finds both taken (429 from the proxy)
        assert sorted(results, key=str) == sorted([text, text, 429], key=str)
        runs = [(float(start), float(end)) for _, start, end in ENGINE_DONE.findall(net.nodes["worker-1"].log)]
        (_, first_end), (second_start, _) = sorted(runs)[-2:]
        assert second_start >= first_end  # one at a time on the engine's one slot
        assert re.search(r"capacity 2\b", net.nodes["proxy"].log)  # announced: the slot and the queue
    finally:
        net.stop()


def test_a_request_that_waits_in_the_worker_past_its_queue_timeout_is_refused_as_saturated(tmp_path: Path) -> None:
    worker = {**PACED, "queue": 1, "queue_timeout": 0.1}
    net = Network(tmp_path, workers=1, capacity=1, worker=worker, proxy=NO_PROXY_QUEUE)
    try:
        results = asyncio.run(answers(net.url, 2))
        assert sorted(results, key=str) == sorted(["".join(f" w{j}" for j in range(20)), 429], key=str)
        # busy is not broken: the worker keeps its standing
        (listed,) = httpx.get(net.url + "/market", timeout=10).json()["models"][0]["workers"]
        assert listed["state"] == "available" and listed["errors"] == 0 and listed["timeouts"] == 0
    finally:
        net.stop()


def test_without_a_queue_the_worker_takes_only_what_its_engine_runs(tmp_path: Path) -> None:
    net = Network(tmp_path, workers=1, capacity=1, worker={**PACED, "queue": 0}, proxy=NO_PROXY_QUEUE)
    try:
        results = asyncio.run(answers(net.url, 2))
        assert sorted(results, key=str) == sorted(["".join(f" w{j}" for j in range(20)), 429], key=str)
    finally:
        net.stop()


def test_a_request_a_worker_refuses_as_full_waits_for_room_there_instead_of_a_429(tmp_path: Path) -> None:
    # A worker serving several proxies tells each that it has room again once one of its slots
    # frees; two of them may then send a request for it, and it refuses the second (saturated).
    # That proxy tries again shortly, within its queue_timeout, as if it had waited for the slot.
    net = Network(tmp_path, workers=0, worker=PACED)
    try:
        net.start_worker(1, fault="full_first:2")  # the test double: its first two refusals
        net.wait_workers(1)
        assert asyncio.run(answers(net.url, 1)) == ["".join(f" w{j}" for j in range(20))]
        assert net.nodes["proxy"].log.count("trying another") == 0  # waited for room, no failure
        (listed,) = httpx.get(net.url + "/market", timeout=10).json()["models"][0]["workers"]
        assert listed["state"] == "available" and listed["errors"] == 0
    finally:
        net.stop()


def test_a_worker_serving_two_proxies_offers_each_what_the_other_leaves(tmp_path: Path) -> None:
    """Each proxy was offered the worker's whole capacity, so a request through the second
    proxy while the first one's filled the worker was refused at once (429); now the worker
    tells each proxy its share (``capacity``), and the second proxy's request waits there for
    the worker and is answered."""
    from benchmarks.scaling import Bench

    slow = {"engine": "benchmark", "bench_tokens_per_second": 10.0}  # 20 tokens: 2 s
    bench = Bench(tmp_path, workers=1, capacity=1, worker={**slow, "queue": 0}, proxy_2={"queue_timeout": 20.0})
    try:
        bench.wait_ready()
        first_url, second_url = bench.urls["client"], bench.urls["client-2"]

        async def scenario() -> tuple[str, str | int, list[int], float]:
            async with openai.AsyncOpenAI(base_url=first_url, api_key="unused", max_retries=0, timeout=30) as api:
                stream = await api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20, stream=True)
                chunks = aiter(stream)
                first = (await anext(chunks)).choices[0].delta.content or ""  # the worker is busy now
                async with httpx.AsyncClient(timeout=10) as http:
                    seen: list[int] = []
                    for _ in range(100):  # proxy 2 learns that it may send nothing now
                        book = (await http.get(second_url + "/market")).json()
                        seen = [w["capacity"] for m in book["models"] for w in m["workers"]]
                        if seen == [0]:
                            break
                        await asyncio.sleep(0.05)
                sent = time.monotonic()
                second = asyncio.create_task(answers(second_url, 1))
                rest = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
                return first + rest, (await second)[0], seen, sent

        first, second, seen, second_sent = asyncio.run(scenario())
        text = "".join(f" w{j}" for j in range(20))
        assert seen == [0]
        assert first == text and second == text  # waited at proxy 2 for the worker, then answered
        runs = sorted((float(a), float(b)) for _, a, b in ENGINE_DONE.findall(bench.net.nodes["worker-1"].log))
        (_, first_end), (second_start, _) = runs[-2:]
        assert second_sent < first_end <= second_start  # it was sent while the worker was busy
    finally:
        bench.stop()
