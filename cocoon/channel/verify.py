"""Peer verification: the one replaceable step that decides whether a peer is acceptable.

Nodes use ``channel.attested.AttestedVerifier`` (evidence, plus pins where configured);
``PinnedKeyVerifier`` identifies peers by pinned keys alone (tests, tools). Callers only see
``PeerVerifier``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class PeerIdentity:
    role: str
    public_key: bytes
    software: str = ""
    expires_at: float | None = None  # unix time after which the peer must attest again
    attestation: Any = None  # the attestation verdict, where the peer was attested
    evidence: bytes = b""  # the evidence it presented (a proxy hands workers' on to clients)

    @property
    def short(self) -> str:
        return f"{self.role}:{self.public_key[:6].hex()}"


class PeerRejected(Exception):
    """The peer is not acceptable; the message is safe to send to it and to log."""


class PeerVerifier(Protocol):
    def __call__(self, role: str, public_key: bytes, evidence: bytes, software: str) -> PeerIdentity:
        """Return the peer's identity or raise ``PeerRejected``."""
        ...


ANY_KEY = "*"


class PinnedKeyVerifier:
    """Accepts a peer whose role is expected and whose key is pinned for that role.

    ``allowed`` maps a role to its pinned keys, or to ``ANY_KEY`` to accept any key (the
    node logs loudly when it runs like that).
    """

    def __init__(self, allowed: Mapping[str, Collection[bytes] | str]) -> None:
        self.allowed = dict(allowed)

    def __call__(self, role: str, public_key: bytes, evidence: bytes, software: str) -> PeerIdentity:
        keys = self.allowed.get(role)
        if keys is None:
            raise PeerRejected(f"role {role!r} is not accepted here")
        if keys != ANY_KEY and public_key not in keys:
            raise PeerRejected(f"{role} key {public_key.hex()[:16]}… is not pinned here")
        return PeerIdentity(role=role, public_key=public_key, software=software)
