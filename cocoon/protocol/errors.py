"""Error codes carried by error frames, and the two exception roots of the protocol layer."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Typed reasons carried by an ``Error`` frame (and mapped to HTTP statuses by the client)."""

    BAD_REQUEST = "bad_request"
    UNKNOWN_MODEL = "unknown_model"
    NO_WORKER = "no_worker"
    SATURATED = "saturated"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    ENGINE_ERROR = "engine_error"
    WORKER_LOST = "worker_lost"
    CONNECTION_LOST = "connection_lost"
    SEAL_ERROR = "seal_error"
    BAD_RECEIPT = "bad_receipt"
    PROTOCOL_ERROR = "protocol_error"
    UNAUTHORIZED = "unauthorized"
    TOO_LARGE = "too_large"
    PAYMENT_REQUIRED = "payment_required"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"

    @classmethod
    def known(cls, code: str) -> ErrorCode | None:
        """The member for a code read off the wire; None for one this version does not know.

        The wire carries codes as bounded strings, not as this enum: a code added by a newer
        peer must not make the whole message undecodable, which would end the connection and
        every stream on it. The receiver decides what an unknown code means instead."""
        try:
            return cls(code)
        except ValueError:
            return None


class ProtocolError(Exception):
    """Base of protocol errors; ``code`` is what goes into the error frame."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol: answer with an error frame and close the connection."""


class LocalProtocolError(ProtocolError):
    """We misused the protocol object: a bug on our side, never caused by peer input."""
