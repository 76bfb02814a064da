"""TDX CCEL: the firmware's event log of what it measured into the RTMRs, and its replay.

A TDX quote carries only four RTMR values, each a hash chain. The event log (found through
the ACPI "CCEL" table) says what was hashed; replaying it must reproduce the quote's RTMRs,
and only then may a policy trust the events (kernel command line, boot loader, ...).

The log uses the TCG2 "crypto agile" format (TCG PC Client Platform Firmware Profile): one
legacy TCG_PCR_EVENT carrying the "Spec ID Event03" (which digest algorithms follow, and
their sizes), then TCG_PCR_EVENT2 records. In a CCEL log the PCR index is the MR index:
0 = MRTD, 1..4 = RTMR0..3. The log area is padded (0xFF, or zeros) after the last event.

Pure functions; every input is treated as hostile: sizes and counts are bounded and any
inconsistency raises ``MalformedEvidence`` (or ``AttestationError`` with code too_large).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cocoon.attest.errors import AttestationError, MalformedEvidence

EV_NO_ACTION = 0x3
TPM_ALG_SHA1 = 0x0004
TPM_ALG_SHA256 = 0x000B
TPM_ALG_SHA384 = 0x000C
TPM_ALG_SHA512 = 0x000D

CC_TYPE_SEV = 1
CC_TYPE_TDX = 2

RTMR_COUNT = 4
RTMR_SIZE = 48

CCEL_TABLE_SIZE = 56
MAX_TABLE_BYTES = 4096
# The log area seen in practice is 64-256 KiB; allow headroom but keep the work bounded.
MAX_LOG_BYTES = 4 * 1024 * 1024
MAX_EVENTS = 10_000
MAX_EVENT_DATA = 1024 * 1024
MAX_ALGORITHMS = 16
MAX_DIGEST_SIZE = 64

SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"


@dataclass(frozen=True)
class CcelTable:
    """The ACPI CCEL table: where firmware put the event log and for which TEE."""

    revision: int
    oem_id: bytes
    oem_table_id: bytes
    cc_type: int  # 1 = SEV, 2 = TDX
    cc_subtype: int
    log_area_min_length: int  # LAML
    log_area_start: int  # LASA, a guest-physical address


@dataclass(frozen=True)
class Event:
    """One log record. ``digests`` are (TPM_ALG id, digest) pairs in log order."""

    mr_index: int
    event_type: int
    digests: tuple[tuple[int, bytes], ...]
    data: bytes

    def digest(self, alg: int) -> bytes | None:
        for alg_id, value in self.digests:
            if alg_id == alg:
                return value
        return None


class _Reader:
    """Bounded little-endian reads; running out of data is malformed evidence."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining:
            raise MalformedEvidence(f"event log truncated in {what} at offset {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "little")


def parse_ccel_table(data: bytes) -> CcelTable:
    """Parse the 56-byte ACPI CCEL table (36-byte ACPI header, then CC type, subtype,
    reserved u16, LAML u64, LASA u64); the ACPI checksum must hold."""
    data = bytes(data)
    if len(data) > MAX_TABLE_BYTES:
        raise AttestationError("too_large", f"CCEL table is {len(data)} bytes")
    if len(data) < CCEL_TABLE_SIZE:
        raise MalformedEvidence(f"CCEL table is {len(data)} bytes, need {CCEL_TABLE_SIZE}")
    if data[0:4] != b"CCEL":
        raise MalformedEvidence("ACPI table signature is not CCEL")
    length = int.from_bytes(data[4:8], "little")
    if not CCEL_TABLE_SIZE <= length <= len(data):
        raise MalformedEvidence(f"CCEL table length field {length} is inconsistent")
    if sum(data[:length]) & 0xFF:
        raise MalformedEvidence("CCEL table checksum is wrong")
    return CcelTable(
        revision=data[8],
        oem_id=data[10:16],
        oem_table_id=data[16:24],
        cc_type=data[36],
        cc_subtype=data[37],
        log_area_min_length=int.from_bytes(data[40:48], "little"),
        log_area_start=int.from_bytes(data[48:56], "little"),
    )


def parse_event_log(data: bytes) -> list[Event]:
    """Parse a crypto-agile event log. The first event (the Spec ID event) is returned too,
    with its legacy SHA-1 digest field; parsing stops at the end of data or at padding."""
    data = bytes(data)
    if len(data) > MAX_LOG_BYTES:
        raise AttestationError("too_large", f"event log is {len(data)} bytes (max {MAX_LOG_BYTES})")
    r = _Reader(data)
    first = _parse_legacy_event(r)
    sizes = _parse_spec_id(first)
    events = [first]
    while r.remaining and not _at_padding(r):
        if len(events) >= MAX_EVENTS:
            raise AttestationError("too_large", f"event log has more than {MAX_EVENTS} events")
        events.append(_parse_event2(r, sizes))
    return events


def _parse_legacy_event(r: _Reader) -> Event:
    mr_index = r.uint(4, "first event")
    event_type = r.uint(4, "first event")
    sha1 = r.take(20, "first event")
    size = r.uint(4, "first event")
    if size > MAX_EVENT_DATA:
        raise AttestationError("too_large", f"first event claims {size} bytes of data")
    return Event(mr_index, event_type, ((TPM_ALG_SHA1, sha1),), r.take(size, "first event"))


def _parse_spec_id(event: Event) -> dict[int, int]:
    """TCG_EfiSpecIDEvent: signature, platformClass u32, version u8 x3, uintnSize u8,
    numberOfAlgorithms u32, {algorithmId u16, digestSize u16}*, vendorInfoSize u8, vendorInfo."""
    if event.event_type != EV_NO_ACTION or not event.data.startswith(SPEC_ID_SIGNATURE):
        raise MalformedEvidence("event log does not start with a 'Spec ID Event03' event")
    r = _Reader(event.data)
    r.take(len(SPEC_ID_SIGNATURE) + 4 + 4, "Spec ID event")
    count = r.uint(4, "Spec ID event")
    if not 1 <= count <= MAX_ALGORITHMS:
        raise MalformedEvidence(f"Spec ID event lists {count} digest algorithms")
    sizes: dict[int, int] = {}
    for _ in range(count):
        alg = r.uint(2, "Spec ID event")
        size = r.uint(2, "Spec ID event")
        if alg in sizes or not 1 <= size <= MAX_DIGEST_SIZE:
            raise MalformedEvidence(f"Spec ID event: bad entry for algorithm {alg:#06x} (size {size})")
        sizes[alg] = size
    r.take(r.uint(1, "Spec ID event"), "Spec ID vendor info")
    if r.remaining:
        raise MalformedEvidence("Spec ID event has trailing bytes")
    return sizes


def _at_padding(r: _Reader) -> bool:
    """The unused log area after the last event is all 0xFF (or zeros) from the next header."""
    head = r.data[r.pos : r.pos + 8]
    return head in (b"\xff" * len(head), b"\x00" * len(head))


def _parse_event2(r: _Reader, sizes: dict[int, int]) -> Event:
    at = r.pos
    mr_index = r.uint(4, "event header")
    event_type = r.uint(4, "event header")
    count = r.uint(4, "event header")
    if not 1 <= count <= len(sizes):
        raise MalformedEvidence(f"event at offset {at} has {count} digests")
    digests: list[tuple[int, bytes]] = []
    for _ in range(count):
        alg = r.uint(2, "event digest")
        size = sizes.get(alg)
        if size is None or any(alg == seen for seen, _ in digests):
            raise MalformedEvidence(f"event at offset {at}: unexpected digest algorithm {alg:#06x}")
        digests.append((alg, r.take(size, "event digest")))
    size = r.uint(4, "event size")
    if size > MAX_EVENT_DATA:
        raise AttestationError("too_large", f"event at offset {at} claims {size} bytes of data")
    return Event(mr_index, event_type, tuple(digests), r.take(size, "event data"))


def replay_rtmrs(events: Iterable[Event]) -> list[bytes]:
    """Recompute RTMR0..3: start from 48 zero bytes, RTMR = SHA384(RTMR || digest) for every
    event except EV_NO_ACTION (which by definition is not measured), MR index i -> RTMR[i-1]."""
    rtmrs = [bytes(RTMR_SIZE)] * RTMR_COUNT
    for n, event in enumerate(events):
        if event.event_type == EV_NO_ACTION:
            continue
        if not 1 <= event.mr_index <= RTMR_COUNT:
            raise MalformedEvidence(f"event {n} is for MR index {event.mr_index}, not an RTMR")
        digest = event.digest(TPM_ALG_SHA384)
        if digest is None or len(digest) != RTMR_SIZE:
            raise MalformedEvidence(f"event {n} has no SHA-384 digest")
        i = event.mr_index - 1
        rtmrs[i] = hashlib.sha384(rtmrs[i] + digest).digest()
    return rtmrs


def check_rtmrs(events: Iterable[Event], rtmrs_from_quote: Sequence[bytes]) -> None:
    """Raise ``rtmr_mismatch`` naming the first RTMR the log does not reproduce."""
    if len(rtmrs_from_quote) != RTMR_COUNT or any(len(v) != RTMR_SIZE for v in rtmrs_from_quote):
        raise MalformedEvidence(f"expected {RTMR_COUNT} RTMRs of {RTMR_SIZE} bytes from the quote")
    for i, (replayed, quoted) in enumerate(zip(replay_rtmrs(events), rtmrs_from_quote, strict=True)):
        if replayed != bytes(quoted):
            raise AttestationError(
                "rtmr_mismatch",
                f"RTMR{i}: event log replays to {replayed.hex()[:16]}…, quote has {bytes(quoted).hex()[:16]}…",
            )
