"""Requests as callers send them: validation, pool and tenant resolution, token counting and
pricing, turning an :class:`AcquireSpec` into a backend :class:`~admitd._model.Ticket`.

Every request field is validated here, and only here (the gRPC layer converts wire types
and passes the values on). Everything here is pure and reserves nothing, so a request that
fails validation leaves no trace. Each problem names the field it is about.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import field, replace

from ._config import PoolConfig, Settings, TenantConfig
from ._errors import InvalidArgument, NotFound
from ._model import CLAIM_TIMEOUT, EPOCH, Outcome, Ticket, Unit
from ._policy import UNCHECKED_PREFIX, Policy, prices
from ._records import record
from ._refusals import unchecked_not_renewable
from ._tokens import TokenCounter
from ._usage import Usage

MAX_TOKENS = 10_000_000  # per field; larger than any model's context window
MAX_NAME = 200
MAX_IDEMPOTENCY_KEY = 256
MAX_LABELS = 32
MAX_LABEL_TEXT = 256
MAX_PROMPT_CHARS = 2_000_000
MAX_LEASE_ID = 64
MAX_CANDIDATES = 8  # the pool and its fallbacks
# A prompt longer than this is counted in a worker thread (tiktoken releases the GIL), so a
# 2M-character prompt does not stall every other RPC for seconds; shorter ones are counted
# inline, where a thread hop would cost more than the count (about 1 us a character).
COUNT_INLINE_CHARS = 4_000
MAX_USAGE_DAYS = 366
_USAGE_UNITS = (Unit.TOKEN, Unit.NANO_USD)  # what a reported usage moves
# Each one checked, with the name its error gives (made once: a Release checks them all).
_USAGE_FIELDS = tuple((part.name, f"usage.{part.name}") for part in dataclasses.fields(Usage))
MAX_DURATION = 10 * 365 * 86_400  # seconds
MAX_DESCRIPTORS = 64  # in one Envoy ShouldRateLimit
MAX_ENTRIES = 32  # in one Envoy descriptor


@record
class AcquireSpec:
    """An Acquire as the caller sent it. ``priority`` uses the wire numbering:
    0 unspecified (= normal), 1 critical, 2 high, 3 normal, 4 low."""

    tenant: str
    pool: str
    input_tokens: int = 0
    max_output_tokens: int = 0
    priority: int = 0
    wait_timeout: float = 0.0
    idempotency_key: str = ""
    prompt: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    fallback_pools: tuple[str, ...] = ()  # tried in order after ``pool``
    dedup_key: str = ""  # identical calls in flight for the tenant share one lease


class Requests:
    """Validates and prices requests against one configuration."""

    def __init__(self, settings: Settings, policy: Policy, counter: TokenCounter) -> None:
        self.settings = settings
        self.policy = policy
        self.counter = counter
        # Built once per configuration, not per call.
        self._prices = {pool.name: prices(pool) for pool in settings.pools}

    async def tickets(
        self, spec: AcquireSpec, *, deadline: float | None, deferred: bool = False
    ) -> tuple[list[Ticket], float]:
        """One ticket per candidate pool (the pool, then its fallbacks, in order), each
        counted with its pool's encoding and priced with its pool's prices, and how long
        the call may wait. The candidates share one fingerprint, so an idempotent retry
        finds the lease whichever candidate granted it."""
        names = (spec.pool, *spec.fallback_pools)
        if len(names) > MAX_CANDIDATES:
            raise InvalidArgument("fallback_pools", f"at most {MAX_CANDIDATES - 1} pools")
        for i, name in enumerate(spec.fallback_pools):
            if not name:
                raise InvalidArgument(f"fallback_pools[{i}]", "empty pool name")
            if name not in self.policy.pools:
                raise NotFound(f"fallback_pools[{i}]", f"unknown pool {name[:MAX_NAME]!r}")
            if name in names[: i + 1]:
                raise InvalidArgument(f"fallback_pools[{i}]", f"{name!r} is named twice")
        if len(spec.prompt) > MAX_PROMPT_CHARS:  # before spending seconds counting it
            raise InvalidArgument("prompt", f"longer than {MAX_PROMPT_CHARS} characters")
        built = []
        for name in names:
            one = spec if name == spec.pool else replace(spec, pool=name)
            long_prompt = spec.input_tokens == 0 and len(spec.prompt) > COUNT_INLINE_CHARS
            if long_prompt and name in self.policy.pools:
                counted = await asyncio.to_thread(self.counter.count, name, spec.prompt)
                one = replace(one, input_tokens=counted)
            built.append(self.ticket(one, deadline=deadline, deferred=deferred))
        tickets, wait = [ticket for ticket, _ in built], built[0][1]
        if len(tickets) > 1:
            t = tickets[0]
            shared = _fingerprint(",".join(names), t.input_tokens, t.max_output_tokens, t.priority)
            tickets = [replace(ticket, fingerprint=shared) for ticket in tickets]
        return tickets, wait

    def ticket(
        self, spec: AcquireSpec, *, deadline: float | None, deferred: bool = False
    ) -> tuple[Ticket, float]:
        """Validate every field, count tokens and price the call.

        Returns the ticket and how long it may wait in the queue: ``wait_timeout`` bounded
        by ``queue.max_wait`` and the RPC's ``deadline``; for a ``deferred`` ticket
        (Enqueue), ``wait_timeout`` or else ``queue.ticket_max_wait``, bounded by it.
        """
        pool = self.pool(spec.pool)
        tenant = self.tenant(spec.tenant)
        check_tokens("input_tokens", spec.input_tokens)
        check_tokens("max_output_tokens", spec.max_output_tokens)
        if not 0 <= spec.priority <= 4:
            raise InvalidArgument("priority", f"unknown value {spec.priority}")
        if spec.wait_timeout < 0 or not math.isfinite(spec.wait_timeout):
            raise InvalidArgument("wait_timeout", "must not be negative")
        for name, key in (("idempotency_key", spec.idempotency_key), ("dedup_key", spec.dedup_key)):
            if len(key) > MAX_IDEMPOTENCY_KEY:
                raise InvalidArgument(name, f"longer than {MAX_IDEMPOTENCY_KEY} characters")
        if deferred and spec.dedup_key:
            raise InvalidArgument("dedup_key", "joining a call in flight needs a waiting RPC")
        if len(spec.prompt) > MAX_PROMPT_CHARS:
            raise InvalidArgument("prompt", f"longer than {MAX_PROMPT_CHARS} characters")
        check_labels(spec.labels)
        input_tokens = spec.input_tokens
        if input_tokens == 0 and spec.prompt:
            input_tokens = self.counter.count(pool.name, spec.prompt)
        if input_tokens + spec.max_output_tokens == 0:
            raise InvalidArgument(
                "input_tokens",
                "the reservation is empty: set input_tokens, prompt or max_output_tokens",
            )
        priority = (spec.priority or 3) - 1
        queue = self.settings.queue
        if deferred:
            wait = min(spec.wait_timeout or queue.ticket_max_wait, queue.ticket_max_wait)
        else:
            wait = min(spec.wait_timeout, queue.max_wait)
            if deadline is not None:
                wait = max(0.0, min(wait, deadline))
        price = self._prices[pool.name]
        ticket = Ticket(
            lease_id=os.urandom(16).hex(),  # secrets.token_hex(16), without its 3 Python calls
            tenant=tenant.name,
            pool=pool.name,
            input_tokens=input_tokens,
            max_output_tokens=spec.max_output_tokens,
            nano_usd=price.reservation(input_tokens, spec.max_output_tokens),
            price_in=price.input,
            price_out=price.output,
            price_cached=price.cached_input,
            price_write=price.cache_write_input,
            priority=priority,
            cost=(input_tokens + spec.max_output_tokens) / tenant.weight,
            limits=self.policy.limits(pool, tenant),
            ttl=self.settings.lease.ttl,
            wait=wait,
            claim_timeout=queue.ticket_claim_timeout if deferred else CLAIM_TIMEOUT,
            deferred=deferred,
            dedup_key=spec.dedup_key,
            idempotency_key=spec.idempotency_key,
            fingerprint=_fingerprint(pool.name, input_tokens, spec.max_output_tokens, priority),
            max_queued_tenant=tenant.max_queued or queue.max_per_tenant,
            max_queued_total=queue.max_length,
        )
        return ticket, wait

    def pool(self, name: str) -> PoolConfig:
        if not name:
            raise InvalidArgument("pool", "required")
        pool = self.policy.pools.get(name)
        if pool is None:
            raise NotFound("pool", f"unknown pool {name[:MAX_NAME]!r}")
        return pool

    def tenant(self, name: str) -> TenantConfig:
        """The tenant ``name`` (the default tenant for an unknown or empty one, if set)."""
        tenant = self.policy.tenants.get(name) if name else None
        if tenant is None and self.settings.default_tenant is not None:
            tenant = self.policy.tenants[self.settings.default_tenant]
        if tenant is not None:
            return tenant
        if not name:
            raise InvalidArgument("tenant", "required (the server has no default tenant)")
        raise NotFound("tenant", f"unknown tenant {name[:MAX_NAME]!r}")

    def charged(self, spec: AcquireSpec, usage: Usage) -> Ticket:
        """The ticket of a call of ``spec``'s tenant and pool that already happened and
        reserved nothing, sized by ``usage``: only its token and USD limits, which a
        reported usage moves (``Engine.charge``)."""
        call = replace(
            spec, input_tokens=usage.input_tokens, max_output_tokens=usage.output_tokens, prompt=""
        )
        ticket, _ = self.ticket(call, deadline=None)
        moved = tuple(limit for limit in ticket.limits if limit.unit in _USAGE_UNITS)
        return replace(ticket, limits=moved)

    def owner(self, name: str | None) -> str | None:
        """The tenant a Release/Renew acts as: resolved like Acquire's; None = not checked."""
        return self.tenant(name).name if name else None

    def check_release(
        self,
        lease_id: str,
        usage: Usage | None,
        retry_after: float,
        result: bytes | None,
    ) -> None:
        check_lease_id(lease_id)
        if retry_after < 0 or not math.isfinite(retry_after):
            raise InvalidArgument("provider_retry_after", "must not be negative")
        most = self.settings.lease.max_shared_result
        if result is not None and len(result) > most:
            raise InvalidArgument("result", f"at most {most} bytes (lease.max_shared_result)")
        if usage is not None:
            for part, name in _USAGE_FIELDS:
                check_tokens(name, getattr(usage, part))
            cached, written = usage.cached_input_tokens, usage.cache_write_input_tokens
            if cached + written > usage.input_tokens:
                raise InvalidArgument(
                    "usage.cached_input_tokens",
                    "cached_input_tokens and cache_write_input_tokens are parts of"
                    f" input_tokens, yet {cached} + {written} > {usage.input_tokens}",
                )

    def check_renew(self, lease_id: str, extend_by: float) -> float:
        """The seconds a Renew extends the lease by (0: one lease TTL)."""
        check_lease_id(lease_id)
        if lease_id.startswith(UNCHECKED_PREFIX):
            raise unchecked_not_renewable()
        if extend_by < 0 or not math.isfinite(extend_by):
            raise InvalidArgument("extend_by", "must not be negative")
        if extend_by > self.settings.lease.max_extend:
            raise InvalidArgument(
                "extend_by", f"at most {self.settings.lease.max_extend:g}s (lease.max_extend)"
            )
        return extend_by or self.settings.lease.ttl

    def ticket_wait(self, wait_timeout: float, deadline: float | None) -> float:
        """How long a WaitTicket waits: at most ``queue.max_wait`` and the RPC's deadline."""
        wait = min(wait_timeout, self.settings.queue.max_wait)
        return wait if deadline is None else max(0.0, min(wait, deadline))


def check_days(first: int, last: int) -> list[int]:
    """The ledger days from ``first`` to ``last`` (``day_number``s, inclusive)."""
    if last < first:
        raise InvalidArgument("to_day", "before from_day")
    if last - first >= MAX_USAGE_DAYS:
        raise InvalidArgument("to_day", f"at most {MAX_USAGE_DAYS} days from from_day")
    return list(range(first, last + 1))


def duration(seconds: int, nanos: int, field: str) -> float:
    """A wire duration (``google.protobuf.Duration``'s fields) in seconds."""
    if seconds < 0 or nanos < 0:
        raise InvalidArgument(field, "must not be negative")
    if nanos >= 1_000_000_000:
        raise InvalidArgument(field, "nanos must be below 1e9")
    if seconds > MAX_DURATION:
        raise InvalidArgument(field, "absurdly long")
    return seconds + nanos / 1e9


def day(text: str, field: str) -> int:
    """A YYYY-MM-DD date as a ledger day number."""
    try:
        date = datetime.date.fromisoformat(text)
    except ValueError:
        message = f"expected a date like 2026-11-23, got {text[:40]!r}"
        raise InvalidArgument(field, message) from None
    days: int = (date - EPOCH).days
    return days


def outcome(value: int) -> Outcome:
    """A wire ``admitd.v1.Outcome`` (0, unspecified, is OK)."""
    if value == 0:
        return Outcome.OK
    try:
        return Outcome(value)
    except ValueError:
        raise InvalidArgument("outcome", f"unknown value {value}") from None


def undecodable(message_type: str, problem: str) -> InvalidArgument:
    """A request payload that does not decode as a ``message_type`` message (the gRPC layer
    hands it to the handler, which raises this)."""
    return InvalidArgument("request", f"not a valid {message_type} message: {problem}")


def check_rate_limit(
    domain: str, hits_addend: int, descriptors: Sequence[Sequence[tuple[str, str]]]
) -> None:
    """An Envoy ``ShouldRateLimit``'s shape (``_api/envoy.py``), before anything is charged:
    its domain, its ``hits_addend``, and each descriptor's entries as (key, value) pairs. A
    descriptor's own ``hits_addend`` is checked where it is read, with :func:`check_tokens`."""
    if not domain:
        raise InvalidArgument("domain", "required")
    if len(domain) > MAX_NAME:
        raise InvalidArgument("domain", f"longer than {MAX_NAME} characters")
    if not descriptors:
        raise InvalidArgument("descriptors", "at least one descriptor is required")
    if len(descriptors) > MAX_DESCRIPTORS:
        raise InvalidArgument("descriptors", f"at most {MAX_DESCRIPTORS}")
    check_tokens("hits_addend", hits_addend)
    for i, entries in enumerate(descriptors):
        if not entries:
            raise InvalidArgument(f"descriptors[{i}].entries", "at least one entry is required")
        if len(entries) > MAX_ENTRIES:
            raise InvalidArgument(f"descriptors[{i}].entries", f"at most {MAX_ENTRIES}")
        for j, (key, value) in enumerate(entries):
            if not key:
                raise InvalidArgument(f"descriptors[{i}].entries[{j}].key", "required")
            if len(key) > MAX_NAME or len(value) > MAX_NAME:
                raise InvalidArgument(
                    f"descriptors[{i}].entries[{j}]",
                    f"key and value are at most {MAX_NAME} characters",
                )


def _fingerprint(pools: str, input_tokens: int, max_output_tokens: int, priority: int) -> str:
    """What an idempotent retry must repeat: the pool(s) asked for and the call's size."""
    return f"{pools}|{input_tokens}|{max_output_tokens}|{priority}"


def check_tokens(name: str, value: int) -> None:
    if value < 0:
        raise InvalidArgument(name, f"must not be negative, got {value}")
    if value > MAX_TOKENS:
        raise InvalidArgument(name, f"at most {MAX_TOKENS}, got {value}")


def check_lease_id(lease_id: str, field: str = "lease_id") -> None:
    if not lease_id:
        raise InvalidArgument(field, "required")
    if len(lease_id) > MAX_LEASE_ID:
        raise InvalidArgument(field, f"longer than {MAX_LEASE_ID} characters")


def check_labels(labels: Mapping[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument("labels", f"at most {MAX_LABELS} entries")
    for key, value in labels.items():
        if not key or len(key) > MAX_LABEL_TEXT or len(value) > MAX_LABEL_TEXT:
            raise InvalidArgument(
                "labels",
                f"keys must be 1-{MAX_LABEL_TEXT} and values 0-{MAX_LABEL_TEXT} characters",
            )
