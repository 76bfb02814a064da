"""Every DCAP case of expected.json, through our dcap-qvl wrapper with the pinned Intel root."""

from __future__ import annotations

import hashlib

import pytest

from cocoon.attest.dcap import collateral_window, verify_tdx
from cocoon.attest.errors import AttestationError
from cocoon.attest.roots import INTEL_SGX_ROOT_CA_DER
from tests.unit.attest.conftest import EXPECTED, unix, vector

REASON_CODES = {
    "no matching TCB level (TCB not supported)": "tcb_not_supported",
    "no matching TCB level; SEPT_VE_DISABLE=0": "tcb_not_supported",
    "collateral not yet valid": "collateral_not_yet_valid",
    "CRL / TCB info expired": "collateral_expired",
    "quote signature invalid": "bad_signature",
}


@pytest.mark.parametrize("case", EXPECTED["dcap_verify_cases"], ids=lambda c: f"{c['quote']}@{c['now']}")
def test_expected_dcap_case(case: dict) -> None:  # type: ignore[type-arg]
    quote = bytearray(vector(case["quote"]))
    if mutate := case.get("mutate"):
        quote[mutate["xor_byte_offset"]] ^= mutate["value"]
    collateral = vector(case["collateral"])
    expect = case["expect"]
    if expect["ok"]:
        verdict = verify_tdx(bytes(quote), collateral, unix(case["now"]))
        assert verdict.status == expect["status"]
        assert list(verdict.advisories) == expect["advisory_ids"]
        assert verdict.valid_from <= unix(case["now"]) < verdict.valid_until
    else:
        with pytest.raises(AttestationError) as excinfo:
            verify_tdx(bytes(quote), collateral, unix(case["now"]))
        assert excinfo.value.code == REASON_CODES[expect["reason"]]


def test_pinned_intel_root_is_the_real_one() -> None:
    assert hashlib.sha256(INTEL_SGX_ROOT_CA_DER).hexdigest() == EXPECTED["intel_root"]["sha256_der"]
    assert INTEL_SGX_ROOT_CA_DER == vector("intel-root/intel_sgx_root_ca.der")


def test_collateral_window_is_the_earliest_next_update() -> None:
    start, end = collateral_window(vector("tdx/dcap-qvl/tdx_quote_collateral.json"))
    assert start == unix("2025-06-19T10:32:27Z")
    assert end == unix("2025-07-19T10:00:35Z")


def test_garbage_collateral_is_a_named_error() -> None:
    with pytest.raises(AttestationError) as excinfo:
        verify_tdx(vector("tdx/dcap-qvl/tdx_quote"), b"{}", unix("2025-07-01T00:00:00Z"))
    assert excinfo.value.code == "bad_collateral"
    with pytest.raises(AttestationError) as excinfo:
        verify_tdx(vector("tdx/dcap-qvl/tdx_quote"), b"x" * 300_000, unix("2025-07-01T00:00:00Z"))
    assert excinfo.value.code == "bad_collateral"


@pytest.mark.parametrize(
    "collateral",
    [
        b"[" * 100_000,  # nested past the JSON parser's recursion limit
        b'{"tcb_info": "{\\"issueDate\\": 5, \\"nextUpdate\\": 6}", "qe_identity": "{}"}',  # a number for a date
        b'{"tcb_info": 7}',
    ],
)
def test_collateral_of_any_shape_is_a_named_error(collateral: bytes) -> None:
    with pytest.raises(AttestationError) as excinfo:
        collateral_window(collateral)
    assert excinfo.value.code == "bad_collateral"
