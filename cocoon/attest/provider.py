"""Producing this node's evidence: claims → REPORTDATA → a quote from the TEE (or the sim)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cocoon import __version__
from cocoon.attest.claims import CLAIMS_VERSION, Claims, encode_claims, report_data_for
from cocoon.attest.errors import AttestationError
from cocoon.attest.evidence import EVIDENCE_VERSION, Evidence, Tee, encode_evidence
from cocoon.attest.sim import SimAuthority, SimMeasurements

log = logging.getLogger("cocoon.attest")

EVIDENCE_LIFETIME = 24 * 3600
RENEW_BEFORE = 2 * 3600


class QuoteSource(Protocol):
    tee: Tee

    def evidence_for(self, claims_bytes: bytes) -> Evidence: ...


class SimQuoteSource:
    """The simulated TEE (development and CI only)."""

    tee: Tee = "sim"

    def __init__(self, authority: SimAuthority, measurements: SimMeasurements | None = None) -> None:
        self.authority = authority
        self.measurements = measurements

    def evidence_for(self, claims_bytes: bytes) -> Evidence:
        quote = self.authority.quote(report_data_for(claims_bytes), self.measurements)
        return Evidence(version=EVIDENCE_VERSION, tee="sim", quote=quote, claims=claims_bytes)


class TsmQuoteSource:
    """A real TEE through Linux configfs-tsm (TDX or SEV-SNP)."""

    def __init__(self, root: Path | None = None, *, vcek: bytes = b"", cert_chain: bytes = b"",
                 event_log: bytes = b"") -> None:  # fmt: skip
        from cocoon.attest.configfs import TsmReportProvider

        self.provider = TsmReportProvider(root) if root else TsmReportProvider()
        self.vcek = vcek
        self.cert_chain = cert_chain
        self.event_log = event_log
        self.tee: Tee = "tdx"

    def evidence_for(self, claims_bytes: bytes) -> Evidence:
        report = self.provider.get_quote(report_data_for(claims_bytes))
        if report.provider.startswith("tdx"):
            self.tee = "tdx"
            return Evidence(
                version=EVIDENCE_VERSION, tee="tdx", quote=report.outblob, claims=claims_bytes, event_log=self.event_log
            )
        if report.provider.startswith("sev"):
            self.tee = "sev-snp"
            return Evidence(
                version=EVIDENCE_VERSION,
                tee="sev-snp",
                quote=report.outblob,
                claims=claims_bytes,
                vcek=self.vcek,
                cert_chain=self.cert_chain,
            )
        raise AttestationError("unknown_tee", f"configfs-tsm provider {report.provider!r} is not supported")


@dataclass
class NodeEvidence:
    """This node's current evidence and the claims it carries."""

    claims: Claims
    raw: bytes


def make_node_evidence(
    source: QuoteSource,
    *,
    role: str,
    channel_key: bytes,
    hpke_key: bytes,
    now: int,
    model_hash: bytes = b"",
    config_hash: bytes = b"",
    lifetime: int = EVIDENCE_LIFETIME,
) -> NodeEvidence:
    claims = Claims(
        version=CLAIMS_VERSION,
        role=role,  # type: ignore[arg-type]
        channel_key=channel_key,
        hpke_key=hpke_key,
        model_hash=model_hash,
        software=f"cocoon-py/{__version__}",
        not_before=now - 60,  # tolerate small clock skew between nodes
        not_after=now + lifetime,
        config_hash=config_hash,
    )
    claims_bytes = encode_claims(claims)
    evidence = source.evidence_for(claims_bytes)
    if source.tee == "sim":
        log.warning("SIMULATED TEE: this node's evidence is simulated and proves nothing about its code")
    return NodeEvidence(claims, encode_evidence(evidence))
