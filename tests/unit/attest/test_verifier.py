"""The evidence verifier end to end: the simulated TEE, real quotes, and every rejection reason."""

from __future__ import annotations

import datetime
import hashlib
import time

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.attest import ccel, sim
from cocoon.attest.claims import CLAIMS_VERSION, Claims, encode_claims, report_data_for
from cocoon.attest.errors import AttestationError
from cocoon.attest.evidence import EVIDENCE_VERSION, Evidence, encode_evidence
from cocoon.attest.image import tdx_image_hash
from cocoon.attest.policy import Policy, PolicyError, RolePolicy, development_policy
from cocoon.attest.sim import SimAuthority, SimMeasurements
from cocoon.attest.tdx import parse_quote
from cocoon.attest.verifier import EvidenceVerifier
from cocoon.keys import public_bytes
from tests.unit.attest.conftest import unix, vector

# The real clock: the simulated authority (conftest) is made now, its certificates valid from a
# day before; a fixed date here made every simulated check fail as "expired" a day after it.
NOW = int(time.time())
KEY = public_bytes(Ed25519PrivateKey.generate())
MODEL = hashlib.sha256(b"weights").digest()


def claims_for(role: str = "worker", key: bytes = KEY, now: int = NOW, lifetime: int = 3600, **extra: object) -> bytes:
    fields: dict[str, object] = {
        "version": CLAIMS_VERSION,
        "role": role,
        "channel_key": key,
        "hpke_key": bytes(32),
        "model_hash": MODEL if role == "worker" else b"",
        "software": "cocoon-py/test",
        "not_before": now - 60,
        "not_after": now + lifetime,
        **extra,
    }
    return encode_claims(Claims(**fields))  # type: ignore[arg-type]


def sim_evidence(
    authority: SimAuthority,
    claims: bytes | None = None,
    measurements: SimMeasurements | None = None,
    **envelope: bytes,
) -> bytes:
    claims = claims if claims is not None else claims_for()
    quote = authority.quote(report_data_for(claims), measurements)
    return encode_evidence(Evidence(version=EVIDENCE_VERSION, tee="sim", quote=quote, claims=claims, **envelope))


def dev_verifier(authority: SimAuthority, **policy: object) -> EvidenceVerifier:
    base = msgspec.structs.asdict(development_policy())
    return EvidenceVerifier(msgspec.convert({**base, **policy}, Policy), sim_root_der=authority.root_der)


def reason(verifier: EvidenceVerifier, raw: bytes, *, role: str = "worker", key: bytes = KEY, now: int = NOW) -> str:
    with pytest.raises(AttestationError) as excinfo:
        verifier.verify(raw, role=role, channel_key=key, now=now)
    return excinfo.value.code


def test_simulated_evidence_verifies_under_the_development_policy(authority: SimAuthority) -> None:
    verdict = dev_verifier(authority).verify(sim_evidence(authority), role="worker", channel_key=KEY, now=NOW)
    assert verdict.simulated and verdict.tee == "sim"
    assert verdict.claims.model_hash == MODEL
    assert verdict.tcb_status == "UpToDate"
    quote = parse_quote(sim.SimAuthority.quote(authority, bytes(64)))
    assert quote.td is not None and verdict.image_hash == tdx_image_hash(quote.td)
    assert verdict.expires_at == NOW + 3600


# --- the rejections, each with its own reason --------------------------------------------------


def test_flipped_reportdata_breaks_the_quote_signature(authority: SimAuthority) -> None:
    claims = claims_for()
    quote = bytearray(authority.quote(report_data_for(claims)))
    quote[48 + 520] ^= 1  # REPORTDATA[0] of a v4 quote
    raw = encode_evidence(Evidence(version=1, tee="sim", quote=bytes(quote), claims=claims))
    assert reason(dev_verifier(authority), raw) == "bad_signature"


def test_claims_that_do_not_match_reportdata(authority: SimAuthority) -> None:
    quote = authority.quote(report_data_for(claims_for()))
    other = claims_for(software="cocoon-py/evil")
    raw = encode_evidence(Evidence(version=1, tee="sim", quote=quote, claims=other))
    assert reason(dev_verifier(authority), raw) == "claims_mismatch"


def test_channel_key_other_than_the_bound_key(authority: SimAuthority) -> None:
    other = public_bytes(Ed25519PrivateKey.generate())
    assert reason(dev_verifier(authority), sim_evidence(authority), key=other) == "key_mismatch"


def test_evidence_for_another_role(authority: SimAuthority) -> None:
    assert reason(dev_verifier(authority), sim_evidence(authority), role="proxy") == "wrong_role"


def test_expired_and_future_claims(authority: SimAuthority) -> None:
    raw = sim_evidence(authority)
    assert reason(dev_verifier(authority), raw, now=NOW + 7200) == "expired"
    assert reason(dev_verifier(authority), raw, now=NOW - 7200) == "not_yet_valid"


@pytest.mark.parametrize(
    ("attributes", "refused"),
    [
        (0x10000001, "debug_tee"),  # DEBUG
        (0x10000010, "debug_tee"),  # HGS+ profiling: the host observes the TD too (TUD, bits 7:0)
        (0x10000080, "debug_tee"),  # the last TUD bit
        (0x30000000, "migratable_tee"),  # MIGRATABLE: its memory may be moved to another platform
    ],
)
def test_a_td_under_debug_or_migratable_is_always_rejected(
    authority: SimAuthority, attributes: int, refused: str
) -> None:
    measurements = SimMeasurements(td_attributes=attributes)
    assert reason(dev_verifier(authority), sim_evidence(authority, measurements=measurements)) == refused
    other_bits = sim_evidence(authority, measurements=SimMeasurements(td_attributes=0x50000000))  # SEPT_VE_DISABLE, PKS
    assert dev_verifier(authority).verify(other_bits, role="worker", channel_key=KEY, now=NOW).tee == "sim"


def test_image_not_in_the_policy(authority: SimAuthority) -> None:
    verifier = dev_verifier(authority, worker={"image_hashes": ["00" * 32], "model_hashes": "*"})
    assert reason(verifier, sim_evidence(authority)) == "image_not_allowed"


def test_image_in_the_policy_is_accepted(authority: SimAuthority) -> None:
    quote = parse_quote(authority.quote(bytes(64)))
    assert quote.td is not None
    image = tdx_image_hash(quote.td).hex()
    verifier = dev_verifier(authority, worker={"image_hashes": [image], "model_hashes": [MODEL.hex()]})
    assert verifier.verify(sim_evidence(authority), role="worker", channel_key=KEY, now=NOW).image_hash.hex() == image


def test_model_not_in_the_policy(authority: SimAuthority) -> None:
    verifier = dev_verifier(authority, worker={"image_hashes": "*", "model_hashes": ["11" * 32]})
    assert reason(verifier, sim_evidence(authority)) == "model_not_allowed"


def test_a_verdict_cached_for_one_role_is_not_used_for_another(authority: SimAuthority) -> None:
    # A worker's evidence first presented as a proxy's (refused as the wrong role, once its
    # vendor and proxy-policy checks passed) must not skip the worker policy's checks later
    verifier = dev_verifier(authority, worker={"image_hashes": "*", "model_hashes": ["11" * 32]})
    raw = sim_evidence(authority)
    assert reason(verifier, raw, role="proxy", key=bytes(32)) == "wrong_role"
    assert reason(verifier, raw, role="worker") == "model_not_allowed"


def test_whatever_breaks_on_the_evidence_rejects_it(authority: SimAuthority, monkeypatch: pytest.MonkeyPatch) -> None:
    # fail closed: an unexpected error on untrusted evidence is a rejection the callers handle
    # (a worker's or client's connection loop), never an exception that ends them
    def broken(*args: object) -> object:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr("cocoon.attest.verifier.verify_sim_quote", broken)
    assert reason(dev_verifier(authority), sim_evidence(authority)) == "malformed"


def test_tcb_status_not_allowed() -> None:
    """A real, valid quote whose TCB status (UpToDate) this policy does not list."""
    now = unix("2025-07-01T00:00:00Z")
    raw = encode_evidence(
        Evidence(
            version=1,
            tee="tdx",
            quote=vector("tdx/dcap-qvl/tdx_quote"),
            claims=claims_for(now=now),
            collateral=vector("tdx/dcap-qvl/tdx_quote_collateral.json"),
        )
    )
    strict = EvidenceVerifier(Policy(tcb_statuses=["OutOfDate"], worker=RolePolicy(image_hashes=["00" * 32])))
    assert reason(strict, raw, now=now) == "tcb_status"
    # with UpToDate allowed, the real quote passes Intel's checks and then fails on the image
    default = EvidenceVerifier(Policy(worker=RolePolicy(image_hashes=["00" * 32])))
    assert reason(default, raw, now=now) == "image_not_allowed"
    # and with any image, on our claims (a real quote cannot bind claims we made up)
    lax = EvidenceVerifier(Policy(worker=RolePolicy(image_hashes="*")))
    assert reason(lax, raw, now=now) == "claims_mismatch"


@pytest.mark.parametrize(
    ("when", "code"),
    [("2025-06-01T00:00:00Z", "collateral_not_yet_valid"), ("2025-08-01T00:00:00Z", "collateral_expired")],
)
def test_collateral_outside_its_window(when: str, code: str) -> None:
    now = unix(when)
    raw = encode_evidence(
        Evidence(
            version=1,
            tee="tdx",
            quote=vector("tdx/dcap-qvl/tdx_quote"),
            claims=claims_for(now=now),
            collateral=vector("tdx/dcap-qvl/tdx_quote_collateral.json"),
        )
    )
    assert reason(EvidenceVerifier(Policy()), raw, now=now) == code


def test_simulated_evidence_under_the_production_policy(authority: SimAuthority) -> None:
    production = EvidenceVerifier(Policy(tees=["tdx", "sev-snp"]))
    assert reason(production, sim_evidence(authority)) == "simulated_evidence"
    with pytest.raises(ValueError, match="no simulated root"):
        EvidenceVerifier(Policy(), sim_root_der=authority.root_der)
    with pytest.raises(PolicyError):
        Policy(tees=["sim"]).check()


def test_simulated_quote_from_another_dev_root(authority: SimAuthority) -> None:
    stranger = SimAuthority.generate(datetime.datetime.now(datetime.UTC))
    assert reason(dev_verifier(authority), sim_evidence(stranger)) == "untrusted_root"


def test_tee_not_allowed_by_the_policy(authority: SimAuthority) -> None:
    raw = encode_evidence(Evidence(version=1, tee="sev-snp", quote=b"x", claims=claims_for()))
    assert reason(dev_verifier(authority, tees=["sim"]), raw) == "tee_not_allowed"


def test_truncated_and_oversized_quotes(authority: SimAuthority) -> None:
    claims = claims_for()
    quote = authority.quote(report_data_for(claims))
    truncated = encode_evidence(Evidence(version=1, tee="sim", quote=quote[:700], claims=claims))
    assert reason(dev_verifier(authority), truncated) == "malformed"
    oversized = msgspec.msgpack.encode({"version": 1, "tee": "sim", "quote": quote + bytes(70_000), "claims": claims})
    assert reason(dev_verifier(authority), oversized) == "malformed"


def test_non_canonical_claims_are_malformed(authority: SimAuthority) -> None:
    claims = claims_for()
    padded = claims[:-1] + b"\xd9\x00" if claims.endswith(b"\xa0") else claims + b"\x00"
    quote = authority.quote(report_data_for(padded))
    raw = encode_evidence(Evidence(version=1, tee="sim", quote=quote, claims=padded))
    assert reason(dev_verifier(authority), raw) == "malformed"


def test_real_sev_snp_report_is_rejected_for_its_debug_bit() -> None:
    raw = encode_evidence(
        Evidence(
            version=1,
            tee="sev-snp",
            quote=vector("sev-snp/go-sev-guest/attestation.bin"),
            claims=claims_for(),
            vcek=vector("sev-snp/go-sev-guest/vcek.der"),
            cert_chain=vector("sev-snp/go-sev-guest/ask_ark_milan.pem"),
        )
    )
    assert reason(EvidenceVerifier(Policy()), raw) == "debug_tee"


def test_an_sev_snp_guest_policy_that_allows_a_migration_agent_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    # the real report with its policy changed (DEBUG off, MIGRATE_MA on): its signature no longer
    # holds, so the signature check is a test double that accepts it, and the check after it runs
    from cocoon.attest import sevsnp

    report = bytearray(vector("sev-snp/go-sev-guest/attestation.bin"))
    policy = int.from_bytes(report[0x08:0x10], "little")
    report[0x08:0x10] = (policy & ~(1 << 19) | 1 << 18).to_bytes(8, "little")
    real = real_snp_tcb()  # (the unchanged report's, verified for real)
    monkeypatch.setattr(sevsnp, "verify_report", lambda *args: real)  # the signature check, accepting
    raw = encode_evidence(
        Evidence(
            version=1,
            tee="sev-snp",
            quote=bytes(report),
            claims=claims_for(),
            vcek=vector("sev-snp/go-sev-guest/vcek.der"),
            cert_chain=vector("sev-snp/go-sev-guest/ask_ark_milan.pem"),
        )
    )
    assert reason(EvidenceVerifier(Policy()), raw) == "migratable_tee"


def real_snp_tcb() -> object:
    from cocoon.attest import sevsnp

    report = sevsnp.parse_report(vector("sev-snp/go-sev-guest/attestation.bin"))
    now = datetime.datetime.fromtimestamp(NOW, datetime.UTC)
    return sevsnp.verify_report(
        report, vector("sev-snp/go-sev-guest/vcek.der"), vector("sev-snp/go-sev-guest/ask_ark_milan.pem"), now
    )


def test_sev_snp_is_rated_against_the_policys_minimum_tcb() -> None:
    # AMD rates no SEV-SNP TCB: without minimums, any firmware AMD ever issued a VCEK for would pass
    from cocoon.attest.policy import SnpMinTcb

    tcb = real_snp_tcb()
    assert (tcb.bootloader, tcb.snp, tcb.microcode) == (2, 5, 68)  # type: ignore[attr-defined]
    with pytest.raises(AttestationError) as excinfo:
        EvidenceVerifier(Policy()).snp_status(tcb)  # type: ignore[arg-type]
    assert excinfo.value.code == "tcb_status" and "sev_snp_min_tcb" in str(excinfo.value)
    at = Policy(sev_snp_min_tcb=SnpMinTcb(bootloader=2, snp=5, microcode=68))
    assert EvidenceVerifier(at).snp_status(tcb) == "UpToDate"  # type: ignore[arg-type]
    newer = Policy(sev_snp_min_tcb=SnpMinTcb(bootloader=2, snp=5, microcode=69))
    assert EvidenceVerifier(newer).snp_status(tcb) == "OutOfDate"  # type: ignore[arg-type]
    assert EvidenceVerifier(development_policy()).snp_status(tcb) == "UpToDate"  # type: ignore[arg-type]
    loaded = msgspec.convert({"sev_snp_min_tcb": {"snp": 22, "microcode": 213}}, Policy)
    assert loaded.sev_snp_min_tcb == SnpMinTcb(snp=22, microcode=213)


def test_event_log_must_replay_to_the_quoted_rtmrs(authority: SimAuthority) -> None:
    log = vector("tdx/go-tdx-guest/ccel/ccel_data.dat")
    rtmrs = ccel.replay_rtmrs(ccel.parse_event_log(log))
    matching = SimMeasurements(rtmrs=(rtmrs[0], rtmrs[1], rtmrs[2], rtmrs[3]))
    verifier = dev_verifier(authority)
    verdict = verifier.verify(
        sim_evidence(authority, measurements=matching, event_log=log), role="worker", channel_key=KEY, now=NOW
    )
    assert verdict.measurements["rtmr0"] == rtmrs[0].hex()
    other = SimMeasurements()  # the default registers do not match the log
    assert reason(verifier, sim_evidence(authority, measurements=other, event_log=log)) == "rtmr_mismatch"


# --- the cache -----------------------------------------------------------------------------------


def test_cache_skips_vendor_checks_but_not_the_binding(
    authority: SimAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real = sim.verify_sim_quote

    def counting(*args: object) -> object:
        nonlocal calls
        calls += 1
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr("cocoon.attest.verifier.verify_sim_quote", counting)
    verifier = dev_verifier(authority)
    raw = sim_evidence(authority)
    first = verifier.verify(raw, role="worker", channel_key=KEY, now=NOW)
    second = verifier.verify(raw, role="worker", channel_key=KEY, now=NOW + 10)
    assert first is second and calls == 1
    assert reason(verifier, raw, key=bytes(32)) == "key_mismatch"  # a hit still checks the key
    assert reason(verifier, raw, now=NOW + 3600) == "expired"  # and never outlives the claims
    assert calls == 1  # expired claims are refused before any vendor check


def test_cache_entry_never_outlives_policy_ttl(authority: SimAuthority) -> None:
    verifier = dev_verifier(authority, max_cache_seconds=60)
    verdict = verifier.verify(sim_evidence(authority), role="worker", channel_key=KEY, now=NOW)
    assert verdict.expires_at == NOW + 60


def test_a_verdict_near_its_expiry_is_made_anew(authority: SimAuthority) -> None:
    """A peer reconnecting to renew its trust shortly before the old verdict runs out must get a
    fresh lifetime, not the cached verdict's end."""
    verifier = dev_verifier(authority, max_cache_seconds=60)
    raw = sim_evidence(authority)
    first = verifier.verify(raw, role="worker", channel_key=KEY, now=NOW)
    assert verifier.verify(raw, role="worker", channel_key=KEY, now=NOW + 20) is first  # cached
    renewed = verifier.verify(raw, role="worker", channel_key=KEY, now=NOW + 45)  # within half the TTL of its end
    assert renewed is not first and renewed.expires_at == NOW + 45 + 60
