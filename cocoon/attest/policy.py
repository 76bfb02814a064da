"""Attestation policy: which TEEs, TCB levels, images and models are acceptable, per role.

Read from the registry once the chain issue lands; from a TOML file until then. A
production policy can never accept simulated evidence (refused when loading, and again when
verifying); debug TEEs are rejected by the verifier whatever the policy says.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from cocoon.files import read_bounded

HexHash = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
TeeName = Literal["tdx", "sev-snp", "sim"]
TcbStatus = Literal[
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
]


class PolicyError(Exception):
    """The policy itself is invalid; one line for the operator."""


class RolePolicy(Struct, forbid_unknown_fields=True):
    image_hashes: list[HexHash] | Literal["*"] = []
    model_hashes: list[HexHash] | Literal["*"] = "*"

    def allows_image(self, image_hash: bytes) -> bool:
        return self.image_hashes == "*" or image_hash.hex() in self.image_hashes

    def allows_model(self, model_hash: bytes) -> bool:
        return self.model_hashes == "*" or model_hash.hex() in self.model_hashes


Spl = Annotated[int, Meta(ge=0, le=255)]


class SnpMinTcb(Struct, forbid_unknown_fields=True):
    """The lowest SEV-SNP security patch levels accepted (AMD publishes no TCB status for SNP, as
    Intel does for TDX: a report is as current as the firmware it names)."""

    bootloader: Spl = 0
    tee: Spl = 0
    snp: Spl = 0
    microcode: Spl = 0

    def below(self, bootloader: int, tee: int, snp: int, microcode: int) -> list[str]:
        """The levels of a TCB that are below these minimums, by name."""
        levels = {"bootloader": bootloader, "tee": tee, "snp": snp, "microcode": microcode}
        return [name for name, level in levels.items() if level < getattr(self, name)]


class Policy(Struct, forbid_unknown_fields=True):
    mode: Literal["production", "development"] = "production"
    tees: list[TeeName] = msgspec.field(default_factory=lambda: ["tdx", "sev-snp"])
    tcb_statuses: list[TcbStatus] = msgspec.field(default_factory=lambda: ["UpToDate"])
    proxy: RolePolicy = msgspec.field(default_factory=RolePolicy)
    worker: RolePolicy = msgspec.field(default_factory=RolePolicy)
    max_cache_seconds: Annotated[int, Meta(ge=0, le=86400)] = 3600
    # a production policy accepts SEV-SNP only with these minimums (see SnpMinTcb)
    sev_snp_min_tcb: SnpMinTcb | None = None

    @property
    def production(self) -> bool:
        return self.mode == "production"

    def for_role(self, role: str) -> RolePolicy:
        if role == "proxy":
            return self.proxy
        if role == "worker":
            return self.worker
        raise PolicyError(f"no attestation policy for role {role!r}")

    def check(self) -> Policy:
        if self.production and "sim" in self.tees:
            raise PolicyError("a production policy cannot accept the simulated TEE")
        if self.production and ("*" in (self.proxy.image_hashes, self.worker.image_hashes)):
            raise PolicyError("a production policy must list allowed image hashes, not '*'")
        return self


def development_policy() -> Policy:
    """What ``cocoon up`` and tests run under: the simulated TEE, any image and model."""
    any_role = RolePolicy(image_hashes="*", model_hashes="*")
    return Policy(
        mode="development", tees=["sim", "tdx", "sev-snp"], proxy=any_role, worker=any_role, max_cache_seconds=3600
    ).check()


MAX_POLICY_FILE = 1024 * 1024


def load_policy(path: Path) -> Policy:
    try:
        document = tomllib.loads(read_bounded(path, MAX_POLICY_FILE).decode())
        return msgspec.convert(document, Policy).check()
    except OSError as exc:
        raise PolicyError(f"cannot read policy {path}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise PolicyError(f"invalid policy {path}: {exc}") from exc
