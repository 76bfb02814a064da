"""Claims, policy files, model hashes, the collateral store, the dev root and node evidence."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from cocoon.attest.claims import decode_claims, report_data_for
from cocoon.attest.collateral import CollateralStore
from cocoon.attest.errors import AttestationError, MalformedEvidence
from cocoon.attest.evidence import decode_evidence
from cocoon.attest.model_hash import model_hash
from cocoon.attest.node import build_attestation
from cocoon.attest.policy import PolicyError, load_policy
from cocoon.attest.provider import RENEW_BEFORE
from cocoon.attest.sim import SimAuthority
from tests.unit.attest.conftest import unix, vector
from tests.unit.attest.test_verifier import claims_for

COLLATERAL = "tdx/dcap-qvl/tdx_quote_collateral.json"


def test_claims_round_trip_and_report_data() -> None:
    raw = claims_for()
    claims = decode_claims(raw)
    assert claims.role == "worker" and len(report_data_for(raw)) == 64
    assert report_data_for(raw) == hashlib.sha512(b"cocoon/attest/claims/v1\x00" + raw).digest()
    with pytest.raises(MalformedEvidence):
        decode_claims(b"\x91\x01")
    with pytest.raises(MalformedEvidence):
        decode_claims(raw + bytes(5000))


def test_policy_files(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        'mode = "production"\ntcb_statuses = ["UpToDate", "SWHardeningNeeded"]\n[worker]\nimage_hashes = ["'
        + "ab" * 32
        + '"]\n'
    )
    policy = load_policy(good)
    assert policy.production and policy.worker.allows_image(bytes.fromhex("ab" * 32))
    assert not policy.worker.allows_image(bytes(32))
    for text, message in (
        ('tees = ["sim"]', "cannot accept the simulated TEE"),
        ('[worker]\nimage_hashes = "*"', "must list allowed image hashes"),
        ('tcb_statuses = ["Fine"]', "invalid policy"),
        ("[proxy\n", "invalid policy"),
        ("bogus = 1", "invalid policy"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(PolicyError, match=message):
            load_policy(bad)
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.toml")


def test_model_hash_of_a_file_and_a_directory(tmp_path: Path) -> None:
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"w" * 10_000)
    cache = tmp_path / "cache.json"
    assert model_hash(weights, cache) == hashlib.sha256(b"w" * 10_000).digest()
    assert json.loads(cache.read_text())  # remembered
    assert model_hash(weights, cache) == hashlib.sha256(b"w" * 10_000).digest()
    weights.write_bytes(b"changed")
    assert model_hash(weights, cache) == hashlib.sha256(b"changed").digest()  # size/mtime key
    folder = tmp_path / "hf"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"a")
    (folder / "sub" / "b.bin").write_bytes(b"b")
    manifest = f"{hashlib.sha256(b'a').hexdigest()}  a.bin\n{hashlib.sha256(b'b').hexdigest()}  sub/b.bin\n"
    assert model_hash(folder) == hashlib.sha256(manifest.encode()).digest()


def test_collateral_store_offline_and_refresh(tmp_path: Path) -> None:
    now = unix("2025-07-01T00:00:00Z")
    fetched: list[bytes] = []

    def fake_pcs(raw_quote: bytes) -> bytes:  # test double for the network fetch
        fetched.append(raw_quote)
        return vector(COLLATERAL)

    offline = CollateralStore(tmp_path)
    with pytest.raises(AttestationError) as excinfo:
        offline.get("b0c06f000000", b"quote", now)
    assert excinfo.value.code == "no_collateral"
    online = CollateralStore(tmp_path, fake_pcs)
    assert online.get("b0c06f000000", b"quote", now) == vector(COLLATERAL)
    assert online.get("b0c06f000000", b"quote", now) == vector(COLLATERAL)
    assert len(fetched) == 1  # the second came from disk
    assert offline.get("b0c06f000000", b"quote", now) == vector(COLLATERAL)
    online.get("b0c06f000000", b"quote", unix("2025-07-19T09:30:00Z"))  # within an hour of nextUpdate
    assert len(fetched) == 2

    def broken(raw_quote: bytes) -> bytes:  # test double: the PCS is unreachable
        raise OSError("unreachable")

    with pytest.raises(AttestationError, match="fetching collateral failed"):
        CollateralStore(tmp_path / "empty", broken).get("b0c06f000000", b"quote", now)


def test_dev_root_is_created_private_and_reused(tmp_path: Path) -> None:
    first = SimAuthority.load_or_create(tmp_path / "sim-tee")
    assert (tmp_path / "sim-tee").stat().st_mode & 0o777 == 0o700
    for name in ("root.key", "pck.key"):
        assert (tmp_path / "sim-tee" / name).stat().st_mode & 0o777 == 0o600
    assert SimAuthority.load_or_create(tmp_path / "sim-tee").root_der == first.root_der


def test_node_evidence_is_renewed_before_it_expires(tmp_path: Path) -> None:
    kit = build_attestation(role="worker", tee="sim", policy="development", data_dir=tmp_path, model_hash=bytes(32))
    key = bytes(range(32))
    now = int(time.time())
    first = kit.evidence(key, now=now)
    assert kit.evidence(key, now=now + 100) == first
    expires = kit.expires_at
    renewed = kit.evidence(key, now=expires - RENEW_BEFORE + 1)
    assert renewed != first and kit.expires_at > expires
    claims = decode_claims(decode_evidence(renewed).claims)
    assert claims.channel_key == key and claims.hpke_key == kit.hpke_public and claims.model_hash == bytes(32)
    verdict = kit.verifier.verify(renewed, role="worker", channel_key=key, now=expires - RENEW_BEFORE + 2)
    assert verdict.simulated
    assert build_attestation(role="client", tee="none", policy="development", data_dir=tmp_path).evidence(key) == b""


def test_nodes_starting_together_share_one_dev_root(tmp_path: Path) -> None:
    import concurrent.futures

    with concurrent.futures.ProcessPoolExecutor(4) as pool:
        roots = list(pool.map(_root_of, [tmp_path / "sim-tee"] * 8))
    assert len(set(roots)) == 1


def _root_of(directory: Path) -> bytes:
    return SimAuthority.load_or_create(directory).root_der


def test_configuration_is_measured_into_rtmr3_once_per_boot(tmp_path: Path) -> None:
    from cocoon.attest.node import measure_config

    sysfs = tmp_path / "measurements"
    sysfs.mkdir()
    (sysfs / "rtmr3:sha384").write_bytes(b"")  # test double for the kernel's write-only attribute
    marker = tmp_path / "run" / "rtmr3-config"
    config = hashlib.sha256(b"settings").digest()
    assert measure_config(config, marker, sysfs)
    assert (sysfs / "rtmr3:sha384").read_bytes() == hashlib.sha384(b"cocoon/config/v1\x00" + config).digest()
    assert not measure_config(config, marker, sysfs)  # a restart with the same config
    with pytest.raises(AttestationError) as excinfo:
        measure_config(hashlib.sha256(b"other").digest(), marker, sysfs)
    assert excinfo.value.code == "rtmr_conflict"
    assert not measure_config(config, tmp_path / "elsewhere", tmp_path / "no-tdx")  # no TDX: skipped
