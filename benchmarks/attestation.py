"""Attestation verification cost: one full verification and one cache hit.

Run: .venv/bin/python -m benchmarks.attestation
Prints the median of several timed batches for:
  - baseline: dcap-qvl's own verify() on the real TDX quote (the library alone),
  - full: our verification of that quote (parse + dcap-qvl with the pinned root + policy),
  - sim: a full verification of simulated evidence (parse, chain, signatures, claims, policy),
  - hit: a cache hit of the verifier (hash of the evidence + binding checks),
and the ratios full/baseline and hit/sim. Targets: full <= 2 ms, hit <= 20 us.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import dcap_qvl
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.timing import per_call
from cocoon.attest.claims import CLAIMS_VERSION, Claims, encode_claims
from cocoon.attest.evidence import EVIDENCE_VERSION, Evidence
from cocoon.attest.policy import Policy, RolePolicy, development_policy
from cocoon.attest.provider import SimQuoteSource, make_node_evidence
from cocoon.attest.sim import SimAuthority
from cocoon.attest.verifier import EvidenceVerifier
from cocoon.keys import public_bytes

VECTORS = Path(__file__).resolve().parents[1] / "tests" / "vectors" / "attestation" / "tdx" / "dcap-qvl"
NOW = int(datetime.datetime(2025, 7, 1, tzinfo=datetime.UTC).timestamp())


def main() -> None:
    quote = (VECTORS / "tdx_quote").read_bytes()
    collateral = (VECTORS / "tdx_quote_collateral.json").read_bytes()
    parsed_collateral = dcap_qvl.QuoteCollateralV3.from_json(collateral.decode())
    baseline = per_call(lambda: dcap_qvl.verify(quote, parsed_collateral, NOW), 200)

    claims = encode_claims(Claims(CLAIMS_VERSION, "worker", bytes(32), bytes(32), b"", "bench", NOW - 60, NOW + 3600))
    evidence = Evidence(version=EVIDENCE_VERSION, tee="tdx", quote=quote, claims=claims, collateral=collateral)
    real = EvidenceVerifier(Policy(worker=RolePolicy(image_hashes="*")))

    def full_tdx() -> None:
        real.check_platform(real.vendor_check(evidence, NOW), "worker")

    full = per_call(full_tdx, 200)

    authority = SimAuthority.generate(datetime.datetime.now(datetime.UTC))
    key = Ed25519PrivateKey.generate()
    now = int(time.time())
    raw = make_node_evidence(
        SimQuoteSource(authority), role="worker", channel_key=public_bytes(key), hpke_key=bytes(32), now=now
    ).raw
    channel_key = public_bytes(key)

    def sim_full() -> None:
        EvidenceVerifier(development_policy(), sim_root_der=authority.root_der).verify(
            raw, role="worker", channel_key=channel_key, now=now
        )

    sim = per_call(sim_full, 200)
    cached = EvidenceVerifier(development_policy(), sim_root_der=authority.root_der)
    cached.verify(raw, role="worker", channel_key=channel_key, now=now)
    hit = per_call(lambda: cached.verify(raw, role="worker", channel_key=channel_key, now=now), 20000)

    print(f"baseline dcap-qvl verify      {baseline * 1e6:9.1f} us")
    ratio = full / baseline
    print(f"full TDX verification         {full * 1e6:9.1f} us   ratio to baseline {ratio:5.2f}   target <= 2000 us")
    print(f"full simulated verification   {sim * 1e6:9.1f} us")
    print(f"cache hit                     {hit * 1e6:9.1f} us   ratio to full sim {hit / sim:7.4f}   target <= 20 us")


if __name__ == "__main__":
    main()
