"""`cocoon market` reads what a client answers, and says in one line when it cannot."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cocoon.cli import app


def answering(monkeypatch: pytest.MonkeyPatch, status: int, body: Any) -> None:
    def get(url: str, **kwargs: Any) -> httpx.Response:
        return httpx.Response(status, json=body, request=httpx.Request("GET", url))

    monkeypatch.setattr(httpx, "get", get)


WORKER = {
    "worker": "ab" * 32,
    "price_coefficient": 1.0,
    "free": 1,
    "capacity": 2,
    "ttft_ms": 80,
    "tokens_per_second": 110.0,
    "success_rate": 1.0,
    "nano_ton_per_million_tokens": {"prompt": 1000, "completion": 4000},
}


def test_a_price_book_is_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    answering(monkeypatch, 200, {"models": [{"model": "m", "workers": [WORKER]}]})
    result = CliRunner().invoke(app, ["market"])
    assert result.exit_code == 0, result.output
    assert "abab" in result.output and "4000" in result.output


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, [1]), (200, {"models": [{"model": "m"}]}), (200, {"models": [{"model": "m", "workers": [{}]}]}),
     (500, ["not an error object"]), (503, {"error": "busy"})],
)  # fmt: skip
def test_an_answer_that_is_no_price_book_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, status: int, body: Any
) -> None:
    answering(monkeypatch, status, body)
    result = CliRunner().invoke(app, ["market"])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_malformed_url_is_one_line_and_exit_2() -> None:
    result = CliRunner().invoke(app, ["market", "--url", "http://[::1"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
