"""The embedded engine's greedy pick matches llama.cpp's greedy sampler on every row of logits:
the first of the highest, never a NaN unless the first entry is one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cocoon.engine.llama_cpp import greedy_pick, plain_greedy

nan, inf = math.nan, math.inf


def llama_cpp_greedy(row: list[float]) -> int:
    """llama.cpp's rule (``llama_sampler_greedy_apply``): keep the first, take a later one only
    if it is greater."""
    selected = 0
    for i, logit in enumerate(row):
        if logit > row[selected]:
            selected = i
    return selected


@pytest.mark.parametrize(
    "row",
    [
        [1.0, 3.0, 2.0],
        [3.0, 1.0, 3.0],  # ties: the first
        [1.0, nan, 3.0, 2.0],  # a NaN is skipped
        [nan, 5.0, 2.0],  # ... unless it is the first entry, which llama.cpp keeps
        [nan, nan],
        [-inf, -inf, -1.0],
        [2.0, inf, inf, nan],
        [-1e30, -1e30],
    ],
)
def test_the_same_pick_as_llama_cpps_greedy_sampler(row: list[float]) -> None:
    assert greedy_pick(np.array(row, dtype=np.float32)) == llama_cpp_greedy(row)


def test_random_rows_pick_alike() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        row = rng.normal(size=64).astype(np.float32)
        row[rng.integers(0, 64, size=3)] = row.max()  # ties at the top
        if rng.random() < 0.3:
            row[rng.integers(0, 64)] = np.nan
        assert greedy_pick(row) == llama_cpp_greedy(row.tolist())


def test_plain_greedy_is_temperature_0_with_nothing_else() -> None:
    greedy = {"temp": 0.0, "repeat_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0}
    assert plain_greedy(greedy)
    assert plain_greedy({**greedy, "top_k": 5, "mirostat_mode": 2})  # (no effect at temperature 0)
    for other in (
        {"temp": 0.7},
        {"temp": -1.0},
        {"repeat_penalty": 1.1},
        {"frequency_penalty": 0.2},
        {"presence_penalty": 0.2},
        {"logits_processor": [lambda ids, scores: scores]},
        {"grammar": object()},
    ):
        assert not plain_greedy({**greedy, **other}), other
    assert not plain_greedy({})  # llama-cpp-python's default temperature is 0.8
