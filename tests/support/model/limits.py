"""What a call asks of which limits: the limits a configuration declares, a call's ticket
(its tokens, its price and the limits it must fit, in the order that names a refusal), and
the arithmetic the server words its answers with (prices rounded up, retry hints)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

EPS = 1e-6
DAY = 86_400.0
# README, "How admission works": a refused call's retry delay.
HOLD_WEIGHT = 0.2  # a gauge's typical hold: each new hold weighs this much
MIN_SLOT_WAIT = 0.05  # a slot's holder is expected no sooner than this
MIN_RETRY = 0.001
DAILY_FIELDS = ("tokens_per_day", "usd_per_day")
FLOW_FIELDS = ("max_concurrency", "tokens_per_minute", "requests_per_minute")
KIND = {
    "tokens_per_day": "daily",
    "usd_per_day": "daily",
    "max_concurrency": "gauge",
    "tokens_per_minute": "bucket",
    "requests_per_minute": "bucket",
}
UNIT = {
    "tokens_per_day": "token",
    "usd_per_day": "nano_usd",
    "max_concurrency": "slot",
    "tokens_per_minute": "token",
    "requests_per_minute": "request",
}


@dataclass(frozen=True)
class Limit:
    key: str  # the server's key: "<scope>:<owner>:<field>", or "global:<field>"
    kind: str  # gauge | bucket | daily
    unit: str  # slot | request | token | nano_usd
    scope: str  # pool | tenant | global
    capacity: float
    rate: float = 0.0  # per second, buckets only

    @property
    def reason(self) -> str:
        if self.kind == "gauge":
            return "CONCURRENCY_LIMIT"
        if self.kind == "bucket":
            return "TOKEN_RATE_LIMIT" if self.unit == "token" else "REQUEST_RATE_LIMIT"
        return "TENANT_QUOTA" if self.scope == "tenant" else "BUDGET_EXHAUSTED"


def limits_of(
    scope: str, owner: str, section: dict[str, Any], fields: tuple[str, ...]
) -> list[Limit]:
    out = []
    for name in fields:
        value = section.get(name)
        if value is None:
            continue
        capacity = float(round(value * 1e9)) if UNIT[name] == "nano_usd" else float(value)
        rate = capacity / 60.0 if KIND[name] == "bucket" else 0.0
        key = f"{scope}:{owner}:{name}" if owner else f"{scope}:{name}"
        out.append(Limit(key, KIND[name], UNIT[name], scope, capacity, rate))
    return out


def nano_per_token(per_million: float) -> float:
    return per_million * 1_000_000_000 / 1_000_000


def price(
    inp: int,
    out: int,
    pin: float,
    pout: float,
    cached: tuple[int, int, float, float] = (0, 0, 0.0, 0.0),
) -> int:
    """Rounded up, so that a budget is never under-counted. ``cached``: tokens read from and
    written to the provider's cache (parts of ``inp``), and their prices."""
    read, written, pread, pwrite = cached
    uncached = inp - read - written
    return math.ceil(uncached * pin + read * pread + written * pwrite + out * pout - 1e-6)


def hint(seconds: float) -> float:
    """A retry delay as the server words it: rounded up to the microsecond."""
    return max(MIN_RETRY, math.ceil(round(seconds * 1e6, 3)) / 1e6)


@dataclass
class Ticket:
    id: str
    tenant: str
    pool: str
    inp: int
    out: int
    usd: int
    pin: float
    pout: float
    pread: float  # cached input
    pwrite: float  # cache-write input
    prio: int  # class 0 (critical) .. 3 (low)
    cost: float  # reservation / weight
    limits: tuple[Limit, ...]
    wait: float
    ttl: float

    @property
    def tokens(self) -> int:
        return self.inp + self.out

    def amount(self, unit: str) -> float:
        return {"token": float(self.tokens), "nano_usd": float(self.usd)}.get(unit, 1.0)
