"""Intel TDX verification with dcap-qvl, against the Intel root pinned in ``roots``.

dcap-qvl checks the PCK chain and CRLs, the collateral signatures, the QE identity, the TCB
level and the quote signature. We add explicit, named errors for the collateral window, and
compute when a verdict must be re-checked: the earliest ``nextUpdate`` of the collateral.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass

import dcap_qvl
from cryptography import x509

from cocoon.attest.errors import AttestationError
from cocoon.attest.roots import INTEL_SGX_ROOT_CA_DER

MAX_COLLATERAL = 256 * 1024


@dataclass(frozen=True)
class DcapVerdict:
    status: str  # Intel TCB status: UpToDate, SWHardeningNeeded, OutOfDate, …
    advisories: tuple[str, ...]
    valid_from: int  # latest issue date of the collateral (unix seconds)
    valid_until: int  # earliest nextUpdate of the collateral


def _unix(text: str) -> int:
    return int(datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def collateral_window(collateral_json: bytes) -> tuple[int, int]:
    """(latest issue date, earliest next update) over TCB info, QE identity and both CRLs."""
    try:
        data = json.loads(collateral_json)
        starts, ends = [], []
        for key in ("tcb_info", "qe_identity"):
            body = json.loads(data[key])
            starts.append(_unix(body["issueDate"]))
            ends.append(_unix(body["nextUpdate"]))
        for key in ("pck_crl", "root_ca_crl"):
            crl = x509.load_der_x509_crl(bytes.fromhex(data[key]))
            starts.append(int(crl.last_update_utc.timestamp()))
            if crl.next_update_utc is not None:
                ends.append(int(crl.next_update_utc.timestamp()))
    except Exception as exc:  # any shape of untrusted JSON: a number for a date, deep nesting
        raise AttestationError("bad_collateral", f"collateral does not parse: {type(exc).__name__}") from exc
    return max(starts), min(ends)


def verify_tdx(quote: bytes, collateral_json: bytes, now: int) -> DcapVerdict:
    """Verify a real DCAP quote; raises ``AttestationError`` with a specific code."""
    if len(collateral_json) > MAX_COLLATERAL:
        raise AttestationError("bad_collateral", "collateral is too large")
    valid_from, valid_until = collateral_window(collateral_json)
    if now < valid_from:
        raise AttestationError("collateral_not_yet_valid", "the collateral was issued after the given time")
    if now >= valid_until:
        raise AttestationError("collateral_expired", "the collateral is past its nextUpdate")
    try:
        collateral = dcap_qvl.QuoteCollateralV3.from_json(collateral_json.decode())
        report = dcap_qvl.verify_with_root_ca(quote, collateral, INTEL_SGX_ROOT_CA_DER, now)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AttestationError(_code_of(str(exc)), f"DCAP verification failed: {exc}") from exc
    return DcapVerdict(str(report.status), tuple(report.advisory_ids), valid_from, valid_until)


def _code_of(message: str) -> str:
    lowered = message.lower()
    for needle, code in (
        ("no matching tcb level", "tcb_not_supported"),
        ("issue date is in the future", "collateral_not_yet_valid"),
        ("expired", "collateral_expired"),
        ("signature", "bad_signature"),
        ("revoked", "revoked"),
        ("attribute", "bad_attributes"),
    ):
        if needle in lowered:
            return code
    return "dcap_rejected"


def fmspc_of(pem_chain: bytes) -> str:
    """The platform's FMSPC (hex), which keys its collateral."""
    try:
        return bytes(dcap_qvl.parse_pck_extension_from_pem(pem_chain).fmspc).hex()
    except ValueError as exc:
        raise AttestationError("bad_chain", f"PCK certificate has no SGX extension: {exc}") from exc
