"""Amounts of TON on the command line: exact, bounded, and refused in one line when wrong."""

from __future__ import annotations

import pytest

from cocoon.cli_chain.common import Refused, parse_ton


@pytest.mark.parametrize(("text", "nano"), [("2.5", 2_500_000_000), ("0.000000001", 1), ("1e2", 100 * 10**9)])
def test_amounts_are_exact(text: str, nano: int) -> None:
    assert parse_ton(text) == nano


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0.0000000001", "more than 9 decimals"),
        ("-1", "cannot be negative"),
        ("nan", "takes an amount of TON"),
        ("9" * 40, "too large"),
        ("1" * 5000, "not 5000 characters"),  # past Python's 4,300-digit limit for int(): no traceback
        ("0", "must be more than 0"),
    ],
)
def test_wrong_amounts_are_refused_in_one_line(text: str, why: str) -> None:
    with pytest.raises(Refused) as excinfo:
        parse_ton(text)
    assert why in str(excinfo.value) and "\n" not in str(excinfo.value)
