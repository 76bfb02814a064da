"""Protocol error codes mapped to OpenAI-shaped HTTP errors."""

from __future__ import annotations

import pytest

from cocoon.client.service import NOT_THE_PROXYS_FAULT, UpstreamError
from cocoon.openai.errors import HTTP_OF, error_body, from_code
from cocoon.protocol.errors import ErrorCode

EXPECTED: dict[ErrorCode, tuple[int, str, str]] = {
    ErrorCode.BAD_REQUEST: (400, "invalid_request_error", "bad_request"),
    ErrorCode.UNKNOWN_MODEL: (404, "invalid_request_error", "model_not_found"),
    ErrorCode.TOO_LARGE: (413, "invalid_request_error", "too_large"),
    ErrorCode.PAYMENT_REQUIRED: (402, "insufficient_quota", "payment_required"),
    ErrorCode.SATURATED: (429, "rate_limit_error", "rate_limit_exceeded"),
    ErrorCode.UNAUTHORIZED: (403, "permission_error", "unauthorized"),
    ErrorCode.ENGINE_ERROR: (502, "server_error", "engine_error"),
    ErrorCode.WORKER_LOST: (502, "server_error", "worker_lost"),
    ErrorCode.PROTOCOL_ERROR: (502, "server_error", "protocol_error"),
    ErrorCode.SEAL_ERROR: (502, "server_error", "seal_error"),
    ErrorCode.BAD_RECEIPT: (502, "server_error", "bad_receipt"),
    ErrorCode.NO_WORKER: (503, "service_unavailable", "no_worker"),
    ErrorCode.CONNECTION_LOST: (503, "service_unavailable", "connection_lost"),
    ErrorCode.SHUTTING_DOWN: (503, "service_unavailable", "shutting_down"),
    ErrorCode.CANCELLED: (503, "service_unavailable", "cancelled"),
    ErrorCode.TIMEOUT: (504, "timeout", "timeout"),
    ErrorCode.INTERNAL: (502, "server_error", "internal"),  # the upstream's: the client is its gateway
}


def test_every_error_code_has_a_status() -> None:
    assert set(EXPECTED) == set(ErrorCode)
    assert set(HTTP_OF) == set(ErrorCode)


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.value)
def test_from_code(code: ErrorCode) -> None:
    status, type_, openai_code = EXPECTED[code]
    got_status, body = from_code(code, "what happened")
    assert got_status == status
    assert body == {"error": {"message": "what happened", "type": type_, "param": None, "code": openai_code}}


def test_plain_string_codes_work_like_enum_members() -> None:
    # codes arrive from the wire as plain strings
    assert from_code("unknown_model", "m") == from_code(ErrorCode.UNKNOWN_MODEL, "m")
    assert from_code("saturated", "busy")[0] == 429


def test_param_is_carried() -> None:
    status, body = from_code(ErrorCode.BAD_REQUEST, "bad temperature", param="temperature")
    assert status == 400
    assert body["error"]["param"] == "temperature"


def test_an_unknown_code_is_a_protocol_error_of_the_upstream_never_a_500() -> None:
    # a newer or a broken peer's code, relayed: the fault is upstream (502), not this client's
    assert from_code("from_a_newer_peer", "odd") == from_code(ErrorCode.PROTOCOL_ERROR, "odd")
    assert from_code("from_a_newer_peer", "odd")[0] == 502


def test_the_client_takes_an_unknown_code_from_the_proxy_for_its_protocol_error() -> None:
    error = UpstreamError("from_a_newer_peer", "odd")
    assert error.code is ErrorCode.PROTOCOL_ERROR
    assert "from_a_newer_peer" in str(error) and "odd" in str(error)
    assert error.code not in NOT_THE_PROXYS_FAULT  # it counts against the proxy
    assert UpstreamError("saturated", "busy").code is ErrorCode.SATURATED


def test_error_body_shape() -> None:
    assert error_body("m", "t") == {"error": {"message": "m", "type": "t", "param": None, "code": None}}
    assert error_body("m", "t", "p", "c") == {"error": {"message": "m", "type": "t", "param": "p", "code": "c"}}
