"""Producing evidence on real hardware: Linux configfs-tsm, /dev/tdx_guest, RTMR extension.

This is the only attestation module that touches the system. Every kernel interaction goes
through a small, injectable seam (``ConfigfsOps``, the ``ioctl`` callable, the sysfs path) so
that tests can stand in for the kernel with the real quote bytes from the test vectors.

configfs-tsm (Linux 6.7+, Documentation/ABI/testing/configfs-tsm-report) is the one ABI for
both TDX and SEV-SNP: mkdir an entry under /sys/kernel/config/tsm/report, write up to 64
bytes to ``inblob``, read ``outblob`` (the quote / report, generated on read), ``provider``
("tdx_guest" or "sev_guest") and, for SEV, ``auxblob`` (the certificate table, if the host
supplied one). ``generation`` counts writes to the entry; another writer on the same entry
shows up as an unexpected count, and then the outblob may hold *their* report data.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cocoon.attest.errors import AttestationError

TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")
TDX_GUEST_DEVICE = Path("/dev/tdx_guest")
RTMR_SYSFS = Path("/sys/class/misc/tdx_guest/measurements")

REPORT_DATA_SIZE = 64
# The kernel allows up to 16 MiB; real quotes are ~5-8 KB and certificate tables a few KB.
MAX_BLOB = 1024 * 1024
MAX_SMALL_ATTR = 64

PROVIDERS: dict[str, Literal["tdx", "sev-snp"]] = {"tdx_guest": "tdx", "sev_guest": "sev-snp"}

TeeKind = Literal["tdx", "sev-snp"]


@dataclass(frozen=True)
class TsmReport:
    provider: str  # "tdx_guest" or "sev_guest"
    outblob: bytes  # TDX: the quote; SEV: the 0x4A0-byte attestation report
    auxblob: bytes | None  # SEV: the GUID-keyed certificate table (VCEK, ASK, ARK), if any


class ConfigfsOps:
    """The file operations done on configfs, one per syscall the ABI expects.

    configfs attributes must be written in one ``write`` and are never created or truncated
    by user space; a subclass can play the kernel's part in tests."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def write(self, path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)  # configfs binary attributes commit on close; errors surface here
        if written != len(data):
            raise OSError(f"short write to {path}: {written} of {len(data)} bytes")

    def read(self, path: Path, limit: int) -> bytes:
        """Read to EOF, but never more than ``limit + 1`` bytes (so the caller sees excess)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks: list[bytes] = []
            total = 0
            while total <= limit:
                chunk = os.read(fd, min(65536, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)


def _check_report_data(report_data: bytes) -> bytes:
    if not isinstance(report_data, bytes | bytearray | memoryview) or len(report_data) != REPORT_DATA_SIZE:
        raise AttestationError("bad_report_data", f"report data must be exactly {REPORT_DATA_SIZE} bytes")
    return bytes(report_data)


def _entry_name() -> str:
    return f"cocoon-{os.getpid()}-{secrets.token_hex(8)}"


class TsmReportProvider:
    """Quotes (TDX) or reports (SEV-SNP) through configfs-tsm, one fresh entry per request."""

    def __init__(
        self,
        root: Path = TSM_REPORT_ROOT,
        *,
        ops: ConfigfsOps | None = None,
        entry_name: Callable[[], str] = _entry_name,
    ) -> None:
        self.root = root
        self.ops = ops or ConfigfsOps()
        self.entry_name = entry_name

    def get_quote(self, report_data: bytes) -> TsmReport:
        """Evidence binding ``report_data`` (exactly 64 bytes: e.g. a hash of the channel key
        and a nonce). Raises ``AttestationError``; the entry is always removed."""
        report_data = _check_report_data(report_data)
        entry = self.root / self.entry_name()
        try:
            self.ops.mkdir(entry)
        except FileNotFoundError:
            raise AttestationError("tsm_unavailable", f"{self.root} does not exist (no configfs-tsm)") from None
        except OSError as e:
            raise AttestationError("tsm_error", f"cannot create {entry}: {e}") from None
        try:
            report = self._collect(entry, report_data)
        except BaseException:
            with contextlib.suppress(OSError):
                self.ops.rmdir(entry)
            raise
        try:
            self.ops.rmdir(entry)
        except OSError as e:
            raise AttestationError("tsm_error", f"cannot remove {entry}: {e}") from None
        return report

    def provider(self) -> str:
        """The provider name, from a probe entry that is removed again (no report is made)."""
        entry = self.root / self.entry_name()
        try:
            self.ops.mkdir(entry)
        except OSError as e:
            raise AttestationError("tsm_unavailable", f"cannot create {entry}: {e}") from None
        try:
            return self._provider(entry)
        except OSError as e:
            raise AttestationError("tsm_error", f"{entry.name}: {e}") from None
        finally:
            with contextlib.suppress(OSError):
                self.ops.rmdir(entry)

    def _collect(self, entry: Path, report_data: bytes) -> TsmReport:
        try:
            before = self._generation(entry)
            self.ops.write(entry / "inblob", report_data)
            generation = self._generation(entry)
            if generation != before + 1:
                raise AttestationError("tsm_race", f"{entry.name}: generation {before} -> {generation} after one write")
            outblob = self._read(entry / "outblob", MAX_BLOB)
            provider = self._provider(entry)
            auxblob = self._auxblob(entry) if provider == "sev_guest" else None
            if self._generation(entry) != generation:
                raise AttestationError("tsm_race", f"{entry.name} was written by someone else while reading")
        except OSError as e:
            raise AttestationError("tsm_error", f"{entry.name}: {e}") from None
        if not outblob:
            raise AttestationError("tsm_error", f"{entry.name}: empty outblob")
        return TsmReport(provider=provider, outblob=outblob, auxblob=auxblob)

    def _read(self, path: Path, limit: int) -> bytes:
        data = self.ops.read(path, limit)
        if len(data) > limit:
            raise AttestationError("too_large", f"{path.name} is larger than {limit} bytes")
        return data

    def _generation(self, entry: Path) -> int:
        text = self._read(entry / "generation", MAX_SMALL_ATTR).strip()
        if not text.isdigit():
            raise AttestationError("tsm_error", f"{entry.name}: generation is not a number")
        return int(text)

    def _provider(self, entry: Path) -> str:
        name = self._read(entry / "provider", MAX_SMALL_ATTR).strip().decode("ascii", "replace")
        if name not in PROVIDERS:
            raise AttestationError("tsm_error", f"unknown configfs-tsm provider {name[:32]!r}")
        return name

    def _auxblob(self, entry: Path) -> bytes | None:
        try:
            data = self._read(entry / "auxblob", MAX_BLOB)
        except FileNotFoundError:  # older kernels, or attribute hidden
            return None
        return data or None


# -- /dev/tdx_guest: the TDREPORT, for kernels without configfs-tsm ---------------------------

_IOC_WRITE = 1
_IOC_READ = 2


def _iowr(kind: str, nr: int, size: int) -> int:
    """Linux _IOWR(type, nr, size): direction in bits 31:30, size 29:16, type 15:8, nr 7:0."""
    return ((_IOC_READ | _IOC_WRITE) << 30) | (size << 16) | (ord(kind) << 8) | nr


TDX_REPORT_SIZE = 1024
# struct tdx_report_req { __u8 reportdata[64]; __u8 tdreport[1024]; } (linux/tdx-guest.h)
TDX_CMD_GET_REPORT0 = _iowr("T", 1, REPORT_DATA_SIZE + TDX_REPORT_SIZE)  # 0xC4405401
TDREPORT_REPORTDATA_OFFSET = 128  # inside REPORTMACSTRUCT, the first 256 bytes of TDREPORT

IoctlFn = Callable[[int, int, bytearray], object]


class TdxGuestDevice:
    """TDX_CMD_GET_REPORT0 through /dev/tdx_guest.

    A TDREPORT is MAC'ed for this platform only: turning it into a remotely verifiable quote
    needs the host's Quote Generation Service (QGS) and its quoting enclave. The legacy
    TDX_CMD_GET_QUOTE ioctl for that changed shape across kernel versions and was removed in
    favour of configfs-tsm, so it is deliberately not used here; on such kernels the TDREPORT
    must be sent to the QGS (vsock / TDVMCALL) by a separate agent."""

    def __init__(self, path: Path = TDX_GUEST_DEVICE, ioctl: IoctlFn = fcntl.ioctl) -> None:
        self.path = path
        self._ioctl = ioctl

    def get_report0(self, report_data: bytes) -> bytes:
        """The 1024-byte TDREPORT_STRUCT with ``report_data`` as its REPORTDATA."""
        report_data = _check_report_data(report_data)
        req = bytearray(report_data + bytes(TDX_REPORT_SIZE))
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise AttestationError("tdx_guest_unavailable", f"cannot open {self.path}: {e}") from None
        try:
            self._ioctl(fd, TDX_CMD_GET_REPORT0, req)
        except OSError as e:
            raise AttestationError("tdx_report_failed", f"TDX_CMD_GET_REPORT0 failed: {e}") from None
        finally:
            os.close(fd)
        report = bytes(req[REPORT_DATA_SIZE:])
        if len(report) != TDX_REPORT_SIZE or (
            report[TDREPORT_REPORTDATA_OFFSET : TDREPORT_REPORTDATA_OFFSET + REPORT_DATA_SIZE] != report_data
        ):
            raise AttestationError("tdx_report_failed", "TDREPORT does not carry the requested REPORTDATA")
        return report


# -- RTMR extension (Linux 6.16+) -------------------------------------------------------------

RTMR_DIGEST_SIZE = 48
GUEST_RTMRS = (2, 3)  # RTMR0 and RTMR1 are firmware's / the boot chain's


def extend_rtmr(index: int, digest: bytes, *, sysfs: Path = RTMR_SYSFS) -> None:
    """Extend RTMR[index] with a SHA-384 ``digest`` via the tdx_guest sysfs attribute
    ``rtmr{index}:sha384`` (Linux 6.16+): RTMR = SHA384(RTMR || digest). Only RTMR2 and
    RTMR3 belong to the guest's applications; extending 0/1 would break the boot log replay."""
    if index not in GUEST_RTMRS:
        raise AttestationError("rtmr_forbidden", f"RTMR{index} may not be extended by a guest application")
    if not isinstance(digest, bytes | bytearray) or len(digest) != RTMR_DIGEST_SIZE:
        raise AttestationError("bad_digest", f"RTMR digest must be {RTMR_DIGEST_SIZE} bytes (SHA-384)")
    path = sysfs / f"rtmr{index}:sha384"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise AttestationError("rtmr_unavailable", f"cannot open {path} (needs Linux 6.16+ in a TD): {e}") from None
    try:
        written = os.write(fd, bytes(digest))
    except OSError as e:
        raise AttestationError("rtmr_extend_failed", f"extending RTMR{index} failed: {e}") from None
    finally:
        os.close(fd)
    if written != RTMR_DIGEST_SIZE:
        raise AttestationError("rtmr_extend_failed", f"short write to {path}: {written} bytes")


# -- detection ---------------------------------------------------------------------------------


def detect_tee(
    root: Path = TSM_REPORT_ROOT, dev: Path = Path("/dev"), *, ops: ConfigfsOps | None = None
) -> TeeKind | None:
    """Which TEE this guest runs in, from the guest device nodes in ``dev`` (tdx_guest,
    sev-guest), else from the configfs-tsm provider; ``None`` outside a supported TEE."""
    if (dev / "tdx_guest").exists():
        return "tdx"
    if (dev / "sev-guest").exists():
        return "sev-snp"
    if not root.is_dir():
        return None
    try:
        return PROVIDERS[TsmReportProvider(root, ops=ops).provider()]
    except AttestationError:
        return None
