"""Intel DCAP quotes (TDX v4 / v5, SGX v3), parsed without trust (pure, bounded).

Layout, little endian:
  header (48): version u16, att_key_type u16, tee_type u32, qe_svn u16, pce_svn u16,
               qe_vendor_id [16], user_data [20]
  body:   v3 SGX: enclave report (384) · v4 TDX: TD report 1.0 (584) ·
          v5: body_type u16, body_size u32, then TD 1.0 (584) or TD 1.5 (648) or SGX (384)
  u32 signature_data_len, then: ECDSA P-256 signature r||s (64) over header+body,
          attestation public key X||Y (64), certification data
  certification data (v4/v5): type u16 (6 = QE report), size u32, then QE report (384),
          its signature (64), u16 auth data size + auth data, nested certification data
          (type 5 = PEM chain PCK leaf → intermediate → root). v3 carries the QE report
          fields directly.
Real quotes may carry trailing bytes after the certification data (QGS padding): tolerated.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cocoon.attest.errors import MalformedEvidence

MAX_QUOTE = 64 * 1024
TEE_TDX = 0x81
TEE_SGX = 0x00
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
HEADER_SIZE = 48
TD10_SIZE = 584
TD15_SIZE = 648
ENCLAVE_REPORT_SIZE = 384
TD_ATTRIBUTES_DEBUG = 1 << 0
# bits 7:0, "TD under debug": DEBUG and the profiling bits (HGS+, PERF and PMT profiling), each of
# which lets the host observe the TD; any of them makes it untrusted
TD_ATTRIBUTES_TUD = 0xFF
TD_ATTRIBUTES_MIGRATABLE = 1 << 29  # its memory may be exported to another platform, by a migration TD
TD_ATTRIBUTES_SEPT_VE_DISABLE = 1 << 28


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class TdReport:
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes = b""  # TD 1.5 only
    mr_service_td: bytes = b""  # TD 1.5 only

    @property
    def attributes(self) -> int:
        return int.from_bytes(self.td_attributes, "little")

    @property
    def debug(self) -> bool:
        """Under debug: DEBUG or a profiling bit (``TD_ATTRIBUTES_TUD``)."""
        return bool(self.attributes & TD_ATTRIBUTES_TUD)

    @property
    def migratable(self) -> bool:
        return bool(self.attributes & TD_ATTRIBUTES_MIGRATABLE)


@dataclass(frozen=True)
class EnclaveReport:
    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes
    raw: bytes = field(repr=False)

    @property
    def debug(self) -> bool:
        return bool(self.attributes[0] & 0x02)


@dataclass(frozen=True)
class Quote:
    header: QuoteHeader
    body_type: str  # "td10", "td15" or "sgx"
    td: TdReport | None
    enclave: EnclaveReport | None
    signed: bytes = field(repr=False)  # header and body: what the attestation key signs
    signature: bytes = field(repr=False)
    attestation_key: bytes = field(repr=False)
    qe_report: EnclaveReport = field(repr=False)
    qe_report_signature: bytes = field(repr=False)
    qe_auth_data: bytes = field(repr=False)
    cert_type: int = 5
    cert_data: bytes = field(default=b"", repr=False)
    trailing: int = 0

    @property
    def report_data(self) -> bytes:
        if self.td is not None:
            return self.td.report_data
        assert self.enclave is not None
        return self.enclave.report_data

    @property
    def debug(self) -> bool:
        return self.td.debug if self.td is not None else bool(self.enclave and self.enclave.debug)

    def pem_chain(self) -> bytes:
        """The PCK certificate chain (type 5), without the NUL padding some QEs append."""
        if self.cert_type != 5:
            raise MalformedEvidence(f"certification data type {self.cert_type} is not a PEM chain")
        return self.cert_data.rstrip(b"\x00")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise MalformedEvidence(f"quote truncated in {what} (needs {n} bytes at offset {self.pos})")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u16(self, what: str) -> int:
        return int(struct.unpack("<H", self.take(2, what))[0])

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.take(4, what))[0])


def _td_report(raw: bytes) -> TdReport:
    r = _Reader(raw)
    fields = [r.take(n, "TD report") for n in (16, 48, 48, 8, 8, 8, 48, 48, 48, 48)]
    rtmrs = (r.take(48, "RTMR0"), r.take(48, "RTMR1"), r.take(48, "RTMR2"), r.take(48, "RTMR3"))
    report_data = r.take(64, "REPORTDATA")
    extra = (r.take(16, "TEE_TCB_SVN2"), r.take(48, "MRSERVICETD")) if len(raw) == TD15_SIZE else (b"", b"")
    return TdReport(*fields, rtmrs, report_data, *extra)  # type: ignore[arg-type, call-arg]


def parse_enclave_report(raw: bytes) -> EnclaveReport:
    if len(raw) != ENCLAVE_REPORT_SIZE:
        raise MalformedEvidence("enclave report must be 384 bytes")
    r = _Reader(raw)
    cpu_svn = r.take(16, "CPUSVN")
    misc_select = r.u32("MISCSELECT")
    r.take(28, "reserved")
    attributes = r.take(16, "ATTRIBUTES")
    mr_enclave = r.take(32, "MRENCLAVE")
    r.take(32, "reserved")
    mr_signer = r.take(32, "MRSIGNER")
    r.take(96, "reserved")
    isv_prod_id = r.u16("ISVPRODID")
    isv_svn = r.u16("ISVSVN")
    r.take(60, "reserved")
    report_data = r.take(64, "REPORTDATA")
    return EnclaveReport(
        cpu_svn, misc_select, attributes, mr_enclave, mr_signer, isv_prod_id, isv_svn, report_data, raw
    )


def parse_quote(data: bytes) -> Quote:
    """Parse a DCAP quote; raises ``MalformedEvidence`` on anything out of shape."""
    if len(data) > MAX_QUOTE:
        raise MalformedEvidence(f"quote of {len(data)} bytes exceeds {MAX_QUOTE}")
    r = _Reader(data)
    header = QuoteHeader(
        version=r.u16("header"),
        att_key_type=r.u16("header"),
        tee_type=r.u32("header"),
        qe_svn=r.u16("header"),
        pce_svn=r.u16("header"),
        qe_vendor_id=r.take(16, "header"),
        user_data=r.take(20, "header"),
    )
    if header.version not in (3, 4, 5):
        raise MalformedEvidence(f"unsupported quote version {header.version}")
    if header.att_key_type != 2:
        raise MalformedEvidence(f"unsupported attestation key type {header.att_key_type} (only ECDSA P-256)")
    if header.tee_type not in (TEE_TDX, TEE_SGX):
        raise MalformedEvidence(f"unknown TEE type {header.tee_type:#x}")
    if header.version == 5:
        body_type = r.u16("body descriptor")
        size = r.u32("body descriptor")
        sizes = {1: ENCLAVE_REPORT_SIZE, 2: TD10_SIZE, 3: TD15_SIZE}
        if sizes.get(body_type) != size:
            raise MalformedEvidence(f"v5 body type {body_type} with size {size} is not known")
    else:
        size = TD10_SIZE if header.tee_type == TEE_TDX else ENCLAVE_REPORT_SIZE
    if (header.tee_type == TEE_TDX) != (size != ENCLAVE_REPORT_SIZE):
        raise MalformedEvidence("body does not match the TEE type")
    body = r.take(size, "body")
    signed = data[: r.pos]
    td = _td_report(body) if size != ENCLAVE_REPORT_SIZE else None
    enclave = parse_enclave_report(body) if td is None else None
    kind = "sgx" if td is None else ("td15" if size == TD15_SIZE else "td10")

    sig_len = r.u32("signature data length")
    sig = _Reader(r.take(sig_len, "signature data"))
    signature = sig.take(64, "quote signature")
    attestation_key = sig.take(64, "attestation key")
    if header.version == 3:
        qe_raw = sig.take(ENCLAVE_REPORT_SIZE, "QE report")
        qe_sig = sig.take(64, "QE report signature")
        auth = sig.take(sig.u16("QE auth data"), "QE auth data")
        cert_type = sig.u16("certification data")
        cert_data = sig.take(sig.u32("certification data"), "certification data")
    else:
        outer_type = sig.u16("certification data")
        outer = _Reader(sig.take(sig.u32("certification data"), "certification data"))
        if outer_type != 6:
            raise MalformedEvidence(f"certification data type {outer_type} is not a QE report (6)")
        qe_raw = outer.take(ENCLAVE_REPORT_SIZE, "QE report")
        qe_sig = outer.take(64, "QE report signature")
        auth = outer.take(outer.u16("QE auth data"), "QE auth data")
        cert_type = outer.u16("nested certification data")
        cert_data = outer.take(outer.u32("nested certification data"), "nested certification data")
    return Quote(
        header=header,
        body_type=kind,
        td=td,
        enclave=enclave,
        signed=signed,
        signature=signature,
        attestation_key=attestation_key,
        qe_report=parse_enclave_report(qe_raw),
        qe_report_signature=qe_sig,
        qe_auth_data=auth,
        cert_type=cert_type,
        cert_data=cert_data,
        trailing=len(data) - r.pos,
    )
