"""The server the property tests fuzz (``test_fuzzed_fields.py``, ``test_raw_requests.py``): its
configuration, a handle that sync hypothesis tests drive (``Served``), the codes a client can
act on, and every number GetStatus reports, to compare the server before and after a call.

``tests/conftest.py`` starts one per backend (the ``fuzz_server`` fixture).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from admitd.v1 import admission_pb2 as pb
from support.decoding import has_field
from support.harness import Harness, start_harness

Code = grpc.StatusCode
ANSWERS = {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED}
LEASE_ANSWERS = ANSWERS | {Code.PERMISSION_DENIED}  # Release/Renew naming another tenant
MAX_WAIT = 1.0  # queue.max_wait: a queued fuzz call is timed out by moving the clock this much
BETWEEN_EXAMPLES = 121.0  # > lease TTL: buckets full again, released ids and keys forgotten

FUZZ_CONFIG: dict[str, Any] = {
    "pools": [
        {
            "name": "p",
            "max_concurrency": 50,
            "tokens_per_minute": 1_000_000_000,
            "requests_per_minute": 100_000,
            "tokens_per_day": 10**12,
            "price": {"input_per_million": 1.0, "output_per_million": 3.0},
        },
        # Tight: small calls fit, big ones never do, a second one waits or is rejected.
        {
            "name": "tight",
            "max_concurrency": 1,
            "tokens_per_minute": 1000,
            "requests_per_minute": 5,
        },
    ],
    "tenants": [
        {"name": "a", "max_concurrency": 20, "tokens_per_minute": 1_000_000_000},
        {"name": "b", "weight": 0.5, "tokens_per_day": 5000, "usd_per_day": 1.0},
    ],
    "budget": {"usd_per_day": 1_000_000.0},
    "queue": {"max_wait": MAX_WAIT, "max_per_tenant": 2, "max_length": 3},
    "lease": {"ttl": 120.0},
}


class Served:
    """A harness started in a private event loop, so that sync hypothesis tests can drive it."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.runner = asyncio.Runner()
        self.h = self.runner.run(start_harness(config))

    @classmethod
    def fuzzing(cls, backend: dict[str, Any]) -> Served:
        """The fuzzed server on ``backend`` (a clean store)."""
        if backend["kind"] == "redis":
            # A generous store timeout: a slow reply on a loaded machine is not what this tests.
            backend = {**backend, "timeout": 5}
        return cls({**FUZZ_CONFIG, "backend": backend})

    def close(self) -> None:
        try:
            self.runner.run(self.h.close())
        finally:
            self.runner.close()


# -- server state as GetStatus shows it --------------------------------------------------------

LIMIT_FIELDS = ("concurrency", "tokens_per_minute", "requests_per_minute")
DAILY_FIELDS = ("tokens_per_day", "usd_per_day")


def state_of(status: pb.StatusResponse) -> dict[str, float]:
    """Every number GetStatus reports, by a flat key like ``pool:p:tokens_per_minute``."""
    out: dict[str, float] = {}
    for kind, items in (("pool", status.pools), ("tenant", status.tenants)):
        for item in items:
            out[f"{kind}:{item.name}:in_flight"] = item.in_flight
            out[f"{kind}:{item.name}:queued"] = item.queued
            for name in LIMIT_FIELDS + DAILY_FIELDS:
                if has_field(item, name):
                    out[f"{kind}:{item.name}:{name}"] = getattr(item, name).value
    for name in DAILY_FIELDS:
        if has_field(status.budget, name):
            out[f"global:{name}"] = getattr(status.budget, name).value
    return out


async def state(h: Harness) -> dict[str, float]:
    return state_of(await h.status())


def assert_unchanged(before: dict[str, float], after: dict[str, float], clock_moved: bool) -> None:
    """A refused call reserved nothing. When the clock moved (a call that waited), buckets
    may only have refilled."""
    for key, value in before.items():
        if clock_moved and key.endswith(("tokens_per_minute", "requests_per_minute")):
            assert after[key] >= value, (key, value, after[key])
        else:
            assert after[key] == value, (key, value, after[key])
