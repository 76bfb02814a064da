"""Evidence providers against a fake configfs-tsm tree, a fake ioctl and a fake sysfs."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from cocoon.attest import configfs
from cocoon.attest.configfs import (
    TDX_CMD_GET_REPORT0,
    ConfigfsOps,
    TdxGuestDevice,
    TsmReport,
    TsmReportProvider,
    detect_tee,
    extend_rtmr,
)
from cocoon.attest.errors import AttestationError

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "attestation"
TDX_QUOTE = (VECTORS / "tdx" / "dcap-qvl" / "tdx_quote").read_bytes()
SEV_REPORT = (VECTORS / "sev-snp" / "go-sev-guest" / "attestation.bin").read_bytes()
REPORT_DATA = bytes(range(64))


class FakeConfigfsTsm(ConfigfsOps):
    """Plays the kernel's part over a plain directory, which does not react to mkdir or
    writes the way configfs does: mkdir creates the attribute files, a write to ``inblob``
    bumps ``generation``, and ``outblob`` holds real quote bytes from the test vectors.
    ``race=True`` simulates another writer hitting the entry while we read ``outblob``."""

    def __init__(self, provider: str, outblob: bytes, auxblob: bytes | None = None, race: bool = False) -> None:
        self.provider = provider
        self.outblob = outblob
        self.auxblob = auxblob
        self.race = race
        self.created: list[Path] = []
        self.removed: list[Path] = []
        self.inblobs: list[bytes] = []

    def mkdir(self, path: Path) -> None:
        super().mkdir(path)
        self.created.append(path)
        (path / "inblob").write_bytes(b"")
        (path / "outblob").write_bytes(self.outblob)
        (path / "provider").write_text(self.provider + "\n")
        (path / "generation").write_text("0\n")
        if self.auxblob is not None:
            (path / "auxblob").write_bytes(self.auxblob)

    def write(self, path: Path, data: bytes) -> None:
        super().write(path, data)
        if path.name == "inblob":
            self.inblobs.append(path.read_bytes())
            self._bump(path.parent)

    def read(self, path: Path, limit: int) -> bytes:
        data = super().read(path, limit)
        if path.name == "outblob" and self.race:
            self._bump(path.parent)
        return data

    def rmdir(self, path: Path) -> None:
        for child in path.iterdir():  # configfs removes attributes itself
            child.unlink()
        super().rmdir(path)
        self.removed.append(path)

    @staticmethod
    def _bump(entry: Path) -> None:
        gen = entry / "generation"
        gen.write_text(f"{int(gen.read_text()) + 1}\n")


def provider_for(tmp_path: Path, fake: FakeConfigfsTsm) -> TsmReportProvider:
    root = tmp_path / "tsm" / "report"
    root.mkdir(parents=True)
    return TsmReportProvider(root, ops=fake)


# -- configfs-tsm ------------------------------------------------------------------------------


def test_tdx_quote_through_configfs(tmp_path: Path) -> None:
    fake = FakeConfigfsTsm("tdx_guest", TDX_QUOTE)
    provider = provider_for(tmp_path, fake)
    report = provider.get_quote(REPORT_DATA)
    assert report == TsmReport(provider="tdx_guest", outblob=TDX_QUOTE, auxblob=None)
    assert fake.inblobs == [REPORT_DATA]
    assert fake.removed == fake.created and len(fake.created) == 1
    assert list(provider.root.iterdir()) == []


def test_sev_report_and_certificate_table_through_configfs(tmp_path: Path) -> None:
    certs = b"\x01" * 40
    fake = FakeConfigfsTsm("sev_guest", SEV_REPORT, auxblob=certs)
    report = provider_for(tmp_path, fake).get_quote(REPORT_DATA)
    assert report == TsmReport(provider="sev_guest", outblob=SEV_REPORT, auxblob=certs)
    assert fake.inblobs == [REPORT_DATA]


@pytest.mark.parametrize("auxblob", [None, b""])
def test_sev_without_certificates(tmp_path: Path, auxblob: bytes | None) -> None:
    fake = FakeConfigfsTsm("sev_guest", SEV_REPORT, auxblob=auxblob)
    assert provider_for(tmp_path, fake).get_quote(REPORT_DATA).auxblob is None


def test_each_request_uses_a_fresh_entry(tmp_path: Path) -> None:
    fake = FakeConfigfsTsm("tdx_guest", TDX_QUOTE)
    provider = provider_for(tmp_path, fake)
    provider.get_quote(REPORT_DATA)
    provider.get_quote(bytes(64))
    assert fake.inblobs == [REPORT_DATA, bytes(64)]
    assert len({p.name for p in fake.created}) == 2


def test_generation_change_while_reading_is_a_race(tmp_path: Path) -> None:
    fake = FakeConfigfsTsm("tdx_guest", TDX_QUOTE, race=True)
    provider = provider_for(tmp_path, fake)
    with pytest.raises(AttestationError) as exc:
        provider.get_quote(REPORT_DATA)
    assert exc.value.code == "tsm_race"
    assert fake.removed == fake.created


def test_write_before_ours_is_a_race(tmp_path: Path) -> None:
    class EarlyWriter(FakeConfigfsTsm):
        def write(self, path: Path, data: bytes) -> None:
            super().write(path, data)
            self._bump(path.parent)  # someone else wrote inblob right after us

    fake = EarlyWriter("tdx_guest", TDX_QUOTE)
    with pytest.raises(AttestationError) as exc:
        provider_for(tmp_path, fake).get_quote(REPORT_DATA)
    assert exc.value.code == "tsm_race"
    assert fake.removed == fake.created


@pytest.mark.parametrize("size", [0, 32, 63, 65, 128])
def test_report_data_must_be_64_bytes(tmp_path: Path, size: int) -> None:
    fake = FakeConfigfsTsm("tdx_guest", TDX_QUOTE)
    with pytest.raises(AttestationError) as exc:
        provider_for(tmp_path, fake).get_quote(bytes(size))
    assert exc.value.code == "bad_report_data"
    assert fake.created == []


def test_missing_configfs_is_unavailable(tmp_path: Path) -> None:
    provider = TsmReportProvider(tmp_path / "nope", ops=FakeConfigfsTsm("tdx_guest", TDX_QUOTE))
    with pytest.raises(AttestationError) as exc:
        provider.get_quote(REPORT_DATA)
    assert exc.value.code == "tsm_unavailable"


@pytest.mark.parametrize(
    ("provider_name", "outblob", "code"),
    [("tpm_guest", TDX_QUOTE, "tsm_error"), ("tdx_guest", b"", "tsm_error")],
)
def test_bad_kernel_answers(tmp_path: Path, provider_name: str, outblob: bytes, code: str) -> None:
    fake = FakeConfigfsTsm(provider_name, outblob)
    with pytest.raises(AttestationError) as exc:
        provider_for(tmp_path, fake).get_quote(REPORT_DATA)
    assert exc.value.code == code
    assert fake.removed == fake.created


def test_oversized_outblob_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(configfs, "MAX_BLOB", len(TDX_QUOTE) - 1)
    fake = FakeConfigfsTsm("tdx_guest", TDX_QUOTE)
    with pytest.raises(AttestationError) as exc:
        provider_for(tmp_path, fake).get_quote(REPORT_DATA)
    assert exc.value.code == "too_large"
    assert fake.removed == fake.created


def test_kernel_error_on_read_is_reported(tmp_path: Path) -> None:
    class FailingQuote(FakeConfigfsTsm):
        def read(self, path: Path, limit: int) -> bytes:
            if path.name == "outblob":
                raise OSError(errno.EIO, "quote generation failed")
            return super().read(path, limit)

    fake = FailingQuote("tdx_guest", TDX_QUOTE)
    with pytest.raises(AttestationError, match="quote generation failed") as exc:
        provider_for(tmp_path, fake).get_quote(REPORT_DATA)
    assert exc.value.code == "tsm_error"
    assert fake.removed == fake.created


def test_default_ops_read_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(bytes(200_000))
    assert len(ConfigfsOps().read(path, 100)) == 101
    assert len(ConfigfsOps().read(path, 1_000_000)) == 200_000


# -- /dev/tdx_guest ----------------------------------------------------------------------------


def test_get_report0_ioctl_number() -> None:
    assert TDX_CMD_GET_REPORT0 == 0xC4405401  # _IOWR('T', 1, struct tdx_report_req), 1088 bytes


class FakeTdxIoctl:
    def __init__(self, fill: bool = True, error: OSError | None = None) -> None:
        self.fill = fill
        self.error = error
        self.calls: list[tuple[int, int]] = []

    def __call__(self, fd: int, request: int, arg: bytearray) -> int:
        self.calls.append((request, len(arg)))
        if self.error:
            raise self.error
        if self.fill:  # TDREPORT: REPORTMACSTRUCT with REPORTDATA at offset 128
            report = bytearray(b"\xaa" * 1024)
            report[128:192] = arg[:64]
            arg[64:] = report
        return 0


def test_tdx_guest_device_report0(tmp_path: Path) -> None:
    dev = tmp_path / "tdx_guest"
    dev.write_bytes(b"")
    ioctl = FakeTdxIoctl()
    report = TdxGuestDevice(dev, ioctl=ioctl).get_report0(REPORT_DATA)
    assert len(report) == 1024 and report[128:192] == REPORT_DATA
    assert ioctl.calls == [(TDX_CMD_GET_REPORT0, 1088)]


@pytest.mark.parametrize(
    ("ioctl", "code"),
    [
        (FakeTdxIoctl(fill=False), "tdx_report_failed"),
        (FakeTdxIoctl(error=OSError(errno.EBUSY, "busy")), "tdx_report_failed"),
    ],
)
def test_tdx_guest_device_failures(tmp_path: Path, ioctl: FakeTdxIoctl, code: str) -> None:
    dev = tmp_path / "tdx_guest"
    dev.write_bytes(b"")
    with pytest.raises(AttestationError) as exc:
        TdxGuestDevice(dev, ioctl=ioctl).get_report0(REPORT_DATA)
    assert exc.value.code == code


def test_tdx_guest_device_missing(tmp_path: Path) -> None:
    with pytest.raises(AttestationError) as exc:
        TdxGuestDevice(tmp_path / "tdx_guest", ioctl=FakeTdxIoctl()).get_report0(REPORT_DATA)
    assert exc.value.code == "tdx_guest_unavailable"


def test_tdx_guest_device_checks_report_data_length(tmp_path: Path) -> None:
    ioctl = FakeTdxIoctl()
    with pytest.raises(AttestationError) as exc:
        TdxGuestDevice(tmp_path / "tdx_guest", ioctl=ioctl).get_report0(bytes(48))
    assert exc.value.code == "bad_report_data"
    assert ioctl.calls == []


# -- RTMR extension ----------------------------------------------------------------------------


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "measurements"
    root.mkdir()
    for i in range(4):
        (root / f"rtmr{i}:sha384").write_bytes(b"")
    return root


@pytest.mark.parametrize("index", [2, 3])
def test_extend_rtmr_writes_the_digest(sysfs: Path, index: int) -> None:
    digest = bytes(range(48))
    extend_rtmr(index, digest, sysfs=sysfs)
    assert (sysfs / f"rtmr{index}:sha384").read_bytes() == digest


@pytest.mark.parametrize("index", [0, 1, 4, -1])
def test_extend_rtmr_refuses_firmware_registers(sysfs: Path, index: int) -> None:
    with pytest.raises(AttestationError) as exc:
        extend_rtmr(index, bytes(48), sysfs=sysfs)
    assert exc.value.code == "rtmr_forbidden"
    assert all((sysfs / f"rtmr{i}:sha384").read_bytes() == b"" for i in range(4))


@pytest.mark.parametrize("size", [0, 32, 47, 49, 64])
def test_extend_rtmr_needs_a_sha384_digest(sysfs: Path, size: int) -> None:
    with pytest.raises(AttestationError) as exc:
        extend_rtmr(2, bytes(size), sysfs=sysfs)
    assert exc.value.code == "bad_digest"


def test_extend_rtmr_without_the_sysfs_interface(tmp_path: Path) -> None:
    with pytest.raises(AttestationError) as exc:
        extend_rtmr(3, bytes(48), sysfs=tmp_path / "measurements")
    assert exc.value.code == "rtmr_unavailable"
    assert not (tmp_path / "measurements").exists()


# -- detection ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("node", "kind"), [("tdx_guest", "tdx"), ("sev-guest", "sev-snp")])
def test_detect_tee_from_device_nodes(tmp_path: Path, node: str, kind: str) -> None:
    (tmp_path / node).write_bytes(b"")
    assert detect_tee(tmp_path / "no-configfs", tmp_path) == kind


@pytest.mark.parametrize(("provider_name", "kind"), [("tdx_guest", "tdx"), ("sev_guest", "sev-snp"), ("other", None)])
def test_detect_tee_from_configfs_provider(tmp_path: Path, provider_name: str, kind: str | None) -> None:
    fake = FakeConfigfsTsm(provider_name, b"")
    root = tmp_path / "report"
    root.mkdir()
    assert detect_tee(root, tmp_path / "dev", ops=fake) == kind
    assert fake.removed == fake.created and fake.inblobs == []


def test_detect_tee_outside_a_tee(tmp_path: Path) -> None:
    assert detect_tee(tmp_path / "report", tmp_path / "dev") is None
