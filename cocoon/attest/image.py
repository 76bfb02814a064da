"""Image identity: one hash over the measurement registers that fix what a TEE runs.

TDX: SHA-256("cocoon/image/tdx/v1\\0" ‖ MRTD ‖ MRCONFIGID ‖ MROWNER ‖ MROWNERCONFIG ‖ RTMR0 ‖
RTMR1 ‖ RTMR2 ‖ RTMR3) — firmware and TD configuration (MRTD), the host-provided identity
fields, boot chain, kernel and command line (RTMR0–2) and the application layer (RTMR3).
SEV-SNP: SHA-256("cocoon/image/sev-snp/v1\\0" ‖ MEASUREMENT ‖ HOST_DATA).
The simulated TEE uses the TDX formula over its configured registers.
Policies list allowed image hashes, so one value pins the whole measured stack.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from cocoon.attest.tdx import TdReport


def tdx_image_hash(td: TdReport) -> bytes:
    return tdx_registers_hash(td.mr_td, td.mr_config_id, td.mr_owner, td.mr_owner_config, td.rtmrs)


def tdx_registers_hash(
    mr_td: bytes, mr_config_id: bytes, mr_owner: bytes, mr_owner_config: bytes, rtmrs: Sequence[bytes]
) -> bytes:
    parts = [mr_td, mr_config_id, mr_owner, mr_owner_config, *rtmrs]
    return hashlib.sha256(b"cocoon/image/tdx/v1\x00" + b"".join(parts)).digest()


def snp_image_hash(measurement: bytes, host_data: bytes) -> bytes:
    return hashlib.sha256(b"cocoon/image/sev-snp/v1\x00" + measurement + host_data).digest()


def tdx_measurements(td: TdReport) -> dict[str, str]:
    return {
        "mrtd": td.mr_td.hex(),
        "mrconfigid": td.mr_config_id.hex(),
        "mrowner": td.mr_owner.hex(),
        "mrownerconfig": td.mr_owner_config.hex(),
        **{f"rtmr{i}": r.hex() for i, r in enumerate(td.rtmrs)},
        "mrseam": td.mr_seam.hex(),
        "td_attributes": td.td_attributes.hex(),
        "xfam": td.xfam.hex(),
    }
