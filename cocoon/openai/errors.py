"""One place that builds every OpenAI error body and maps protocol error codes to HTTP."""

from __future__ import annotations

from typing import Any

from cocoon.protocol.errors import ErrorCode

# error code -> (HTTP status, OpenAI error type)
HTTP_OF: dict[str, tuple[int, str]] = {
    ErrorCode.BAD_REQUEST: (400, "invalid_request_error"),
    ErrorCode.UNKNOWN_MODEL: (404, "invalid_request_error"),
    ErrorCode.TOO_LARGE: (413, "invalid_request_error"),
    ErrorCode.PAYMENT_REQUIRED: (402, "insufficient_quota"),
    ErrorCode.SATURATED: (429, "rate_limit_error"),
    ErrorCode.UNAUTHORIZED: (403, "permission_error"),
    ErrorCode.ENGINE_ERROR: (502, "server_error"),
    ErrorCode.WORKER_LOST: (502, "server_error"),
    ErrorCode.PROTOCOL_ERROR: (502, "server_error"),
    ErrorCode.SEAL_ERROR: (502, "server_error"),
    ErrorCode.BAD_RECEIPT: (502, "server_error"),
    ErrorCode.NO_WORKER: (503, "service_unavailable"),
    ErrorCode.CONNECTION_LOST: (503, "service_unavailable"),
    ErrorCode.SHUTTING_DOWN: (503, "service_unavailable"),
    ErrorCode.CANCELLED: (503, "service_unavailable"),
    ErrorCode.TIMEOUT: (504, "timeout"),
    # a failure inside the worker or the proxy: the client is their gateway (its own failures
    # are 500s, from its HTTP app)
    ErrorCode.INTERNAL: (502, "server_error"),
}

OPENAI_CODE: dict[str, str] = {ErrorCode.UNKNOWN_MODEL: "model_not_found", ErrorCode.SATURATED: "rate_limit_exceeded"}


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def from_code(code: str, message: str, param: str | None = None) -> tuple[int, dict[str, Any]]:
    """HTTP status and body for a protocol error code. A code this version does not know came
    from a peer (a newer or a broken one): that is the upstream's fault, answered as a
    ``protocol_error`` (502), never as a 500 of this client."""
    if code not in HTTP_OF:
        code = ErrorCode.PROTOCOL_ERROR
    status, type_ = HTTP_OF[code]
    return status, error_body(message, type_, param, OPENAI_CODE.get(code, code))
