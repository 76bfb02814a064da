"""What ``cocoon attest`` shows: any quote, report or evidence file, field by field."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec

from cocoon.attest import sevsnp
from cocoon.attest.claims import decode_claims
from cocoon.attest.errors import AttestationError, MalformedEvidence
from cocoon.attest.evidence import EVIDENCE_VERSION, Evidence, Tee, decode_evidence
from cocoon.attest.image import snp_image_hash, tdx_image_hash
from cocoon.attest.sim import SIM_QE_VENDOR_ID
from cocoon.attest.tdx import parse_quote


def as_evidence(data: bytes) -> Evidence:
    """A file as an evidence envelope: an envelope already, or a bare TDX quote / SNP report
    wrapped in one (with no claims: only vendor checks and policy apply to it)."""
    if data[:1] in (b"\x80", b"\xde", b"\xdf") or 0x80 <= data[0] <= 0x8F:
        try:
            return decode_evidence(data)
        except MalformedEvidence:
            pass
    if len(data) == sevsnp.REPORT_SIZE:
        return Evidence(version=EVIDENCE_VERSION, tee="sev-snp", quote=data, claims=b"\x90")
    quote = parse_quote(data)
    tee: Tee = "sim" if quote.header.qe_vendor_id == SIM_QE_VENDOR_ID else "tdx"
    return Evidence(version=EVIDENCE_VERSION, tee=tee, quote=data, claims=b"\x90")


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def describe(data: bytes) -> dict[str, Any]:
    """Every field, as JSON-ready values (bytes as hex)."""
    evidence = as_evidence(data)
    result: dict[str, Any] = {"tee": evidence.tee}
    if evidence.claims != b"\x90":
        result["claims"] = _plain(msgspec.structs.asdict(decode_claims(evidence.claims)))
    if evidence.tee == "sev-snp":
        report = sevsnp.parse_report(evidence.quote)
        result["report"] = {k: v for k, v in _plain(report).items() if k != "signed"}
        result["debug"] = report.debug_allowed
        result["migratable"] = report.migrate_ma_allowed
        result["image_hash"] = snp_image_hash(report.measurement, report.host_data).hex()
    else:
        quote = parse_quote(evidence.quote)
        fields = _plain(quote)
        for hidden in ("signed", "cert_data"):
            fields.pop(hidden, None)
        fields["qe_report"].pop("raw", None)
        if fields.get("enclave"):
            fields["enclave"].pop("raw", None)
        result["quote"] = fields
        result["debug"] = quote.debug
        result["migratable"] = quote.td is not None and quote.td.migratable
        if quote.td is not None:
            result["image_hash"] = tdx_image_hash(quote.td).hex()
    for name in ("event_log", "collateral", "vcek", "cert_chain", "gpu_evidence"):
        if getattr(evidence, name):
            result[f"{name}_bytes"] = len(getattr(evidence, name))
    return result


def image_hash(data: bytes) -> bytes:
    evidence = as_evidence(data)
    if evidence.tee == "sev-snp":
        report = sevsnp.parse_report(evidence.quote)
        return snp_image_hash(report.measurement, report.host_data)
    quote = parse_quote(evidence.quote)
    if quote.td is None:
        raise AttestationError("tee_mismatch", "an SGX quote has no TD image")
    return tdx_image_hash(quote.td)
