"""Where DCAP collateral comes from: files (offline), or an Intel PCS / PCCS (online), cached
on disk per FMSPC and fetched again before its ``nextUpdate``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cocoon.attest.dcap import collateral_window
from cocoon.attest.errors import AttestationError

REFRESH_MARGIN = 3600  # fetch again an hour before nextUpdate

Fetcher = Callable[[bytes], bytes]
"""``fetch(raw_quote) -> collateral JSON``: the network part, injected (dcap-qvl's PCS client)."""


def pcs_fetcher(pccs_url: str | None = None) -> Fetcher:
    """A fetcher using dcap-qvl's client for the Intel PCS (default) or a PCCS."""
    import asyncio

    import dcap_qvl

    def fetch(raw_quote: bytes) -> bytes:
        url = pccs_url or dcap_qvl.INTEL_PCS_URL
        collateral = dcap_qvl.get_collateral(url, raw_quote)
        if asyncio.iscoroutine(collateral):
            collateral = asyncio.run(collateral)
        return str(collateral.to_json()).encode()

    return fetch


class CollateralStore:
    def __init__(self, directory: Path, fetch: Fetcher | None = None) -> None:
        self.directory = directory
        self.fetch = fetch

    def path_for(self, fmspc: str) -> Path:
        if not fmspc.isalnum():
            raise AttestationError("bad_chain", "FMSPC is not hex")
        return self.directory / f"{fmspc.lower()}.json"

    def get(self, fmspc: str, raw_quote: bytes, now: int) -> bytes:
        """Collateral for this platform, valid at ``now``; fetched when missing or stale."""
        path = self.path_for(fmspc)
        if path.exists():
            cached = path.read_bytes()
            _, valid_until = collateral_window(cached)
            if now < valid_until - REFRESH_MARGIN or self.fetch is None:
                return cached
        if self.fetch is None:
            raise AttestationError("no_collateral", f"no collateral for FMSPC {fmspc} in {self.directory}")
        try:
            fresh = self.fetch(raw_quote)
        except Exception as exc:
            raise AttestationError("no_collateral", f"fetching collateral failed: {exc}") from exc
        collateral_window(fresh)  # refuse to cache something unusable
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(fresh)
        os.replace(tmp, path)
        return fresh
