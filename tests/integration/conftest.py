from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.network import Network


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COCOON_HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    net = Network(Path(tmp_path_factory.mktemp("net")), workers=2, capacity=2)
    try:
        yield net
    finally:
        net.stop()
