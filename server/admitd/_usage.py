"""What calls use and cost: usage as providers report it, the rule for a release that
reports none, and the prices that turn usage into nano-USD.

Plain data with the arithmetic both backends share (``release.lua`` prices a settlement
with the same operations, in the same order); the policy (``_policy.py``) picks which rule
applies to which outcome.
"""

from __future__ import annotations

import enum
import math

from ._records import record

NANO_PER_USD = 1_000_000_000  # prices, USD budgets and the ledger count nano-USD
# Prices are rounded up, less this much: float noise must not add a nano-dollar.
PRICE_SLACK = 1e-6


@record
class Usage:
    """Tokens a call used. The cached counts are parts of ``input_tokens``: every input
    token is counted there, as OpenAI's ``prompt_tokens`` counts them."""

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0  # read from the provider's prompt cache
    cache_write_input_tokens: int = 0  # written to it

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Unreported(enum.StrEnum):
    """What a release without usage is charged; the policy picks it from the outcome."""

    RESERVATION = "reservation"  # all of it, input and output
    INPUT = "input"  # the reservation's input tokens, no output
    NOTHING = "nothing"


@record
class Prices:
    """Nano-USD per token: input, output, cached input (read) and cache-write input."""

    input: float
    output: float
    cached_input: float
    cache_write_input: float

    def of(self, usage: Usage) -> int:
        """Nano-USD for ``usage``, rounded up so that a budget is never under-counted.
        Settlements are priced with this one function (and release.lua with the same
        arithmetic, in the same order)."""
        cached, written = usage.cached_input_tokens, usage.cache_write_input_tokens
        uncached = usage.input_tokens - cached - written
        return self._nano(self.input, uncached, cached, written, usage.output_tokens)

    def reservation(self, input_tokens: int, max_output_tokens: int) -> int:
        """The price a reservation holds: its input at the dearer of the input and
        cache-write prices (which part will be written to a cache is not known yet), so
        that what it settles to is never dearer."""
        dearest = max(self.input, self.cache_write_input)
        return self._nano(dearest, input_tokens, 0, 0, max_output_tokens)

    def _nano(self, input_price: float, uncached: int, cached: int, written: int, out: int) -> int:
        # The one formula (plain numbers: a reservation, priced on every Acquire, makes no
        # Usage or Prices to say the same).
        return math.ceil(
            uncached * input_price
            + cached * self.cached_input
            + written * self.cache_write_input
            + out * self.output
            - PRICE_SLACK
        )
