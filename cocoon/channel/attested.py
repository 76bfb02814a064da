"""The attested peer verifier: replaces pinned keys with evidence on every hop.

Proxies and workers must present evidence that binds their channel key (proxy: in its TLS
certificate; worker: in its hello). Clients run on the user's own machine, with no TEE: they
are accepted by key (any key, or pinned ones), as payment will identify them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping

from cocoon.attest.errors import AttestationError
from cocoon.attest.verifier import EvidenceVerifier
from cocoon.channel.verify import ANY_KEY, PeerIdentity, PeerRejected

log = logging.getLogger("cocoon.attest")

ATTESTED_ROLES = frozenset({"proxy", "worker"})


class AttestedVerifier:
    def __init__(
        self,
        verifier: EvidenceVerifier,
        *,
        accept: Collection[str],
        pinned: Mapping[str, Collection[bytes] | str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.verifier = verifier
        self.accept = frozenset(accept)
        self.pinned = dict(pinned or {})
        self.clock = clock
        self._warned: set[bytes] = set()

    def __call__(self, role: str, public_key: bytes, evidence: bytes, software: str) -> PeerIdentity:
        if role not in self.accept:
            raise PeerRejected(f"role {role!r} is not accepted here")
        keys = self.pinned.get(role, ANY_KEY)
        if keys != ANY_KEY and public_key not in keys:
            raise PeerRejected(f"{role} key {public_key.hex()[:16]}… is not pinned here")
        if role not in ATTESTED_ROLES:
            return PeerIdentity(role=role, public_key=public_key, software=software)
        try:
            verdict = self.verifier.verify(evidence, role=role, channel_key=public_key, now=int(self.clock()))
        except AttestationError as exc:
            raise PeerRejected(f"{role} attestation failed: {exc}") from exc
        if verdict.simulated and public_key not in self._warned:
            self._warned.add(public_key)
            log.warning(
                "ACCEPTED SIMULATED EVIDENCE from %s %s…: development policy, no real TEE behind it",
                role,
                public_key.hex()[:16],
            )
        return PeerIdentity(
            role=role,
            public_key=public_key,
            software=software,
            expires_at=verdict.expires_at,
            attestation=verdict,
            evidence=evidence,
        )
