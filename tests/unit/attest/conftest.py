from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from cocoon.attest.sim import SimAuthority

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "attestation"
EXPECTED: dict[str, Any] = json.loads((VECTORS / "expected.json").read_text())


def vector(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def unix(text: str) -> int:
    return int(datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


@pytest.fixture(scope="session")
def authority() -> SimAuthority:
    return SimAuthority.generate(datetime.datetime.now(datetime.UTC))
