"""The ``cocoon`` command as a user runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cocoon.cli import build_command
from tests.integration.network import MODEL, free_port

pytestmark = pytest.mark.integration

COCOON = [sys.executable, "-m", "cocoon"]


def cocoon(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COCOON, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, "COLUMNS": "200"}
    )


@pytest.mark.parametrize("command", ["proxy", "worker", "client", "up", "key"])
def test_every_option_is_explained(command: str) -> None:
    params = build_command().commands[command].params
    assert params
    shown = cocoon(command, "--help")
    assert shown.returncode == 0
    for param in params:
        assert param.help and len(param.help) > 15, f"{command} {param.name} has no help"
        flag = param.opts[0] if param.opts else param.name
        assert flag.upper() in shown.stdout.upper(), f"{flag} missing from {command} --help"


def test_top_level_help_and_version() -> None:
    result = cocoon("--help")
    assert result.returncode == 0
    for command in ("up", "client", "proxy", "worker", "key"):
        assert command in result.stdout
    assert cocoon("--version").stdout.startswith("cocoon ")


def test_a_client_whose_port_is_taken_says_so_in_one_line(tmp_path: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = cocoon(
            "client", "--listen", f"127.0.0.1:{port}", "--proxy", f"127.0.0.1:{free_port()}={'ab' * 32}",
            "--status-file", str(tmp_path / "status.json"),
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"cocoon: the client cannot listen on 127.0.0.1:{port}")


def test_up_with_a_state_dir_that_is_a_file_or_a_port_out_of_range_says_so(tmp_path: Path) -> None:
    a_file = tmp_path / "state"
    a_file.write_text("")
    result = cocoon("up", "--state-dir", str(a_file), "--no-chain")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("cocoon: ") and "Not a directory" in result.stderr
    result = cocoon("up", "--port", "70000", "--state-dir", str(tmp_path / "up"))
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--port" in result.stderr


def test_bad_config_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[proxy]\nlisten = 12\n")
    result = cocoon("proxy", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.startswith("cocoon: invalid proxy setting")
    assert len(result.stderr.strip().splitlines()) == 1
    broken = tmp_path / "broken.toml"
    broken.write_text("[proxy\n")
    result = cocoon("proxy", "--config", str(broken))
    assert result.returncode == 2 and "not valid TOML" in result.stderr
    result = cocoon("client", "--key-file", str(tmp_path / "c.key"))
    assert result.returncode == 2 and "needs a proxy" in result.stderr
    result = cocoon("worker", "--proxy", "nonsense")
    assert result.returncode == 2 and "HOST:PORT=PUBLIC_KEY" in result.stderr


def test_environment_overrides_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[client]\nlisten = "127.0.0.1:1"\n')
    result = subprocess.run(
        [*COCOON, "client", "--config", str(config), "--key-file", str(tmp_path / "k.key")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COCOON_CLIENT_PROXY": "127.0.0.1:1=zz"},
    )
    assert result.returncode == 2
    assert "public_key" in result.stderr  # the proxy pin came from the environment and was checked


def test_key_command_creates_a_private_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "node.key"
    first = cocoon("key", str(path))
    assert first.returncode == 0 and re.fullmatch(r"[0-9a-f]{64}\n", first.stdout)
    assert path.stat().st_mode & 0o777 == 0o600
    assert cocoon("key", str(path)).stdout == first.stdout
    path.chmod(0o644)
    refused = cocoon("key", str(path))
    assert refused.returncode == 2 and "chmod 600" in refused.stderr


def _descendants(pid: int) -> set[int]:
    children: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            children.add(int(entry.name))
    return children


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_up_once_answers_and_leaves_nothing_behind(tmp_path: Path) -> None:
    result = cocoon("up", "--once", "--port", "0", "--state-dir", str(tmp_path / "up"), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "network up: 1 proxy, 2 workers" in result.stdout
    assert "answer:" in result.stdout
    assert re.search(r"\d+ prompt tokens, [1-9]\d* completion tokens", result.stdout)
    assert "curl -s http://127.0.0.1:" in result.stdout
    assert "from openai import OpenAI" in result.stdout
    # the answer was paid for: its cost, and the worker's share in a payout voucher
    cost = re.search(r"cost: (\d+) nanoTON", result.stdout)
    assert cost and int(cost.group(1)) > 0, result.stdout
    earnings = [int(x) for x in re.findall(r"worker-\d has earned (\d+) nanoTON", result.stdout)]
    assert len(earnings) == 2 and sum(earnings) == int(cost.group(1)) - int(cost.group(1)) // 10, result.stdout
    assert "stopped 5 processes" in result.stdout
    for key in (tmp_path / "up" / "keys").iterdir():
        assert key.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_up_stops_every_process_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    up = subprocess.Popen(
        [*COCOON, "up", "--port", str(port), "--state-dir", str(tmp_path / "up")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        children: set[int] = set()
        while True:
            assert up.poll() is None, up.stdout.read() if up.stdout else ""
            children |= _descendants(up.pid)
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).json()["data"]
                if models and models[0]["id"] == MODEL and models[0]["workers"] == 2:
                    break
            except (httpx.HTTPError, ValueError, KeyError, IndexError):
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1.0)  # let `up` send its first request
        children |= _descendants(up.pid)
        for child in list(children):  # the chain service runs Node under `cocoon chain serve`
            children |= _descendants(child)
        assert len(children) == 6
        up.send_signal(sig)
        output, _ = up.communicate(timeout=30)
        assert up.returncode == 0, output
        assert "stopped 5 processes" in output
        assert not [pid for pid in children if _alive(pid)]
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
