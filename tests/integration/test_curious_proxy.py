"""Trust model point 1: a curious proxy sees no prompt and no answer, on the wire, in its logs,
in its files or in its memory, while the client gets its answer."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.integration.network import MODEL, Network

pytestmark = pytest.mark.integration

CANARY = "quokkabanana"
PROMPT_CANARY = "zebracanary77"


@pytest.fixture(scope="module")
def curious(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Network, str]]:
    net = Network(
        Path(tmp_path_factory.mktemp("curious")),
        workers=1,
        capacity=2,
        proxy_module="tests.integration.curious_proxy",
    )
    try:
        with openai.OpenAI(base_url=net.url, api_key="unused", max_retries=0, timeout=60) as client:
            messages = [
                {"role": "system", "content": f"You repeat words. The secret word is {PROMPT_CANARY}."},
                {"role": "user", "content": f"Say the word {CANARY} three times."},
            ]
            answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40, temperature=0)
            streamed = "".join(
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(
                    model=MODEL, messages=messages, max_tokens=40, temperature=0, stream=True, user=CANARY
                )
            )
        text = answer.choices[0].message.content or ""
        assert CANARY in text.lower() and CANARY in streamed.lower()  # the client got the canary back
        yield net, text
    finally:
        net.stop()


def needles(text: str) -> list[bytes]:
    words = [CANARY, PROMPT_CANARY, CANARY.capitalize()]
    # the answer itself, in pieces long enough not to occur by chance
    words += [w for w in re.findall(r"[A-Za-z]{9,}", text) if w.lower() != CANARY]
    return [w.encode() for w in words]


def test_proxy_traffic_logs_and_files_carry_no_content(curious: tuple[Network, str]) -> None:
    net, text = curious
    record = (net.root / "proxy.record").read_bytes()
    assert len(record) > 2000  # it really recorded the requests and answers
    written = [record, (net.root / "proxy.log").read_bytes(), (net.root / "proxy.status.json").read_bytes()]
    for needle in needles(text):
        for blob in written:
            assert needle not in blob, needle


def process_memory(pid: int) -> bytes:
    memory = bytearray()
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            addresses, perms = line.split()[:2]
            if not perms.startswith("r") or "[vvar]" in line or "[vsyscall]" in line:
                continue
            start, end = (int(x, 16) for x in addresses.split("-"))
            try:
                mem.seek(start)
                memory += mem.read(end - start)
            except (OSError, OverflowError, ValueError):
                continue
    return bytes(memory)


def test_proxy_memory_carries_no_content(curious: tuple[Network, str]) -> None:
    net, text = curious
    pid = net.nodes["proxy"].process.pid
    memory = process_memory(pid)
    assert len(memory) > 10_000_000  # the whole heap was read
    assert b"cocoon" in memory  # and it is the proxy's
    for needle in needles(text):
        assert needle not in memory, needle
    assert os.path.exists(f"/proc/{pid}")


def test_the_memory_scan_finds_what_a_process_holds() -> None:
    """Positive control: the same scan finds a canary held by a live process, so the proxy's
    clean result above means something."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys, time\nheld = bytearray(b'{CANARY}' * 3)\nprint(1, flush=True)\ntime.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline()
        assert CANARY.encode() * 3 in process_memory(holder.pid)
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout:
            holder.stdout.close()
