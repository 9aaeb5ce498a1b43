"""The configuration the state machine runs: one pool, three tenants with a limit of each
kind between them, a budget, and a queue small enough to fill."""

from __future__ import annotations

from typing import Any

CONFIG: dict[str, Any] = {
    "pools": [
        {
            "name": "p",
            "max_concurrency": 4,
            "tokens_per_minute": 2400,
            "requests_per_minute": 30,
            "tokens_per_day": 20_000,
            "price": {
                "input_per_million": 1.0,
                "output_per_million": 3.0,
                "cached_input_per_million": 0.25,
                "cache_write_input_per_million": 1.5,
            },
        }
    ],
    "tenants": [
        {"name": "a", "weight": 1.0, "max_concurrency": 2, "tokens_per_minute": 600},
        {"name": "b", "weight": 2.0, "tokens_per_day": 3000},
        {"name": "c", "weight": 0.5, "requests_per_minute": 12, "usd_per_day": 0.004},
    ],
    "budget": {"usd_per_day": 0.05},
    # max_wait is off the 0.25 s grid the clock moves on, so a queue timeout never ties with
    # a reaper tick (their order would be arbitrary).
    "queue": {"max_length": 4, "max_per_tenant": 2, "max_wait": 7.9, "aging": 5.0},
    "lease": {"ttl": 8.0, "max_extend": 60.0, "reap_interval": 1.0},
    "observability": {"metrics_listen": None},
}
