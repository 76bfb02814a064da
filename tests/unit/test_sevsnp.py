"""SEV-SNP report parsing and verification against the real go-sev-guest vectors."""

from __future__ import annotations

import hashlib
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cocoon.attest import sevsnp
from cocoon.attest.errors import AttestationError, MalformedEvidence
from cocoon.attest.sevsnp import (
    ARK_SPKI_SHA256,
    REPORT_SIZE,
    SIGNED_SIZE,
    TcbVersion,
    decode_tcb,
    parse_report,
    verify_report,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "attestation" / "sev-snp" / "go-sev-guest"
REPORT = (VECTORS / "attestation.bin").read_bytes()
VCEK = (VECTORS / "vcek.der").read_bytes()
MILAN = (VECTORS / "ask_ark_milan.pem").read_bytes()
GENOA = (VECTORS / "ask_ark_genoa.pem").read_bytes()
TURIN = (VECTORS / "ask_ark_turin_vcek.pem").read_bytes()
NOW = datetime(2025, 7, 1, tzinfo=UTC)  # inside VCEK 2022-09-24..2029-09-24 and ASK/ARK windows


def code_of(exc: pytest.ExceptionInfo[AttestationError]) -> str:
    return exc.value.code


# -- parsing ---------------------------------------------------------------------------------


def test_report_fields_match_the_readme() -> None:
    r = parse_report(REPORT)
    assert r.version == 2
    assert r.policy == 0xB0000
    assert r.debug_allowed and r.smt_allowed
    assert not r.migrate_ma_allowed and not r.single_socket_required
    assert r.report_data[:5] == bytes.fromhex("0102030405")
    assert len(r.report_data) == 64 and len(r.measurement) == 48 and len(r.host_data) == 32
    assert len(r.chip_id) == 64 and len(r.family_id) == 16 and len(r.image_id) == 16
    assert r.signature_algo == 1 and r.signing_key == 0 and not r.mask_chip_key
    assert r.vmpl == 0
    assert r.signed == REPORT[:SIGNED_SIZE]
    assert r.signature_r == int.from_bytes(REPORT[0x2A0:0x2E8], "little")
    assert r.cpuid_fam_id is None  # v2 has no CPUID fields
    assert decode_tcb(r.reported_tcb, "Milan") == TcbVersion(bootloader=2, tee=0, snp=5, microcode=0x44)
    assert (r.current_major, r.current_minor, r.current_build) == (1, 0x31, 3)


def test_v3_report_exposes_cpuid_fields() -> None:
    data = bytearray(REPORT)
    data[0:4] = (3).to_bytes(4, "little")
    data[0x188:0x18B] = bytes([0x19, 0x01, 0x01])
    r = parse_report(bytes(data))
    assert (r.version, r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step) == (3, 0x19, 1, 1)


def test_turin_tcb_layout() -> None:
    raw = int.from_bytes(bytes([1, 2, 3, 4, 0, 0, 0, 9]), "little")
    assert decode_tcb(raw, "Turin") == TcbVersion(bootloader=2, tee=3, snp=4, microcode=9, fmc=1)


@pytest.mark.parametrize("size", [0, 1, REPORT_SIZE - 1, REPORT_SIZE + 1, 2 * REPORT_SIZE])
def test_wrong_size_is_malformed(size: int) -> None:
    data = (REPORT * 2)[:size]
    with pytest.raises(MalformedEvidence):
        parse_report(data)


@pytest.mark.parametrize("version", [0, 1, 4, 0xFFFFFFFF])
def test_unknown_version_is_malformed(version: int) -> None:
    data = version.to_bytes(4, "little") + REPORT[4:]
    with pytest.raises(MalformedEvidence, match="version"):
        parse_report(data)


# -- verification against the real chain ----------------------------------------------------


def test_real_report_verifies_with_the_milan_chain() -> None:
    verify_report(parse_report(REPORT), VCEK, MILAN, NOW)


@pytest.mark.parametrize("offset", [0x50, 0x90, 0x08, SIGNED_SIZE - 1])
def test_flipped_signed_byte_is_a_bad_signature(offset: int) -> None:
    data = bytearray(REPORT)
    data[offset] ^= 1
    with pytest.raises(AttestationError) as exc:
        verify_report(parse_report(bytes(data)), VCEK, MILAN, NOW)
    assert code_of(exc) == "bad_signature"


def test_flipped_signature_byte_is_a_bad_signature() -> None:
    data = bytearray(REPORT)
    data[0x2A0] ^= 1
    with pytest.raises(AttestationError) as exc:
        verify_report(parse_report(bytes(data)), VCEK, MILAN, NOW)
    assert code_of(exc) == "bad_signature"


@pytest.mark.parametrize("chain", [GENOA, TURIN], ids=["genoa", "turin"])
def test_chain_of_another_family_fails(chain: bytes) -> None:
    with pytest.raises(AttestationError) as exc:
        verify_report(parse_report(REPORT), VCEK, chain, NOW)
    assert code_of(exc) == "bad_chain"


def test_chain_in_wrong_order_fails() -> None:
    ask, ark = x509.load_pem_x509_certificates(MILAN)
    swapped = ark.public_bytes(serialization.Encoding.PEM) + ask.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(AttestationError) as exc:
        verify_report(parse_report(REPORT), VCEK, swapped, NOW)
    assert code_of(exc) in {"untrusted_root", "bad_chain"}


@pytest.mark.parametrize(
    ("now", "code"),
    [(datetime(2030, 1, 1, tzinfo=UTC), "cert_expired"), (datetime(2022, 1, 1, tzinfo=UTC), "cert_not_yet_valid")],
)
def test_validity_periods_are_checked_against_now(now: datetime, code: str) -> None:
    with pytest.raises(AttestationError) as exc:
        verify_report(parse_report(REPORT), VCEK, MILAN, now)
    assert code_of(exc) == code


def test_naive_now_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="timezone"):
        verify_report(parse_report(REPORT), VCEK, MILAN, datetime(2025, 1, 1))


def test_pinned_roots_are_the_amd_production_arks() -> None:
    """Recompute each pin from AMD's ARK (the second certificate of each go-sev-guest file)."""
    computed = {}
    for pem, family in ((MILAN, "Milan"), (GENOA, "Genoa"), (TURIN, "Turin")):
        ark = x509.load_pem_x509_certificates(pem)[1]
        assert ark.subject.rfc4514_string().startswith(f"CN=ARK-{family}")
        spki = ark.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        computed[hashlib.sha256(spki).hexdigest()] = family
    assert computed == dict(ARK_SPKI_SHA256)


@pytest.mark.parametrize(
    ("vcek", "chain"),
    [
        (b"", MILAN),
        (b"\x30\x82garbage", MILAN),
        (VCEK, b""),
        (VCEK, MILAN.split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"),
        (VCEK, MILAN + MILAN),
        (VCEK[:-10], MILAN),
    ],
)
def test_unusable_certificates_are_malformed(vcek: bytes, chain: bytes) -> None:
    with pytest.raises(MalformedEvidence):
        verify_report(parse_report(REPORT), vcek, chain, NOW)


def test_oversized_certificates_are_refused() -> None:
    with pytest.raises(AttestationError) as exc:
        verify_report(parse_report(REPORT), VCEK + bytes(20000), MILAN, NOW)
    assert code_of(exc) == "too_large"
    with pytest.raises(AttestationError) as exc:
        verify_report(parse_report(REPORT), VCEK, MILAN * 20, NOW)
    assert code_of(exc) == "too_large"


@pytest.mark.parametrize(
    ("offset", "value", "code"),
    [(0x34, 2, "unsupported_algorithm"), (0x48, 1 << 2, "unsupported_signing_key"), (0x48, 1 << 1, "bad_signature")],
)
def test_report_header_fields_are_judged(offset: int, value: int, code: str) -> None:
    data = bytearray(REPORT)
    data[offset : offset + 4] = value.to_bytes(4, "little")
    with pytest.raises(AttestationError) as exc:
        verify_report(parse_report(bytes(data)), VCEK, MILAN, NOW)
    assert code_of(exc) == code


# -- a self-made chain: everything valid except the root -------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test")]
    )


def _cert(
    subject: str,
    issuer: str,
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    signer: rsa.RSAPrivateKey,
    extensions: tuple[x509.UnrecognizedExtension, ...] = (),
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=365))
        .not_valid_after(NOW + timedelta(days=365))
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    return builder.sign(signer, hashes.SHA384(), rsa_padding=pss)


def _spl(oid: str, value: int) -> x509.UnrecognizedExtension:
    body = value.to_bytes(2 if value & 0x80 else 1, "big")
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), bytes([0x02, len(body)]) + body)


class SelfMadeChain:
    """A root/ASK/VCEK chain shaped like AMD's, and reports signed by its VCEK."""

    def __init__(self, chip_id: bytes, tcb: TcbVersion) -> None:
        ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.vcek_key = ec.generate_private_key(ec.SECP384R1())
        ark = _cert("ARK-Test", "ARK-Test", ark_key.public_key(), ark_key)
        ask = _cert("SEV-Test", "ARK-Test", ask_key.public_key(), ark_key)
        exts = (
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4"), chip_id),
            _spl("1.3.6.1.4.1.3704.1.3.1", tcb.bootloader),
            _spl("1.3.6.1.4.1.3704.1.3.2", tcb.tee),
            _spl("1.3.6.1.4.1.3704.1.3.3", tcb.snp),
            _spl("1.3.6.1.4.1.3704.1.3.8", tcb.microcode),
        )
        vcek = _cert("SEV-VCEK", "SEV-Test", self.vcek_key.public_key(), ask_key, exts)
        self.vcek_der = vcek.public_bytes(serialization.Encoding.DER)
        self.chain_pem = ask.public_bytes(serialization.Encoding.PEM) + ark.public_bytes(serialization.Encoding.PEM)
        spki = ark_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.pins = {hashlib.sha256(spki).hexdigest(): "Milan"}

    def sign(self, signed: bytes) -> bytes:
        r, s = decode_dss_signature(self.vcek_key.sign(signed, ec.ECDSA(hashes.SHA384())))
        sig = r.to_bytes(72, "little") + s.to_bytes(72, "little")
        return signed + sig + bytes(REPORT_SIZE - SIGNED_SIZE - len(sig))


@pytest.fixture(scope="module")
def self_made() -> SelfMadeChain:
    real = parse_report(REPORT)
    return SelfMadeChain(real.chip_id, decode_tcb(real.reported_tcb, "Milan"))


def test_self_made_chain_is_rejected_for_its_root_only(self_made: SelfMadeChain) -> None:
    report = parse_report(self_made.sign(REPORT[:SIGNED_SIZE]))
    with pytest.raises(AttestationError) as exc:
        verify_report(report, self_made.vcek_der, self_made.chain_pem, NOW)
    assert code_of(exc) == "untrusted_root"
    # Everything else about the chain is valid: with its root pinned it would pass.
    sevsnp._verify_report(report, self_made.vcek_der, self_made.chain_pem, NOW, self_made.pins)


def test_vcek_for_another_tcb_is_refused(self_made: SelfMadeChain) -> None:
    data = bytearray(REPORT[:SIGNED_SIZE])
    data[0x180] += 1  # REPORTED_TCB bootloader SPL one above what the VCEK was issued for
    report = parse_report(self_made.sign(bytes(data)))
    with pytest.raises(AttestationError) as exc:
        sevsnp._verify_report(report, self_made.vcek_der, self_made.chain_pem, NOW, self_made.pins)
    assert code_of(exc) == "vcek_mismatch"


def test_vcek_for_another_chip_is_refused(self_made: SelfMadeChain) -> None:
    data = bytearray(REPORT[:SIGNED_SIZE])
    data[0x1A0] ^= 0xFF  # CHIP_ID
    report = parse_report(self_made.sign(bytes(data)))
    with pytest.raises(AttestationError) as exc:
        sevsnp._verify_report(report, self_made.vcek_der, self_made.chain_pem, NOW, self_made.pins)
    assert code_of(exc) == "vcek_mismatch"


def test_real_vcek_with_self_made_chain_is_a_bad_chain(self_made: SelfMadeChain) -> None:
    with pytest.raises(AttestationError) as exc:
        sevsnp._verify_report(parse_report(REPORT), VCEK, self_made.chain_pem, NOW, self_made.pins)
    assert code_of(exc) == "bad_chain"


def test_vcek_warning_is_suppressed_only_locally() -> None:
    """The deprecation about the VCEK's serial 0 is silenced inside verify_report only."""
    verify_report(parse_report(REPORT), VCEK, MILAN, NOW)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x509.load_der_x509_certificate(VCEK)
    assert any("serial number" in str(w.message) for w in caught)


# -- fuzz ------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=2 * REPORT_SIZE), st.binary(min_size=REPORT_SIZE, max_size=REPORT_SIZE)))
def test_random_bytes_only_raise_attestation_error(data: bytes) -> None:
    try:
        report = parse_report(data)
    except AttestationError:
        return
    with pytest.raises(AttestationError):
        verify_report(report, VCEK, MILAN, NOW)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(min_size=REPORT_SIZE, max_size=REPORT_SIZE),
    version=st.sampled_from([2, 3]),
    algo=st.sampled_from([0, 1, 2]),
)
def test_random_reports_only_raise_attestation_error(body: bytes, version: int, algo: int) -> None:
    data = bytearray(body)
    data[0:4] = version.to_bytes(4, "little")
    data[0x34:0x38] = algo.to_bytes(4, "little")
    data[0x48:0x4C] = bytes(4)  # VCEK-signed, unmasked: reach the signature check
    report = parse_report(bytes(data))
    with pytest.raises(AttestationError):
        verify_report(report, VCEK, MILAN, NOW)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(vcek=st.binary(max_size=2048), chain=st.binary(max_size=2048), cut=st.integers(0, len(VCEK)))
def test_random_certificates_only_raise_attestation_error(vcek: bytes, chain: bytes, cut: int) -> None:
    report = parse_report(REPORT)
    for v, c in ((vcek, MILAN), (VCEK, chain), (VCEK[:cut] + vcek, MILAN), (VCEK, MILAN[: cut * 3] + chain)):
        try:
            verify_report(report, v, c, NOW)
        except AttestationError:
            pass


def test_unknown_certificate_version_is_malformed() -> None:
    vcek = bytearray(VCEK)
    assert vcek[8:13] == bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2 (= v3)
    vcek[12] = 8
    with pytest.raises(MalformedEvidence):
        verify_report(parse_report(REPORT), bytes(vcek), MILAN, NOW)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(flips=st.lists(st.tuples(st.integers(0, len(VCEK) - 1), st.integers(1, 255)), min_size=1, max_size=3))
@example(flips=[(133, 1)])  # an issuer attribute turned into a country name 11 bytes long: warned as it was read
def test_mutated_vcek_only_raises_attestation_error(flips: list[tuple[int, int]]) -> None:
    vcek = bytearray(VCEK)
    for offset, xor in flips:
        vcek[offset] ^= xor
    try:
        verify_report(parse_report(REPORT), bytes(vcek), MILAN, NOW)
    except AttestationError:
        pass
