"""Attestation errors: every rejection names a specific reason (``code``)."""

from __future__ import annotations


class AttestationError(Exception):
    """Evidence is malformed, unverifiable or not allowed. ``code`` is a stable short reason,
    the message says what exactly failed; both are safe to log and to send to the peer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {super().__str__()}"


class MalformedEvidence(AttestationError):
    def __init__(self, message: str) -> None:
        super().__init__("malformed", message)
