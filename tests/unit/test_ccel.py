"""CCEL table and event log parsing, RTMR replay against the real go-tdx-guest cos-113 quote."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cocoon.attest import ccel
from cocoon.attest.ccel import (
    CC_TYPE_TDX,
    EV_NO_ACTION,
    TPM_ALG_SHA256,
    TPM_ALG_SHA384,
    Event,
    check_rtmrs,
    parse_ccel_table,
    parse_event_log,
    replay_rtmrs,
)
from cocoon.attest.errors import AttestationError, MalformedEvidence

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "attestation" / "tdx" / "go-tdx-guest" / "ccel"
TABLE = (VECTORS / "ccel_table.dat").read_bytes()
LOG = (VECTORS / "ccel_data.dat").read_bytes()
QUOTE = (VECTORS / "cos-113-tdx-quote.dat").read_bytes()
NONCE = (VECTORS / "nonce.dat").read_bytes()

# TDX v4 quote: 48-byte header, then the 584-byte TD report body.
HEADER = 48
RTMR_OFFSETS = (328, 376, 424, 472)
REPORT_DATA_OFFSET = 520


def quote_rtmrs(quote: bytes) -> list[bytes]:
    assert int.from_bytes(quote[0:2], "little") == 4  # v4 layout
    body = quote[HEADER : HEADER + 584]
    return [body[off : off + 48] for off in RTMR_OFFSETS]


def event_bounds(events: list[Event]) -> list[tuple[int, int]]:
    """Byte range of each event in the encoded log (first event in the legacy format)."""
    bounds, pos = [], 0
    for n, e in enumerate(events):
        size = 32 + len(e.data) if n == 0 else 12 + sum(2 + len(d) for _, d in e.digests) + 4 + len(e.data)
        bounds.append((pos, pos + size))
        pos += size
    return bounds


def spec_id_event(algs: list[tuple[int, int]], mr_index: int = 1) -> bytes:
    body = ccel.SPEC_ID_SIGNATURE + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(algs))
    body += b"".join(struct.pack("<HH", a, s) for a, s in algs) + b"\x00"
    return struct.pack("<II", mr_index, EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(body)) + body


def event2(mr_index: int, event_type: int, digests: list[tuple[int, bytes]], data: bytes) -> bytes:
    out = struct.pack("<III", mr_index, event_type, len(digests))
    out += b"".join(struct.pack("<H", a) + d for a, d in digests)
    return out + struct.pack("<I", len(data)) + data


SHA384_ONLY = [(TPM_ALG_SHA384, 48)]


def d384(tag: bytes) -> list[tuple[int, bytes]]:
    return [(TPM_ALG_SHA384, hashlib.sha384(tag).digest())]


# -- CCEL table ------------------------------------------------------------------------------


def test_ccel_table_fields() -> None:
    t = parse_ccel_table(TABLE)
    assert t.cc_type == CC_TYPE_TDX and t.cc_subtype == 0
    assert t.log_area_min_length == 262144 == len(LOG)
    assert t.log_area_start == 0xBEDBF000
    assert t.oem_id == b"INTEL " and t.revision == 1


@pytest.mark.parametrize(
    "table",
    [b"", TABLE[:55], b"XCEL" + TABLE[4:], TABLE[:4] + (57).to_bytes(4, "little") + TABLE[8:], TABLE[:-1] + b"\x01"],
    ids=["empty", "short", "signature", "length", "checksum"],
)
def test_bad_ccel_tables_are_malformed(table: bytes) -> None:
    with pytest.raises(MalformedEvidence):
        parse_ccel_table(table)


def test_oversized_table_is_refused() -> None:
    with pytest.raises(AttestationError, match="too_large"):
        parse_ccel_table(TABLE + bytes(10000))


# -- the real log ----------------------------------------------------------------------------


def test_real_log_replays_to_the_quote_rtmrs() -> None:
    events = parse_event_log(LOG)
    measured = [e for e in events if e.event_type != EV_NO_ACTION]
    assert len(measured) == 43
    assert events[0].data.startswith(b"Spec ID Event03")
    rtmrs = replay_rtmrs(events)
    quoted = quote_rtmrs(QUOTE)
    assert rtmrs[:3] == quoted[:3]
    assert rtmrs[3] == quoted[3] == bytes(48)
    check_rtmrs(events, quoted)
    assert QUOTE[HEADER + REPORT_DATA_OFFSET : HEADER + REPORT_DATA_OFFSET + 64] == NONCE


def test_log_without_padding_parses_the_same() -> None:
    events = parse_event_log(LOG)
    end = event_bounds(events)[-1][1]
    assert set(LOG[end:]) == {0xFF}
    assert parse_event_log(LOG[:end]) == events


def test_tampered_digest_is_an_rtmr_mismatch() -> None:
    events = parse_event_log(LOG)
    n = next(i for i, e in enumerate(events) if e.mr_index == 2 and e.event_type != EV_NO_ACTION)
    start, _ = event_bounds(events)[n]
    tampered = bytearray(LOG)
    tampered[start + 12 + 2] ^= 1  # first byte of the SHA-384 digest
    with pytest.raises(AttestationError, match="RTMR1") as exc:
        check_rtmrs(parse_event_log(bytes(tampered)), quote_rtmrs(QUOTE))
    assert exc.value.code == "rtmr_mismatch"


def test_dropped_event_is_an_rtmr_mismatch() -> None:
    events = parse_event_log(LOG)
    last_rtmr2 = max(i for i, e in enumerate(events) if e.mr_index == 3)
    with pytest.raises(AttestationError, match="RTMR2") as exc:
        check_rtmrs(events[:last_rtmr2] + events[last_rtmr2 + 1 :], quote_rtmrs(QUOTE))
    assert exc.value.code == "rtmr_mismatch"


def test_wrong_quote_rtmr_count_is_malformed() -> None:
    events = parse_event_log(LOG)
    with pytest.raises(MalformedEvidence):
        check_rtmrs(events, quote_rtmrs(QUOTE)[:3])
    with pytest.raises(MalformedEvidence):
        check_rtmrs(events, [b"\x00" * 32] * 4)


def test_truncated_logs_are_malformed() -> None:
    events = parse_event_log(LOG)
    bounds = event_bounds(events)
    cuts = {1, 7, 31, 40}
    for start, end in bounds[:: max(1, len(bounds) // 12)]:
        cuts |= {start + 5, start + 13, end - 1}
    for cut in sorted(cuts):
        with pytest.raises(MalformedEvidence):
            parse_event_log(LOG[:cut])


def test_cut_at_an_event_boundary_gives_a_prefix() -> None:
    events = parse_event_log(LOG)
    for k, (_, end) in enumerate(event_bounds(events)[:10]):
        assert parse_event_log(LOG[:end]) == events[: k + 1]


def test_empty_log_is_malformed() -> None:
    with pytest.raises(MalformedEvidence):
        parse_event_log(b"")


# -- synthetic logs --------------------------------------------------------------------------


def test_zero_padding_ends_the_log() -> None:
    log = spec_id_event(SHA384_ONLY) + event2(1, 0x80000001, d384(b"a"), b"x") + bytes(4096)
    events = parse_event_log(log)
    assert len(events) == 2 and events[1].data == b"x"
    assert replay_rtmrs(events)[0] == hashlib.sha384(bytes(48) + hashlib.sha384(b"a").digest()).digest()


def test_no_action_events_are_not_replayed() -> None:
    log = spec_id_event(SHA384_ONLY) + event2(4, EV_NO_ACTION, d384(b"a"), b"")
    assert replay_rtmrs(parse_event_log(log)) == [bytes(48)] * 4


def test_multi_algorithm_events_use_the_sha384_digest() -> None:
    algs = [(TPM_ALG_SHA256, 32), (TPM_ALG_SHA384, 48)]
    digests = [(TPM_ALG_SHA256, hashlib.sha256(b"a").digest()), *d384(b"a")]
    events = parse_event_log(spec_id_event(algs) + event2(4, 0xD, digests, b"data"))
    assert events[1].digest(TPM_ALG_SHA256) == hashlib.sha256(b"a").digest()
    assert replay_rtmrs(events)[3] == hashlib.sha384(bytes(48) + hashlib.sha384(b"a").digest()).digest()


def test_event_without_sha384_cannot_be_replayed() -> None:
    algs = [(TPM_ALG_SHA256, 32)]
    events = parse_event_log(spec_id_event(algs) + event2(1, 0xD, [(TPM_ALG_SHA256, bytes(32))], b""))
    with pytest.raises(MalformedEvidence, match="SHA-384"):
        replay_rtmrs(events)


@pytest.mark.parametrize("mr_index", [0, 5, 0xFFFF])
def test_event_for_a_non_rtmr_index_cannot_be_replayed(mr_index: int) -> None:
    events = parse_event_log(spec_id_event(SHA384_ONLY) + event2(mr_index, 0xD, d384(b"a"), b""))
    with pytest.raises(MalformedEvidence, match="MR index"):
        replay_rtmrs(events)


@pytest.mark.parametrize(
    "log",
    [
        struct.pack("<II", 1, 0xD) + bytes(20) + struct.pack("<I", 4) + b"boot",  # no Spec ID event
        spec_id_event([]),
        spec_id_event([(TPM_ALG_SHA384, 48), (TPM_ALG_SHA384, 48)]),
        spec_id_event([(TPM_ALG_SHA384, 0)]),
        spec_id_event([(TPM_ALG_SHA384, 4096)]),
        spec_id_event(SHA384_ONLY) + event2(1, 0xD, [(TPM_ALG_SHA256, bytes(48))], b""),  # undeclared alg
        spec_id_event(SHA384_ONLY) + event2(1, 0xD, d384(b"a") * 2, b""),  # more digests than algs
        spec_id_event(SHA384_ONLY) + event2(1, 0xD, [], b""),  # no digests
    ],
    ids=["no-spec-id", "no-algs", "dup-alg", "zero-size", "huge-size", "undeclared", "too-many", "none"],
)
def test_inconsistent_logs_are_malformed(log: bytes) -> None:
    with pytest.raises(MalformedEvidence):
        parse_event_log(log)


def test_bounds_are_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AttestationError, match="too_large"):
        parse_event_log(bytes(ccel.MAX_LOG_BYTES + 1))
    huge = spec_id_event(SHA384_ONLY) + struct.pack("<III", 1, 0xD, 1) + struct.pack("<H", TPM_ALG_SHA384)
    huge += bytes(48) + struct.pack("<I", 0xFFFFFFF0)
    with pytest.raises(AttestationError, match="too_large"):
        parse_event_log(huge)
    monkeypatch.setattr(ccel, "MAX_EVENTS", 5)
    many = spec_id_event(SHA384_ONLY) + event2(1, 0xD, d384(b"a"), b"") * 10
    with pytest.raises(AttestationError, match="too_large"):
        parse_event_log(many)


# -- fuzz ------------------------------------------------------------------------------------


def _replay_and_check(data: bytes) -> None:
    try:
        events = parse_event_log(data)
        check_rtmrs(events, quote_rtmrs(QUOTE))
    except AttestationError:
        pass


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=1024))
def test_random_bytes_only_raise_attestation_error(data: bytes) -> None:
    _replay_and_check(data)
    _replay_and_check(spec_id_event(SHA384_ONLY) + data)
    try:
        parse_ccel_table(data)
    except AttestationError:
        pass


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    flips=st.lists(st.tuples(st.integers(0, 4095), st.integers(1, 255)), min_size=1, max_size=4),
    cut=st.integers(0, 4096),
)
def test_mutated_real_log_only_raises_attestation_error(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(LOG[:4096])
    for offset, xor in flips:
        data[offset] ^= xor
    _replay_and_check(bytes(data))
    _replay_and_check(bytes(data[:cut]))
