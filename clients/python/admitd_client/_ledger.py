"""admitd's cost ledger as the caller sees it: what was charged per UTC day, tenant and pool.

Released leases are charged at the usage reported at release, expired ones at their full
reservation; ``usd`` is priced with the pool's price table (0 without one).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from ._proto import admission_pb2 as pb


@dataclass(frozen=True)
class UsageRow:
    """One row of the ledger (``admitd.v1.UsageRow``).

    Attributes:
        day: The UTC day.
        tenant: The tenant charged.
        pool: The pool the calls went to.
        calls: Leases settled (released or expired).
        input_tokens: Input tokens charged (cached ones included).
        output_tokens: Output tokens charged.
        usd: Their price in USD.
        cached_input_tokens: The part of ``input_tokens`` read from the provider's prompt
            cache (priced at the pool's cached input price).
        cache_write_input_tokens: The part of ``input_tokens`` written to the prompt cache.
    """

    day: date
    tenant: str
    pool: str
    calls: int
    input_tokens: int
    output_tokens: int
    usd: float
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0

    @classmethod
    def from_proto(cls, row: pb.UsageRow) -> UsageRow:
        return cls(
            date.fromisoformat(row.day),
            row.tenant,
            row.pool,
            row.calls,
            row.input_tokens,
            row.output_tokens,
            row.usd,
            row.cached_input_tokens,
            row.cache_write_input_tokens,
        )


def day_text(day: date | str | None) -> str:
    """A day as GetUsage takes it: ``YYYY-MM-DD`` ("" for the server's default).

    A ``datetime`` is taken on its UTC day (a naive one as UTC already); a string is sent
    as it is, for admitd to judge.
    """
    if day is None:
        return ""
    if isinstance(day, datetime):
        day = day.astimezone(UTC).date() if day.tzinfo is not None else day.date()
    if isinstance(day, date):
        return day.isoformat()
    return day
