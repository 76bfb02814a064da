"""A node's attestation kit, built from its settings: how it proves itself (quote source,
claims, HPKE key) and how it checks its peers (policy, verifier, collateral, sim root)."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cocoon.attest.collateral import CollateralStore, pcs_fetcher
from cocoon.attest.errors import AttestationError
from cocoon.attest.policy import Policy, development_policy, load_policy
from cocoon.attest.provider import (
    RENEW_BEFORE,
    NodeEvidence,
    QuoteSource,
    SimQuoteSource,
    TsmQuoteSource,
    make_node_evidence,
)
from cocoon.attest.sim import SimAuthority
from cocoon.attest.verifier import EvidenceVerifier
from cocoon.seal.hpke import RecipientKey

log = logging.getLogger("cocoon.attest")


class NodeAttestation:
    def __init__(
        self,
        *,
        role: str,
        policy: Policy,
        verifier: EvidenceVerifier,
        source: QuoteSource | None,
        model_hash: bytes = b"",
        config_hash: bytes = b"",
    ) -> None:
        self.role = role
        self.config_hash = config_hash
        self.policy = policy
        self.verifier = verifier
        self.source = source
        self.model_hash = model_hash
        # The HPKE key that end-to-end sealed requests will be encrypted to; lives in memory only.
        self.hpke_key = X25519PrivateKey.generate()
        self._recipient: RecipientKey | None = None
        self._current: NodeEvidence | None = None

    @property
    def hpke_recipient(self) -> RecipientKey:
        if self._recipient is None:
            self._recipient = RecipientKey(self.hpke_key)
        return self._recipient

    @property
    def hpke_public(self) -> bytes:
        return self.hpke_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def evidence(self, channel_key: bytes, now: float | None = None) -> bytes:
        """Current evidence for ``channel_key``, renewed when it nears expiry; b"" without a TEE."""
        if self.source is None:
            return b""
        moment = int(time.time() if now is None else now)
        current = self._current
        if (
            current is None
            or current.claims.channel_key != channel_key
            or moment >= current.claims.not_after - RENEW_BEFORE
        ):
            current = self._current = make_node_evidence(
                self.source,
                role=self.role,
                channel_key=channel_key,
                hpke_key=self.hpke_public,
                model_hash=self.model_hash,
                config_hash=self.config_hash,
                now=moment,
            )
        return current.raw

    @property
    def expires_at(self) -> int:
        return self._current.claims.not_after if self._current else 0


def build_attestation(
    *,
    role: str,
    tee: str,
    policy: str,
    data_dir: Path,
    collateral_dir: str = "",
    pccs_url: str = "",
    sev_vcek: str = "",
    sev_chain: str = "",
    model_hash: bytes = b"",
    config_hash: bytes = b"",
    extend_rtmr: bool = False,
) -> NodeAttestation:
    if policy == "development":
        chosen = development_policy()
        log.warning("DEVELOPMENT attestation policy: simulated TEE evidence is ACCEPTED from peers")
    else:
        chosen = load_policy(Path(policy))
    sim_root = None if chosen.production else SimAuthority.load_or_create(data_dir / "sim-tee").root_der
    fetch = pcs_fetcher(None if pccs_url == "intel" else pccs_url) if pccs_url else None
    collateral = CollateralStore(Path(collateral_dir) if collateral_dir else data_dir / "collateral", fetch)
    verifier = EvidenceVerifier(chosen, collateral=collateral, sim_root_der=sim_root)
    source: QuoteSource | None
    if tee == "sim":
        source = SimQuoteSource(SimAuthority.load_or_create(data_dir / "sim-tee"))
    elif tee in ("tdx", "sev-snp"):
        source = TsmQuoteSource(
            vcek=Path(sev_vcek).read_bytes() if sev_vcek else b"",
            cert_chain=Path(sev_chain).read_bytes() if sev_chain else b"",
        )
    else:
        source = None
    if extend_rtmr and tee == "tdx" and config_hash:
        measure_config(config_hash)
    return NodeAttestation(
        role=role, policy=chosen, verifier=verifier, source=source, model_hash=model_hash, config_hash=config_hash
    )


BOOT_MARKER = Path("/run/cocoon/rtmr3-config")


def measure_config(config_hash: bytes, marker: Path = BOOT_MARKER, sysfs: Path | None = None) -> bool:
    """Extend RTMR3 with the node's configuration hash, once per boot (``/run`` is emptied at
    boot, so the marker there says whether this boot's RTMR3 already holds it). A restarted
    node with the same configuration does not extend again, so the image hash stays stable;
    one with another configuration is refused, since RTMR3 can never be taken back."""
    from cocoon.attest.configfs import RTMR_SYSFS, extend_rtmr

    if marker.exists():
        if marker.read_bytes() != config_hash:
            raise AttestationError("rtmr_conflict", "RTMR3 already measures another configuration this boot")
        return False
    digest = hashlib.sha384(b"cocoon/config/v1\x00" + config_hash).digest()
    try:
        extend_rtmr(3, digest, sysfs=sysfs or RTMR_SYSFS)
    except AttestationError as exc:
        log.info("configuration not measured into RTMR3: %s", exc)
        return False
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(config_hash)
    log.info("measured the configuration into RTMR3")
    return True
