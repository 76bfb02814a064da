"""The client's list of attested workers: used while a fresh one is asked for in the background
(no round trip to the proxy before a request), and asked for again at once when none of the
listed workers is there any more."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.integration.network import MODEL, Network

pytestmark = pytest.mark.integration

MESSAGES: Any = [{"role": "user", "content": "Count for me."}]


def ask(net: Network) -> str:
    with openai.OpenAI(base_url=net.url, api_key="unused", max_retries=0, timeout=30) as api:
        answer = api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
    return answer.choices[0].message.content or ""


def test_a_request_after_its_listed_worker_left_is_sealed_for_the_new_one(tmp_path: Path) -> None:
    net = Network(tmp_path, workers=1, worker={"engine": "benchmark"})
    try:
        assert ask(net) == " w0 w1 w2"  # the client now holds a list naming worker-1 only
        net.nodes.pop("worker-1").stop()
        net.start_worker(2)
        net.wait_workers(1)  # (through the model list: the worker list stays as it was)
        time.sleep(1.2)  # past the list's TTL, well inside its maximum age: used as it is first
        assert ask(net) == " w0 w1 w2"
        assert net.worker_requests_done("worker-2") == 1
        assert "no_worker" not in net.nodes["client"].log.lower()
    finally:
        net.stop()
