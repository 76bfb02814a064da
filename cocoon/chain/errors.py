"""Errors of chain access, each with a short machine-readable code."""

from __future__ import annotations


class ChainError(Exception):
    """A chain operation failed: ``code`` says how (``unreachable``, ``rejected``, ``failed``, …)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class GetMethodError(ChainError):
    """A get-method ended with a non-zero exit code (or the account has no code)."""

    def __init__(self, method: str, exit_code: int) -> None:
        super().__init__("get_method", f"get-method {method} exited with code {exit_code}")
        self.method = method
        self.exit_code = exit_code
