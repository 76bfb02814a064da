"""Verifying evidence: envelope → claims → vendor signatures → policy, with a cache.

Order matters for clear errors: cheap structural and policy checks first (simulated evidence
under a production policy is refused before anything is parsed), then the claims and their
binding to the channel key, then the vendor chain, then measurements, images and models.
Verdicts are cached by evidence hash until the earliest of the collateral's ``nextUpdate``,
the claims' ``not_after`` and the policy's ``max_cache_seconds``.
"""

from __future__ import annotations

import datetime
import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

from cocoon.attest import ccel, sevsnp
from cocoon.attest.claims import Claims, check_report_data, check_validity, decode_claims
from cocoon.attest.collateral import CollateralStore
from cocoon.attest.dcap import fmspc_of, verify_tdx
from cocoon.attest.errors import AttestationError, MalformedEvidence
from cocoon.attest.evidence import Evidence, decode_evidence
from cocoon.attest.image import snp_image_hash, tdx_image_hash, tdx_measurements
from cocoon.attest.policy import Policy
from cocoon.attest.sim import verify_sim_quote
from cocoon.attest.tdx import INTEL_QE_VENDOR_ID, TEE_TDX, parse_quote

REVERIFY_BEFORE = 120  # seconds: a cached verdict this close to expiry is made anew (at most half its TTL)


@dataclass(frozen=True)
class Verdict:
    tee: str
    simulated: bool
    claims: Claims
    image_hash: bytes
    tcb_status: str
    advisories: tuple[str, ...]
    expires_at: int
    measurements: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VendorVerdict:
    status: str
    advisories: tuple[str, ...]
    valid_until: int
    report_data: bytes
    image: bytes
    measurements: dict[str, str]


class EvidenceVerifier:
    def __init__(
        self,
        policy: Policy,
        *,
        collateral: CollateralStore | None = None,
        sim_root_der: bytes | None = None,
        cache_size: int = 1024,
    ) -> None:
        if policy.production and sim_root_der is not None:
            raise ValueError("a production verifier takes no simulated root")
        self.policy = policy
        self.collateral = collateral
        self.sim_root_der = sim_root_der
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, Verdict] = OrderedDict()

    def set_policy(self, policy: Policy) -> None:
        """Verify under ``policy`` from now on (the registry changed): forget cached verdicts."""
        if policy.production and self.sim_root_der is not None:
            raise ValueError("a production verifier takes no simulated root")
        self.policy = policy
        self._cache.clear()

    def verify(self, raw: bytes, *, role: str, channel_key: bytes, now: int) -> Verdict:
        """Verify ``raw`` evidence for a peer in ``role`` holding ``channel_key``."""
        # per role: the checks a role's policy adds (its images, a worker's model) are in the verdict
        digest = hashlib.sha256(raw).digest() + role.encode()
        verdict = self._cache.get(digest)
        # a verdict about to expire is made anew rather than reused: a peer that reconnects to
        # renew its trust before the old one runs out then gets a fresh lifetime
        renew_before = min(REVERIFY_BEFORE, self.policy.max_cache_seconds / 2)
        if verdict is None or now >= verdict.expires_at - renew_before:
            self._cache.pop(digest, None)
            try:
                verdict = self._verify(decode_evidence(raw), role, now)
            except AttestationError:
                raise
            except Exception as exc:  # evidence is untrusted: whatever breaks on it rejects it
                raise MalformedEvidence(f"the evidence could not be checked ({type(exc).__name__})") from exc
            self._cache[digest] = verdict
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(digest)
        self._check_binding(verdict.claims, role, channel_key, now)
        return verdict

    def _check_binding(self, claims: Claims, role: str, channel_key: bytes, now: int) -> None:
        if claims.role != role:
            raise AttestationError("wrong_role", f"evidence is for a {claims.role}, not a {role}")
        if claims.channel_key != channel_key:
            raise AttestationError("key_mismatch", "the channel key is not the key the evidence binds")
        check_validity(claims, now)

    def _verify(self, evidence: Evidence, role: str, now: int) -> Verdict:
        policy = self.policy
        if evidence.tee == "sim" and (policy.production or self.sim_root_der is None):
            raise AttestationError("simulated_evidence", "simulated TEE evidence is never accepted here")
        if evidence.tee not in policy.tees:
            raise AttestationError("tee_not_allowed", f"TEE {evidence.tee} is not allowed by the policy")
        claims = decode_claims(evidence.claims)
        role_policy = policy.for_role(role)
        check_validity(claims, now)
        vendor = self.vendor_check(evidence, now)
        # Vendor verdict first, then what this policy and these claims require of it.
        self.check_platform(vendor, role)
        check_report_data(evidence.claims, vendor.report_data)
        if role == "worker" and not role_policy.allows_model(claims.model_hash):
            raise AttestationError("model_not_allowed", f"model {claims.model_hash.hex()} is not allowed")
        return Verdict(
            tee=evidence.tee,
            simulated=evidence.tee == "sim",
            claims=claims,
            image_hash=vendor.image,
            tcb_status=vendor.status,
            advisories=vendor.advisories,
            expires_at=min(claims.not_after, now + policy.max_cache_seconds, vendor.valid_until),
            measurements=vendor.measurements,
        )

    def vendor_check(self, evidence: Evidence, now: int) -> VendorVerdict:
        """The TEE vendor's verdict on the quote or report alone (no claims, no policy)."""
        if evidence.tee == "sim" and (self.policy.production or self.sim_root_der is None):
            raise AttestationError("simulated_evidence", "simulated TEE evidence is never accepted here")
        return self._tdx(evidence, now) if evidence.tee in ("sim", "tdx") else self._snp(evidence, now)

    def check_platform(self, vendor: VendorVerdict, role: str) -> None:
        """The policy's demands on the platform: TCB status and image."""
        if vendor.status not in self.policy.tcb_statuses:
            raise AttestationError("tcb_status", f"TCB status {vendor.status} is not allowed by the policy")
        if not self.policy.for_role(role).allows_image(vendor.image):
            raise AttestationError("image_not_allowed", f"image {vendor.image.hex()} is not allowed for a {role}")

    def _tdx(self, evidence: Evidence, now: int) -> VendorVerdict:
        quote = parse_quote(evidence.quote)
        if quote.td is None or quote.header.tee_type != TEE_TDX:
            raise AttestationError("tee_mismatch", "evidence is not a TDX quote")
        status, advisories, valid_until = "UpToDate", tuple[str, ...](), 2**40
        if evidence.tee == "sim":
            assert self.sim_root_der is not None
            verify_sim_quote(evidence.quote, self.sim_root_der, datetime.datetime.fromtimestamp(now, datetime.UTC))
        else:
            if quote.header.qe_vendor_id != INTEL_QE_VENDOR_ID:
                raise AttestationError("untrusted_root", "quote is not from Intel's quoting enclave")
            collateral = evidence.collateral or self._collateral(evidence.quote, quote.pem_chain(), now)
            dcap = verify_tdx(evidence.quote, collateral, now)
            status, advisories, valid_until = dcap.status, dcap.advisories, dcap.valid_until
        # after the vendor checks, so that a report shows it verified, and why it is refused
        if quote.td.debug:
            raise AttestationError(
                "debug_tee", f"the TD runs under debug (TD attributes {quote.td.attributes:#x}: DEBUG or profiling)"
            )
        if quote.td.migratable:
            raise AttestationError(
                "migratable_tee", "the TD is migratable: its memory may be moved to another platform"
            )
        if evidence.event_log:
            ccel.check_rtmrs(ccel.parse_event_log(evidence.event_log), list(quote.td.rtmrs))
        return VendorVerdict(
            status, advisories, valid_until, quote.report_data, tdx_image_hash(quote.td), tdx_measurements(quote.td)
        )

    def _snp(self, evidence: Evidence, now: int) -> VendorVerdict:
        report = sevsnp.parse_report(evidence.quote)
        tcb = sevsnp.verify_report(
            report, evidence.vcek, evidence.cert_chain, datetime.datetime.fromtimestamp(now, datetime.UTC)
        )
        if report.debug_allowed:  # after the signature checks, so a report shows it verified
            raise AttestationError("debug_tee", "the SNP guest policy allows DEBUG")
        if report.migrate_ma_allowed:
            raise AttestationError(
                "migratable_tee", "the SNP guest policy allows a migration agent, which can move its memory elsewhere"
            )
        measurements = {"measurement": report.measurement.hex(), "host_data": report.host_data.hex()}
        image = snp_image_hash(report.measurement, report.host_data)
        return VendorVerdict(self.snp_status(tcb), (), 2**40, report.report_data, image, measurements)

    def snp_status(self, tcb: sevsnp.TcbVersion) -> str:
        """A TCB status for an SEV-SNP TCB, which AMD does not rate: "OutOfDate" below the
        policy's minimums, "UpToDate" at or above them. A production policy without minimums
        accepts no SEV-SNP platform: any firmware AMD ever signed a VCEK for would pass."""
        minimum = self.policy.sev_snp_min_tcb
        if minimum is None:
            if self.policy.production:
                raise AttestationError("tcb_status", "the policy sets no minimum SEV-SNP TCB (sev_snp_min_tcb)")
            return "UpToDate"
        return "OutOfDate" if minimum.below(tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode) else "UpToDate"

    def _collateral(self, raw_quote: bytes, pem_chain: bytes, now: int) -> bytes:
        if self.collateral is None:
            raise AttestationError("no_collateral", "no collateral with the evidence and no collateral store")
        return self.collateral.get(fmspc_of(pem_chain), raw_quote, now)
