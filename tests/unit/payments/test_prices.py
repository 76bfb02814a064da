"""Integer request prices: the formula, the single floor, the commission split, and what a proxy
bills while a price change reaches its clients."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cocoon.payments.prices import (
    COEFFICIENT_SCALE,
    PRICE_GRACE,
    TOKEN_KINDS,
    BillingPrices,
    PriceParams,
    TokenKind,
    price_per_million,
    request_cost,
    split,
    usage_cost,
)
from cocoon.protocol.messages import Usage

UNIT = PriceParams(
    price_per_token=1,
    prompt_mult=10000,
    cached_mult=10000,
    completion_mult=10000,
    reasoning_mult=10000,
    commission_bps=0,
)
# The example of docs/payments.md.
DOC = PriceParams(
    price_per_token=333,
    prompt_mult=10000,
    cached_mult=1000,
    completion_mult=30000,
    reasoning_mult=30000,
    commission_bps=500,
)


@dataclass(frozen=True)
class Tokens:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(
            self.prompt_tokens + other.prompt_tokens,
            self.cached_tokens + other.cached_tokens,
            self.completion_tokens + other.completion_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )


def tokens(uncached: int = 0, cached: int = 0, answer: int = 0, reasoning: int = 0) -> Tokens:
    """Usage from disjoint parts, the way OpenAI counts it (cached ⊆ prompt, reasoning ⊆ completion)."""
    return Tokens(uncached + cached, cached, answer + reasoning, reasoning)


def params(
    price: int = 1, prompt: int = 10000, cached: int = 10000, completion: int = 10000, reasoning: int = 10000
) -> PriceParams:
    return PriceParams(price, prompt, cached, completion, reasoning, commission_bps=0)


def cost(p: PriceParams, t: Tokens, price_milli: int = COEFFICIENT_SCALE) -> int:
    return usage_cost(p, t, price_milli)


# --- bounds -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("price_per_token", -1, "price_per_token"),
        ("price_per_token", 2**120, "price_per_token"),
        ("prompt_mult", -1, "prompt_mult"),
        ("cached_mult", 2**32, "cached_mult"),
        ("completion_mult", 2**32, "completion_mult"),
        ("reasoning_mult", -5, "reasoning_mult"),
        ("commission_bps", 10001, "commission_bps"),
        ("commission_bps", -1, "commission_bps"),
    ],
)
def test_params_out_of_range(field: str, value: int, message: str) -> None:
    fields = {
        "price_per_token": 1,
        "prompt_mult": 1,
        "cached_mult": 1,
        "completion_mult": 1,
        "reasoning_mult": 1,
        "commission_bps": 0,
    }
    with pytest.raises(ValueError, match=message):
        PriceParams(**{**fields, field: value})


def test_params_at_the_limits() -> None:
    PriceParams(2**120 - 1, 2**32 - 1, 0, 2**32 - 1, 0, 10000)
    PriceParams(0, 0, 0, 0, 0, 0)


@pytest.mark.parametrize(
    "counts",
    [
        {"prompt_tokens": -1},
        {"cached_tokens": -1},
        {"completion_tokens": -1},
        {"reasoning_tokens": -1},
        {"price_milli": -1},
    ],
)
def test_negative_counts_are_refused(counts: dict[str, int]) -> None:
    args = {"prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0, "reasoning_tokens": 0, "price_milli": 0}
    with pytest.raises(ValueError, match="negative"):
        request_cost(UNIT, **{**args, **counts})


def test_split_bounds() -> None:
    with pytest.raises(ValueError, match="negative"):
        split(-1, 0)
    with pytest.raises(ValueError, match="commission_bps"):
        split(1, 10001)
    with pytest.raises(ValueError, match="commission_bps"):
        split(1, -1)


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown token kind"):
        price_per_million(UNIT, "audio", 1000)  # type: ignore[arg-type]


# --- worked examples ----------------------------------------------------------------------------


def test_doc_example() -> None:
    # weighted = 234×10000 + 1000×1000 + 37×30000 + 20×30000 = 5,050,000
    # cost = 5,050,000 × 333 × 1150 / 10^7 = 193,389.75 → 193,389
    assert (
        request_cost(
            DOC, prompt_tokens=1234, cached_tokens=1000, completion_tokens=57, reasoning_tokens=20, price_milli=1150
        )
        == 193_389
    )
    # 5 %: 193,389 × 500 / 10,000 = 9,669.45 → 9,669; the worker gets the rest
    assert split(193_389, DOC.commission_bps) == (9_669, 183_720)


def test_exact_values_are_not_rounded() -> None:
    assert cost(UNIT, tokens(uncached=1)) == 1
    assert cost(UNIT, tokens(uncached=3, cached=4, answer=5, reasoning=6)) == 18
    assert cost(params(price=7), tokens(uncached=10), price_milli=2000) == 140


def test_fraction_is_dropped() -> None:
    # 3 cached tokens at ×0.25: 0.75 nanoTON → 0
    assert cost(params(cached=2500), tokens(cached=3)) == 0
    # 4 of them: exactly 1
    assert cost(params(cached=2500), tokens(cached=4)) == 1
    # 10 tokens × 7 × 1.234 = 86.38 → 86
    assert cost(params(price=7), tokens(uncached=10), price_milli=1234) == 86
    # 1 token × 1 × 0.999 = 0.999 → 0
    assert cost(UNIT, tokens(uncached=1), price_milli=999) == 0


def test_one_floor_for_the_whole_request() -> None:
    # 1.5 + 1.5 = 3: flooring each kind separately would give 2
    p = params(prompt=15000, completion=15000)
    assert cost(p, tokens(uncached=1, answer=1)) == 3
    assert cost(p, tokens(uncached=1)) + cost(p, tokens(answer=1)) == 2


def test_each_kind_has_its_multiplier() -> None:
    p = params(price=1, prompt=10000, cached=20000, completion=30000, reasoning=40000)
    assert cost(p, tokens(uncached=1)) == 1
    assert cost(p, tokens(cached=1)) == 2
    assert cost(p, tokens(answer=1)) == 3
    assert cost(p, tokens(reasoning=1)) == 4


def test_cached_and_reasoning_are_subsets() -> None:
    p = params(prompt=10000, cached=1000, completion=20000, reasoning=50000)
    # 10 prompt tokens, 4 of them cached: 6 × 1 + 4 × 0.1 = 6.4 → 6
    assert (
        request_cost(p, prompt_tokens=10, cached_tokens=4, completion_tokens=0, reasoning_tokens=0, price_milli=1000)
        == 6
    )
    # 10 completion tokens, 3 of them reasoning: 7 × 2 + 3 × 5 = 29
    assert (
        request_cost(p, prompt_tokens=0, cached_tokens=0, completion_tokens=10, reasoning_tokens=3, price_milli=1000)
        == 29
    )


def test_inconsistent_counts_clamp_at_zero() -> None:
    # more cached than prompt tokens: no negative uncached part, every cached token billed once
    p = params(prompt=10000, cached=5000, completion=10000, reasoning=20000)
    assert (
        request_cost(p, prompt_tokens=2, cached_tokens=6, completion_tokens=1, reasoning_tokens=3, price_milli=1000)
        == 3 + 6
    )


def test_zero_price_or_coefficient_is_free() -> None:
    assert cost(params(price=0), tokens(uncached=10**6)) == 0
    assert cost(UNIT, tokens(uncached=10**6), price_milli=0) == 0


def test_large_values_stay_exact() -> None:
    p = PriceParams(2**120 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1, 10000)
    n = 2**40
    expected = (2 * n * (2**32 - 1)) * (2**120 - 1) * 10**9 // 10**7
    assert (
        request_cost(p, prompt_tokens=n, cached_tokens=0, completion_tokens=n, reasoning_tokens=0, price_milli=10**9)
        == expected
    )


def test_split_examples() -> None:
    assert split(0, 500) == (0, 0)
    assert split(100, 0) == (0, 100)
    assert split(100, 10000) == (100, 0)
    assert split(19, 500) == (0, 19)  # 0.95 → 0: the worker keeps the fraction
    assert split(20, 500) == (1, 19)
    assert split(999, 3333) == (332, 667)  # 332.97 → 332


def test_price_per_million_doc_example() -> None:
    # 10^6 tokens × 333 nanoTON × 1.15 = 382,950,000 nanoTON at ×1, then each kind's multiplier
    assert price_per_million(DOC, "prompt", 1150) == 382_950_000
    assert price_per_million(DOC, "cached", 1150) == 38_295_000
    assert price_per_million(DOC, "completion", 1150) == 1_148_850_000
    assert price_per_million(DOC, "reasoning", 1150) == 1_148_850_000
    # floored: 10^6 tokens × 1 nanoTON × 0.0001 × 0.001 = 0.1 → 0
    assert price_per_million(params(prompt=1), "prompt", 1) == 0


def test_usage_cost_accepts_protocol_usage() -> None:
    usage = Usage(prompt_tokens=1234, completion_tokens=57, cached_tokens=1000, reasoning_tokens=20)
    assert usage_cost(DOC, usage, 1150) == 193_389


# --- properties ---------------------------------------------------------------------------------

counts = st.integers(min_value=0, max_value=10**7)
mults = st.integers(min_value=0, max_value=2**32 - 1)
price_params = st.builds(
    PriceParams,
    price_per_token=st.integers(min_value=0, max_value=10**12),
    prompt_mult=mults,
    cached_mult=mults,
    completion_mult=mults,
    reasoning_mult=mults,
    commission_bps=st.integers(min_value=0, max_value=10000),
)
usages = st.builds(tokens, counts, counts, counts, counts)
coefficients = st.integers(min_value=0, max_value=10**9)


@given(cost=st.integers(min_value=0, max_value=2**120 - 1), bps=st.integers(min_value=0, max_value=10000))
def test_split_adds_up(cost: int, bps: int) -> None:
    commission, worker = split(cost, bps)
    assert commission + worker == cost
    assert commission * 10000 <= cost * bps < (commission + 1) * 10000  # floored
    assert worker >= 0


@given(price_params, usages, usages, coefficients)
def test_cost_is_superadditive_by_at_most_one(p: PriceParams, a: Tokens, b: Tokens, price_milli: int) -> None:
    together = cost(p, a + b, price_milli)
    apart = cost(p, a, price_milli) + cost(p, b, price_milli)
    assert apart <= together <= apart + 1


@given(price_params, usages, coefficients, st.sampled_from(["uncached", "cached", "answer", "reasoning"]), counts)
def test_cost_grows_with_every_token(p: PriceParams, t: Tokens, price_milli: int, part: str, extra: int) -> None:
    # adding tokens of any kind never lowers the cost
    more = t + tokens(**{part: extra})
    assert cost(p, more, price_milli) >= cost(p, t, price_milli)


@given(price_params, usages, coefficients, coefficients)
def test_cost_grows_with_the_coefficient(p: PriceParams, t: Tokens, m1: int, m2: int) -> None:
    low, high = sorted((m1, m2))
    assert cost(p, t, low) <= cost(p, t, high)


@given(price_params, usages, coefficients)
def test_rounding_is_below_one_nanoton(p: PriceParams, t: Tokens, price_milli: int) -> None:
    weighted = (
        (t.prompt_tokens - t.cached_tokens) * p.prompt_mult
        + t.cached_tokens * p.cached_mult
        + (t.completion_tokens - t.reasoning_tokens) * p.completion_mult
        + t.reasoning_tokens * p.reasoning_mult
    )
    exact_times_scale = weighted * p.price_per_token * price_milli
    charged = cost(p, t, price_milli)
    assert charged * 10**7 <= exact_times_scale < (charged + 1) * 10**7


@given(price_params, st.sampled_from(TOKEN_KINDS), coefficients)
def test_price_per_million_matches_request_cost(p: PriceParams, kind: TokenKind, price_milli: int) -> None:
    million = 1_000_000
    usage = {
        "prompt": tokens(uncached=million),
        "cached": tokens(cached=million),
        "completion": tokens(answer=million),
        "reasoning": tokens(reasoning=million),
    }[kind]
    assert price_per_million(p, kind, price_milli) == cost(p, usage, price_milli)


ANSWER = Usage(prompt_tokens=10, completion_tokens=20)
WORKER = b"\x0a" * 32
DEAR = PriceParams(**{**UNIT.__dict__, "price_per_token": 2})


def test_a_price_rise_is_billed_once_its_grace_is_over() -> None:
    billing = BillingPrices(UNIT)
    assert billing.cost(ANSWER, WORKER, 1000, now=0.0) == 30
    billing.set_prices(DEAR, now=100.0)
    assert billing.prices == DEAR
    assert billing.cost(ANSWER, WORKER, 1000, now=100.0) == 30  # clients may not have read it yet
    assert billing.cost(ANSWER, WORKER, 1000, now=100.0 + PRICE_GRACE - 1) == 30
    assert billing.cost(ANSWER, WORKER, 1000, now=100.0 + PRICE_GRACE) == 60


def test_an_answer_billed_at_the_old_prices_is_split_at_the_old_commission() -> None:
    """A commission raised with the prices must not cut the worker's share of answers still
    billed at the old prices during the grace (ties: the lower commission, the worker's favour)."""
    richer = PriceParams(**{**DEAR.__dict__, "commission_bps": UNIT.commission_bps + 1000})
    billing = BillingPrices(UNIT)
    billing.set_prices(richer, now=100.0)
    assert billing.priced(ANSWER, WORKER, 1000, now=100.0) == (30, UNIT.commission_bps)
    assert billing.priced(ANSWER, WORKER, 1000, now=100.0 + PRICE_GRACE) == (60, richer.commission_bps)


def test_a_price_cut_is_billed_at_once() -> None:
    billing = BillingPrices(DEAR)
    billing.set_prices(UNIT, now=100.0)
    assert billing.cost(ANSWER, WORKER, 1000, now=100.0) == 30


def test_a_new_worker_coefficient_is_billed_only_after_the_grace() -> None:
    billing = BillingPrices(UNIT, grace=10.0)
    assert billing.cost(ANSWER, WORKER, 2000, now=0.0) == 60  # first sight: its coefficient as it is
    assert billing.cost(ANSWER, WORKER, 3000, now=5.0) == 60  # raised: the old one for a while
    assert billing.cost(ANSWER, b"\x0b" * 32, 3000, now=5.0) == 90  # another worker: its own
    assert billing.cost(ANSWER, WORKER, 3000, now=15.0) == 90
    assert billing.cost(ANSWER, WORKER, 1000, now=16.0) == 30  # lowered: at once


def test_during_a_grace_the_lowest_figure_any_client_may_hold_is_billed() -> None:
    billing = BillingPrices(UNIT, grace=10.0)
    billing.cost(ANSWER, WORKER, 1000, now=0.0)
    billing.set_prices(DEAR, now=1.0)
    # a client may hold the old or the new registry prices, and the old or the new coefficient
    figures = [usage_cost(p, ANSWER, c) for p in (UNIT, DEAR) for c in (1000, 2000)]
    assert billing.cost(ANSWER, WORKER, 2000, now=2.0) == min(figures) == 30
