"""The quote parser on every real quote, and its bounds."""

from __future__ import annotations

import hashlib

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from cocoon.attest.errors import AttestationError, MalformedEvidence
from cocoon.attest.tdx import INTEL_QE_VENDOR_ID, MAX_QUOTE, TEE_TDX, parse_quote
from tests.unit.attest.conftest import vector

QUOTES = {
    "tdx/dcap-qvl/tdx_quote": (4, "td10", 70),
    "tdx/dcap-qvl/tdx_quote_outdated": (5, "td15", 0),
    "tdx/go-tdx-guest/quote_v5_sample.dat": (5, "td15", 0),
    "tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat": (4, "td10", 39),
    "tdx/go-tdx-guest/ccel/cos-113-tdx-quote.dat": (4, "td10", 3065),
}


@pytest.mark.parametrize("name", sorted(QUOTES))
def test_structure_of_real_quotes(name: str) -> None:
    version, body, trailing = QUOTES[name]
    quote = parse_quote(vector(name))
    assert quote.header.version == version
    assert quote.header.att_key_type == 2
    assert quote.header.tee_type == TEE_TDX
    assert quote.header.qe_vendor_id == INTEL_QE_VENDOR_ID
    assert quote.body_type == body
    assert quote.trailing == trailing  # QGS padding after the certification data is tolerated
    assert len(quote.signed) == (632 if version == 4 else 702)
    assert quote.qe_report.report_data == hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest() + bytes(
        32
    )
    chain = x509.load_pem_x509_certificates(quote.pem_chain())
    names = [c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value for c in chain]
    assert names == ["Intel SGX PCK Certificate", "Intel SGX PCK Platform CA", "Intel SGX Root CA"]
    assert quote.td is not None and not quote.td.debug


def test_sgx_v3_quote_parses() -> None:
    quote = parse_quote(vector("tdx/dcap-qvl/sgx_quote"))
    assert quote.header.version == 3 and quote.body_type == "sgx" and quote.enclave is not None


def test_ccel_quote_report_data_is_the_nonce() -> None:
    quote = parse_quote(vector("tdx/go-tdx-guest/ccel/cos-113-tdx-quote.dat"))
    assert quote.report_data == vector("tdx/go-tdx-guest/ccel/nonce.dat")


@pytest.mark.parametrize("cut", [10, 48, 200, 631, 640, 700, 1200, 4900])
def test_truncated_quotes_are_malformed(cut: int) -> None:
    with pytest.raises(MalformedEvidence, match="truncated"):
        parse_quote(vector("tdx/dcap-qvl/tdx_quote")[:cut])


def test_oversized_quote_is_malformed() -> None:
    with pytest.raises(MalformedEvidence, match="exceeds"):
        parse_quote(vector("tdx/dcap-qvl/tdx_quote") + bytes(MAX_QUOTE))


def test_unknown_version_and_key_type() -> None:
    quote = bytearray(vector("tdx/dcap-qvl/tdx_quote"))
    quote[0] = 9
    with pytest.raises(MalformedEvidence, match="version"):
        parse_quote(bytes(quote))
    quote = bytearray(vector("tdx/dcap-qvl/tdx_quote"))
    quote[2] = 3
    with pytest.raises(MalformedEvidence, match="key type"):
        parse_quote(bytes(quote))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=6000))
def test_random_bytes_only_raise_attestation_errors(data: bytes) -> None:
    try:
        parse_quote(data)
    except AttestationError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=4999), st.integers(min_value=1, max_value=255))
def test_mutated_real_quote_only_raises_attestation_errors(offset: int, xor: int) -> None:
    quote = bytearray(vector("tdx/dcap-qvl/tdx_quote"))
    quote[offset] ^= xor
    try:
        parse_quote(bytes(quote))
    except AttestationError:
        pass
