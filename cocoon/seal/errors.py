"""Sealing errors: each names what exactly failed (``code``); none carries plaintext."""

from __future__ import annotations


class SealError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {super().__str__()}"
