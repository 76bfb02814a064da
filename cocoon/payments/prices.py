"""Request prices in nanoTON: exact integer arithmetic, one floor per request.

Token counts follow the OpenAI usage object: ``prompt_tokens`` includes the cached ones and
``completion_tokens`` includes the reasoning ones. Each token is billed once, at the multiplier of
its most specific kind: cached tokens at ``cached_mult``, the other prompt tokens at
``prompt_mult``, reasoning tokens at ``reasoning_mult``, the other completion tokens at
``completion_mult``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, get_args

MAX_COINS = 2**120 - 1  # the largest `coins` value a cell can hold (VarUInteger 16)
MAX_UINT32 = 2**32 - 1
MULT_SCALE = 10_000  # multipliers are in 1/10000: 10000 = ×1
BPS_SCALE = 10_000  # the commission is in basis points
COEFFICIENT_SCALE = 1000  # a worker's price coefficient (price_milli) is in thousandths: 1000 = ×1

TokenKind = Literal["prompt", "cached", "completion", "reasoning"]
TOKEN_KINDS: tuple[TokenKind, ...] = get_args(TokenKind)


@dataclass(frozen=True)
class PriceParams:
    """The root contract's price parameters (``RootParams``, without stake and close delay)."""

    price_per_token: int  # nanoTON per token at coefficient ×1, before multipliers
    prompt_mult: int  # multipliers in 1/10000
    cached_mult: int
    completion_mult: int
    reasoning_mult: int
    commission_bps: int  # the proxy's share of each payment, basis points

    def __post_init__(self) -> None:
        if not 0 <= self.price_per_token <= MAX_COINS:
            raise ValueError(f"price_per_token {self.price_per_token} is outside 0..2^120-1")
        for kind in TOKEN_KINDS:
            value = self.mult(kind)
            if not 0 <= value <= MAX_UINT32:
                raise ValueError(f"{kind}_mult {value} is outside 0..2^32-1")
        if not 0 <= self.commission_bps <= BPS_SCALE:
            raise ValueError(f"commission_bps {self.commission_bps} is outside 0..10000")

    def mult(self, kind: TokenKind) -> int:
        """The multiplier (1/10000) of one token kind."""
        if kind == "prompt":
            return self.prompt_mult
        if kind == "cached":
            return self.cached_mult
        if kind == "completion":
            return self.completion_mult
        if kind == "reasoning":
            return self.reasoning_mult
        raise ValueError(f"unknown token kind {kind!r}; expected one of {', '.join(TOKEN_KINDS)}")


class TokenUsage(Protocol):
    """Anything with the four token counts (``UsageRecord``, the protocol's ``Usage``)."""

    @property
    def prompt_tokens(self) -> int: ...
    @property
    def cached_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def reasoning_tokens(self) -> int: ...


def _check_count(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{name} {value} is negative")


def _cost(weighted_tokens: int, params: PriceParams, price_milli: int) -> int:
    # The exact product first, one division last: no intermediate rounding can accumulate.
    return weighted_tokens * params.price_per_token * price_milli // (MULT_SCALE * COEFFICIENT_SCALE)


def request_cost(
    params: PriceParams,
    *,
    prompt_tokens: int,
    cached_tokens: int,
    completion_tokens: int,
    reasoning_tokens: int,
    price_milli: int,
) -> int:
    """The price of one request in nanoTON.

    ``floor(weighted × price_per_token × price_milli / (10000 × 1000))`` where ``weighted`` is
    ``(prompt − cached)⁺ × prompt_mult + cached × cached_mult + (completion − reasoning)⁺ ×
    completion_mult + reasoning × reasoning_mult`` (``x⁺`` = max(x, 0)). The single floor is on
    the exact product, so the client is never charged a fraction it did not owe: rounding is in
    the client's favour, by less than 1 nanoTON per request.
    """
    _check_count("prompt_tokens", prompt_tokens)
    _check_count("cached_tokens", cached_tokens)
    _check_count("completion_tokens", completion_tokens)
    _check_count("reasoning_tokens", reasoning_tokens)
    _check_count("price_milli", price_milli)
    weighted = (
        max(prompt_tokens - cached_tokens, 0) * params.prompt_mult
        + cached_tokens * params.cached_mult
        + max(completion_tokens - reasoning_tokens, 0) * params.completion_mult
        + reasoning_tokens * params.reasoning_mult
    )
    return _cost(weighted, params, price_milli)


def usage_cost(params: PriceParams, usage: TokenUsage, price_milli: int) -> int:
    """``request_cost`` of a usage record."""
    return request_cost(
        params,
        prompt_tokens=usage.prompt_tokens,
        cached_tokens=usage.cached_tokens,
        completion_tokens=usage.completion_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        price_milli=price_milli,
    )


def split(cost: int, commission_bps: int) -> tuple[int, int]:
    """(proxy commission, worker share): commission floored, the worker gets the rest, sum = cost."""
    _check_count("cost", cost)
    if not 0 <= commission_bps <= BPS_SCALE:
        raise ValueError(f"commission_bps {commission_bps} is outside 0..10000")
    commission = cost * commission_bps // BPS_SCALE
    return commission, cost - commission


def price_per_million(params: PriceParams, kind: TokenKind, price_milli: int) -> int:
    """nanoTON per 1,000,000 tokens of one kind at coefficient ``price_milli`` (floored, for the price book).

    Equal to ``request_cost`` of a request made of exactly 10^6 tokens of that kind.
    """
    _check_count("price_milli", price_milli)
    return _cost(1_000_000 * params.mult(kind), params, price_milli)


class RootPrices(Protocol):
    """The price part of the root contract's parameters (``cocoon.chain.contracts.RootParams``)."""

    @property
    def price_per_token(self) -> int: ...
    @property
    def prompt_mult(self) -> int: ...
    @property
    def cached_mult(self) -> int: ...
    @property
    def completion_mult(self) -> int: ...
    @property
    def reasoning_mult(self) -> int: ...
    @property
    def commission_bps(self) -> int: ...


def prices_of(params: RootPrices) -> PriceParams:
    """The registry's price parameters, as every role bills with them."""
    return PriceParams(
        price_per_token=params.price_per_token,
        prompt_mult=params.prompt_mult,
        cached_mult=params.cached_mult,
        completion_mult=params.completion_mult,
        reasoning_mult=params.reasoning_mult,
        commission_bps=params.commission_bps,
    )


PRICE_GRACE = 60.0  # seconds after a price change during which the lower of old and new is billed


class BillingPrices:
    """The prices a proxy bills with (pure: the caller passes the time).

    A client pays no more than its own figure, from the registry as it last read it and the
    worker list it sealed the request for, both up to a polling interval or a list's age
    behind the proxy's. So for ``grace`` seconds after the registry's prices or a worker's
    price coefficient change, the proxy bills the lowest of the old and new figures: whichever
    the client saw, it is then never billed more than it pays, and no answer is left uncovered
    by a voucher (which would make the proxy refuse the client's next request).
    """

    def __init__(self, prices: PriceParams, grace: float = PRICE_GRACE) -> None:
        self.prices = prices
        self.grace = grace
        self._previous: PriceParams | None = None
        self._previous_until = 0.0
        # worker key → (price coefficient, the one before it, until when the older one counts)
        self._workers: dict[bytes, tuple[int, int, float]] = {}

    def set_prices(self, prices: PriceParams, now: float) -> None:
        if prices != self.prices:
            self._previous, self._previous_until = self.prices, now + self.grace
            self.prices = prices

    def cost(self, usage: TokenUsage, worker_key: bytes, price_milli: int, now: float) -> int:
        """The answer's cost: the lowest over the prices and coefficients still in their grace."""
        return self.priced(usage, worker_key, price_milli, now)[0]

    def priced(self, usage: TokenUsage, worker_key: bytes, price_milli: int, now: float) -> tuple[int, int]:
        """``cost``, and the commission (basis points) of the price table it was billed by: a
        commission raised during the grace applies once the new prices are billed, not before
        (the worker's share of an answer billed at the old prices is the old share)."""
        known = self._workers.get(worker_key)
        if known is None:
            known = self._workers[worker_key] = (price_milli, price_milli, 0.0)
        elif known[0] != price_milli:
            known = self._workers[worker_key] = (price_milli, known[0], now + self.grace)
        tables = [self.prices]
        if self._previous is not None and now < self._previous_until:
            tables.append(self._previous)
        if now >= known[2] and len(tables) == 1:  # no change in its grace: the common case
            return usage_cost(self.prices, usage, price_milli), self.prices.commission_bps
        coefficients = {price_milli, known[1]} if now < known[2] else {price_milli}
        return min(
            (usage_cost(table, usage, coefficient), table.commission_bps)
            for table in tables
            for coefficient in coefficients
        )
