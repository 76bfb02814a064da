"""Attested hops with real processes: peers whose evidence fails the policy are refused."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.network import MODEL, Network, stream_until
from tests.unit.attest.conftest import VECTORS

pytestmark = pytest.mark.integration

LONG = [{"role": "user", "content": "Say hi."}]


def policy_file(path: Path, **roles: list[str] | str) -> Path:
    lines = ['mode = "development"', 'tees = ["sim"]']
    for role, images in roles.items():
        lines.append(f'[{role}]\nimage_hashes = {json.dumps(images)}\nmodel_hashes = "*"')
    path.write_text("\n".join(lines) + "\n")
    return path


def test_worker_with_an_image_not_allowed_cannot_join(tmp_path: Path) -> None:
    policy = policy_file(tmp_path / "policy.toml", worker=["00" * 32], proxy="*")
    net = Network(tmp_path / "net", workers=0, proxy={"policy": str(policy)})
    try:
        net.start_worker(1)
        net.nodes["proxy"].wait_for_log("image_not_allowed", timeout=30)
        net.nodes["worker-1"].wait_for_log("rejected by", timeout=30)
        answer = httpx.post(net.url + "/chat/completions", json={"model": MODEL, "messages": LONG}, timeout=10)
        assert answer.status_code == 503
    finally:
        net.stop()


def test_client_refuses_a_proxy_whose_evidence_fails(tmp_path: Path) -> None:
    policy = policy_file(tmp_path / "policy.toml", proxy=["00" * 32], worker="*")
    net = Network(tmp_path / "net", workers=0, client={"policy": str(policy)}, wait=False)
    try:
        net.nodes["client"].wait_for_log("image_not_allowed", timeout=30)
        answer = httpx.post(net.url + "/chat/completions", json={"model": MODEL, "messages": LONG}, timeout=10)
        assert answer.status_code == 503
        assert "attestation failed" in answer.json()["error"]["message"]
    finally:
        net.stop()


def test_production_policy_refuses_the_simulated_tee(tmp_path: Path) -> None:
    production = tmp_path / "production.toml"
    production.write_text('mode = "production"\n[proxy]\nimage_hashes = ["' + "00" * 32 + '"]\n')
    net = Network(tmp_path / "net", workers=0, client={"policy": str(production)}, wait=False)
    try:
        net.nodes["client"].wait_for_log("simulated_evidence", timeout=30)
    finally:
        net.stop()


def _attest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cocoon", "attest", *args], capture_output=True, text=True, timeout=60)


def test_attest_verify_command() -> None:
    tdx = VECTORS / "tdx" / "dcap-qvl"
    ok = _attest(
        "verify", str(tdx / "tdx_quote"), "--collateral", str(tdx / "tdx_quote_collateral.json"),
        "--now", "2025-07-01T00:00:00Z", "--json",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    result = json.loads(ok.stdout)
    assert result["status"] == "accepted" and result["tcb_status"] == "UpToDate"
    assert result["image_hash"] == _attest("image-hash", str(tdx / "tdx_quote")).stdout.strip()
    late = _attest(
        "verify", str(tdx / "tdx_quote"), "--collateral", str(tdx / "tdx_quote_collateral.json"),
        "--now", "2030-01-01T00:00:00Z", "--json",
    )  # fmt: skip
    assert late.returncode == 1 and json.loads(late.stdout)["reason"] == "collateral_expired"
    snp = VECTORS / "sev-snp" / "go-sev-guest"
    debug = _attest(
        "verify", str(snp / "attestation.bin"), "--vcek", str(snp / "vcek.der"),
        "--chain", str(snp / "ask_ark_milan.pem"), "--json",
    )  # fmt: skip
    assert debug.returncode == 1 and json.loads(debug.stdout)["reason"] == "debug_tee"


def test_attest_show_command() -> None:
    shown = _attest("show", str(VECTORS / "sev-snp" / "go-sev-guest" / "attestation.bin"), "--json")
    assert shown.returncode == 0
    fields = json.loads(shown.stdout)
    assert fields["tee"] == "sev-snp" and fields["debug"] is True and fields["migratable"] is False
    assert fields["report"]["policy"] == 0xB0000
    assert fields["report"]["report_data"].startswith("0102030405")
    readable = _attest("show", str(VECTORS / "tdx" / "go-tdx-guest" / "quote_v5_sample.dat"))
    assert "body_type: td15" in readable.stdout
    garbage = _attest("show", __file__)
    assert garbage.returncode == 2 and garbage.stderr.startswith("cocoon: ")


def _renewing_network(tmp_path: Path, fault: str, trusting: str = "proxy") -> Network:
    # The proxy (or the worker) trusts the other's evidence for 12 s here (3600 by default): the
    # connection must end then. Before it does, the proxy asks the worker to redial (or the
    # worker redials by itself); the old connection takes requests until the fresh one has
    # announced, then finishes them and the proxy closes it.
    policy = tmp_path / "policy.toml"
    policy.write_text('mode = "development"\ntees = ["sim"]\nmax_cache_seconds = 12\n'
                      '[proxy]\nimage_hashes = "*"\nmodel_hashes = "*"\n'
                      '[worker]\nimage_hashes = "*"\nmodel_hashes = "*"\n')  # fmt: skip
    settings = {"proxy": {}, "worker": {"reconnect_max": 1.0}}
    settings[trusting]["policy"] = str(policy)
    net = Network(tmp_path / "net", workers=0, **settings)
    net.start_worker(1, fault=fault)
    net.wait_workers(1)
    return net


def test_no_request_is_cut_when_a_workers_attestation_expires(tmp_path: Path) -> None:
    net = _renewing_network(tmp_path, "slow:0.1")  # about a second per answer below
    try:
        answered = stream_until(net.url, time.monotonic() + 22)  # past two renewals (at about 9 s and 18 s)
        assert answered >= 10
        proxy, worker = net.nodes["proxy"].log, net.nodes["worker-1"].log
        assert proxy.count("attestation expires soon") >= 2 and "attestation expired" not in proxy
        assert worker.count("connected to proxy") >= 3
    finally:
        net.stop()


def test_no_request_is_cut_when_a_workers_fresh_connection_announces_late(tmp_path: Path) -> None:
    # The proxy sends requests on the old connection until it reads the fresh one's announce,
    # here 2 s after the goodbye, or until half the notice is left (1.5 s after it, the last
    # call): the old connection must stay open for them (a worker that closed it a second after
    # its last request cut the one the proxy had just sent there). From the last call the
    # requests wait for the fresh connection: one started on the old connection then could
    # still be under way when its evidence ends, 3 s after the goodbye, and be cut there.
    net = _renewing_network(tmp_path, "slow:0.05,late_announce:2.0")
    try:
        answered = stream_until(net.url, time.monotonic() + 15)  # past the renewal at about 9 s
        assert answered >= 8
        proxy = net.nodes["proxy"].log
        assert proxy.count("attestation expires soon") >= 1 and "attestation expired" not in proxy
        assert "its fresh connection has not announced yet; requests wait for it" in proxy
        net.nodes["proxy"].wait_for_log("disconnected: no longer used: drained", timeout=10)
    finally:
        net.stop()


def test_a_worker_renews_its_connection_itself_when_the_proxys_evidence_expires_first(tmp_path: Path) -> None:
    # the worker trusts the proxy for 12 s, the proxy the worker for an hour: the proxy never
    # asks the worker to redial, and the worker must renew the connection before it ends
    net = _renewing_network(tmp_path, "slow:0.1", trusting="worker")
    try:
        answered = stream_until(net.url, time.monotonic() + 15)  # past the renewal at about 9 s
        assert answered >= 8
        worker = net.nodes["worker-1"].log
        assert "renewing the connection" in worker and "attestation expired" not in worker
        assert "asked to redial" not in net.nodes["proxy"].log
        net.nodes["proxy"].wait_for_log("disconnected: no longer used: drained", timeout=10)
    finally:
        net.stop()
