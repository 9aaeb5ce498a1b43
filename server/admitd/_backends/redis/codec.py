"""The wire schema between the Redis backend and its Lua scripts, in one place: what the
two share (the schema below, and the constants of ``_model`` the scripts use), how tickets
and limits are sent to the scripts, and how the scripts' JSON documents are read back.

The scripts get the shared part from the loader (``scripts.py``): a prologue written from
here, and fields written in place; they use its names, never a copy of a value
(``tests/test_lua_schema.py`` fails on a copy).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import operator
from typing import Any

from ..._model import (
    AcquireResult,
    Beat,
    DedupEnd,
    Denial,
    ExpireResult,
    Gate,
    Kind,
    LeaseRecord,
    Limit,
    Outcome,
    Progress,
    QueueFull,
    ReleaseResult,
    Scope,
    Settlement,
    Ticket,
    Unit,
)
from ..._usage import Unreported, Usage
from ..errors import FingerprintMismatch, LeaseExpired, LeaseGone, LeaseLost, NotOwner

# -- the schema -------------------------------------------------------------------------------

LIMIT_FIELDS = ("key", "kind", "unit", "scope", "capacity", "rate", "name", "owner", "shadow")
"""A limit on the wire: a JSON array of these fields of :class:`~admitd._model.Limit`, in
this order (Lua: ``l[L_KIND]``)."""

CONFIGURED_FIELDS = ("capacity", "rate", "shadow")
"""What configure.lua keeps of each configured limit, by key, as a JSON array in this order
(Lua: ``c[C_RATE]``)."""

TICKET_KEYS = {
    "lease_id": "id",
    "input_tokens": "in",
    "max_output_tokens": "out",
    "nano_usd": "usd",
    "priority": "prio",
    "cost": "cost",
    "wait": "wait",
    "claim_timeout": "claim",
    "deferred": "def",
    "dedup_key": "dd",
    "idempotency_key": "idem",
    "fingerprint": "fp",
    # From here on, what every call of a tenant in a pool carries alike (TICKET_SHARED).
    "tenant": "tenant",
    "pool": "pool",
    "price_in": "pin",
    "price_out": "pout",
    "price_cached": "pcr",
    "price_write": "pcw",
    "ttl": "ttl",
    "max_queued_tenant": "mqt",
    "max_queued_total": "mqa",
    "limits": "limits",
}
"""A ticket's JSON keys by :class:`~admitd._model.Ticket` field (Lua: ``t[T.tenant]``), in the
order :func:`ticket_json` writes them. Short, as every look and dispatch decodes waiters'
tickets; a lease record the scripts return uses the same keys for the ticket's fields."""

TICKET_SHARED = f',"{TICKET_KEYS["tenant"]}":'
"""What precedes the part of a ticket's JSON that is the same text for every call of a tenant
in a pool (:func:`ticket_json`: compact, the call's own fields first, the tenant's and pool's
after, limits last). The scripts split a ticket there and decode that part once for all the
tickets carrying it (``decode_ticket`` in ``lua/_lib1_base.lua``): decoding it anew, its
numbers parsed each time, was most of what decoding a ticket cost."""

LEASE = "lease"
"""``<prefix>:lease:<lease id>``: a live lease, a hash (``lua/_lib4_leases.lua``); tests read it."""
GRANTS = "grants"
"""The channel (``<prefix>:grants``) a grant's lease id, or ``end:<leader>``, is published on."""
WAITER = "w"
"""``<prefix>:w:<lease id>``: a queued waiter, a hash (``lua/_lib5_queue.lua`` push)."""
GRANTED = "granted"
"""``<prefix>:granted:<lease id>``: a grant its RPC has not claimed yet, as a lease record."""
DEDUP_END = "dedupend"
"""``<prefix>:dedupend:<leader>``: how a dedup leader's call ended (kept a minute)."""
UNCLAIMED = "unclaimed"
"""``<prefix>:unclaimed``: a sorted set of the grants no RPC has claimed yet, by claim
deadline (``lua/_lib5_queue.lua``); the grant listener's poll reads it (``listener.py``)."""
REPLICAS = "replicas"
"""``<prefix>:replicas``: a hash of replica id -> the Redis TIME by which it promised its next
heartbeat (``beat.lua``); a replica past it is dead, and its waiters and grants are dropped."""
PRIMARY = "primary"
"""``<prefix>:primary``: the identity of the Redis primary admitd last recorded
(``<master_replid>/<run_id>``); another one found there means the primary changed."""
LEARN = "learn"
"""``<prefix>:learn``: until when gauges count as full after the primary changed."""
LOST = "lostuntil"
"""``<prefix>:lostuntil``: until when an unknown lease may be one lost with the old primary."""

SHARED_CONSTANTS = (
    "DAY_SECONDS",
    "DEDUP_KEEP",
    "END_PREFIX",
    "HOLD_WEIGHT",
    "LEDGER_DAYS",
    "MAX_EXACT_POSITION",
    "MAX_EXAMINED",
    "MAX_PAUSE",
    "PRICE_SLACK",
    "PRIORITY_CLASSES",
    "RATE_WINDOW",
)
"""The constants of ``_model`` the scripts use, under the same names."""

USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_input_tokens",
)
"""Reported usage on the wire: a JSON array of these fields of :class:`~admitd._usage.Usage`
(Lua: ``u[U_CACHED_INPUT_TOKENS]``)."""

_USAGE = operator.attrgetter(*USAGE_FIELDS)
_LIMIT = operator.attrgetter(*LIMIT_FIELDS)
_TICKET_FIELDS = tuple(name for name in TICKET_KEYS if name != "limits")
_TICKET = operator.attrgetter(*_TICKET_FIELDS)
_TICKET_WIRE = tuple(TICKET_KEYS[name] for name in _TICKET_FIELDS)


# -- to the scripts ---------------------------------------------------------------------------


def limits_json(limits: list[Limit]) -> str:
    return json.dumps([limit_json(limit) for limit in limits])


def gates_json(gates: list[Gate]) -> str:
    return json.dumps([dataclasses.asdict(gate) for gate in gates])


def release_args(
    lease_id: str,
    usage: Usage | Unreported,
    tenant: str | None,
    outcome: Outcome,
    retry_after: float,
    result: bytes | None,
) -> tuple[str, ...]:
    """release.lua's ARGV[3..8]; the usage as a JSON array of USAGE_FIELDS, or the rule
    for none (an ``Unreported`` value)."""
    reported = usage.value if isinstance(usage, Unreported) else usage_json(usage)
    shared = base64.b64encode(result).decode() if result is not None else ""
    return (lease_id, reported, tenant or "", str(int(outcome)), repr(retry_after), shared)


def usage_json(usage: Usage) -> str:
    """Reported usage as the scripts take it: a JSON array of USAGE_FIELDS."""
    return json.dumps(_USAGE(usage))


# -- from the scripts -------------------------------------------------------------------------


def acquire_result(doc: dict[str, Any], ticket: Ticket) -> AcquireResult:
    if doc.get("mismatch"):
        raise FingerprintMismatch(ticket.idempotency_key)
    granted = doc.get("granted")
    if granted is not None:
        return _granted(granted, ticket)
    result = AcquireResult(
        queued=bool(doc.get("queued")),
        replayed=bool(doc.get("replayed")),
        waiting_on=str(doc.get("waiting_on", "")),
        follows=str(doc.get("follows", "")),
        progress=progress(doc.get("progress")),
    )
    if "lease" in doc:
        result.lease = lease(doc["lease"])
    elif "full" in doc:
        full = doc["full"]
        rate = full.get("grants_per_second")
        result.denial = QueueFull(
            full["scope"],
            int(full["depth"]),
            int(full["limit"]),
            pool_depth=int(full["pool_depth"]),
            grants_per_second=None if rate is None else float(rate),
        )
    elif "denial" in doc:
        result.denial = denial(doc["denial"])
    return result


def _granted(granted: list[Any], ticket: Ticket) -> AcquireResult:
    """What most Acquires answer, ``{"granted": [expires_in, shadowed]}``: the ticket granted
    at once, nothing queued and nothing else moved. The rest of its lease record is the
    ticket's (the scripts' record of it would only copy it back: building and encoding it
    was ~3% of a pair's redis-server instructions)."""
    expires_in, shadowed = granted
    record = ticket.lease(float(expires_in), shadowed=str(shadowed))
    return AcquireResult(lease=record, waiting_on=ticket.lease_id)


def beat(doc: dict[str, Any]) -> Beat:
    return Beat(progress(doc.get("progress")), bool(doc.get("lapsed")))


def release_result(doc: dict[str, Any], lease_id: str) -> ReleaseResult:
    raise_lease_error(doc, lease_id)
    return ReleaseResult(settlement(doc["settlement"]), progress(doc.get("progress")))


def settlement(s: dict[str, Any]) -> Settlement:
    return Settlement(
        lease=lease(s["lease"]),
        charged_tokens=int(s["charged_tokens"]),
        refunded_tokens=int(s["refunded_tokens"]),
        charged_nano_usd=int(s["charged_nano_usd"]),
        already_released=bool(s["already_released"]),
    )


def expire_result(doc: dict[str, Any]) -> ExpireResult:
    expired = [lease(item) for item in as_list(doc.get("expired"))]
    next_in = doc.get("next_expiry_in")
    return ExpireResult(
        expired, progress(doc.get("progress")), None if next_in is None else float(next_in)
    )


def raise_lease_error(doc: dict[str, Any], lease_id: str) -> None:
    error = doc.get("error")
    if error == "gone":
        raise LeaseGone(lease_id)
    if error == "lost":
        raise LeaseLost(lease_id)
    if error == "expired":
        expired = doc["expired"]
        settled = expired.get("settlement")
        raise LeaseExpired(lease(expired["lease"]), settlement(settled) if settled else None)
    if error == "not_owner":
        raise NotOwner(lease_id)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def as_list(value: Any) -> list[Any]:
    # cjson encodes an empty Lua table as {}.
    return list(value) if isinstance(value, list) else []


def as_dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def limit_json(limit: Limit) -> tuple[Any, ...]:
    """The limit's :data:`LIMIT_FIELDS` (kinds, units and scopes are strings)."""
    values: tuple[Any, ...] = _LIMIT(limit)
    return values


def limit(raw: list[Any]) -> Limit:
    f = dict(zip(LIMIT_FIELDS, raw, strict=True))
    return Limit(
        key=str(f["key"]),
        kind=Kind(f["kind"]),
        unit=Unit(f["unit"]),
        scope=Scope(f["scope"]),
        name=str(f["name"]),
        owner=str(f["owner"]),
        capacity=float(f["capacity"]),
        rate=float(f["rate"]),
        shadow=bool(f["shadow"]),
    )


def ticket_json(t: Ticket) -> str:
    """The ticket as the scripts take it: compact JSON, in the order of :data:`TICKET_KEYS`
    (split by the scripts at :data:`TICKET_SHARED`), its limits last.

    The limits' text (most of it) is encoded once per tuple: the policy hands all tickets of
    a pool and tenant one tuple. Kept by id with the tuple itself, so the id is not reused
    while kept; a configuration's tuples are few (all dropped past 4,096)."""
    kept = _LIMITS_TEXT.get(id(t.limits))
    if kept is None or kept[0] is not t.limits:
        if len(_LIMITS_TEXT) >= 4096:
            _LIMITS_TEXT.clear()
        kept = _LIMITS_TEXT[id(t.limits)] = (t.limits, _COMPACT([_LIMIT(x) for x in t.limits]))
    head = _COMPACT(dict(zip(_TICKET_WIRE, _TICKET(t), strict=True)))
    return f"{head[:-1]}{_LIMITS_KEY}{kept[1]}}}"


_LIMITS_TEXT: dict[int, tuple[tuple[Limit, ...], str]] = {}
_LIMITS_KEY = f',"{TICKET_KEYS["limits"]}":'
# One encoder (json.dumps with separators builds one per call); a ticket has no cycles.
_COMPACT = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def lease(raw: dict[str, Any]) -> LeaseRecord:
    """A lease record (lua/_lib4_leases.lua ``record``): the ticket's keys for its fields."""
    k = TICKET_KEYS
    return LeaseRecord(
        lease_id=str(raw[k["lease_id"]]),
        tenant=str(raw[k["tenant"]]),
        pool=str(raw[k["pool"]]),
        input_tokens=int(raw[k["input_tokens"]]),
        max_output_tokens=int(raw[k["max_output_tokens"]]),
        nano_usd=int(raw[k["nano_usd"]]),
        expires_in=float(raw["expires_in"]),
        queued_for=float(raw["queued_for"]),
        held_for=float(raw["held_for"]),
        shadowed=str(raw.get("shadowed") or ""),
    )


def denial(raw: dict[str, Any]) -> Denial:
    cause = str(raw.get("cause") or "")
    return Denial(
        limit(raw["limit"]),
        float(raw["level"]),
        float(raw["amount"]),
        cause,
        also=tuple(denial(d) for d in as_list(raw.get("also"))),
        ends=tuple(float(e) for e in as_list(raw.get("ends"))),
    )


def progress(raw: Any) -> Progress:
    if not raw:  # the scripts leave out a progress with nothing in it: most answers
        return Progress()
    raw = as_dict(raw)
    return Progress(
        grants=[lease(g) for g in as_list(raw.get("grants"))],
        rejections=[(str(r[0]), denial(r[1])) for r in as_list(raw.get("rejections"))],
        blocked={pool: denial(d) for pool, d in as_dict(raw.get("blocked")).items()},
        passed_over=[denial(d) for d in as_list(raw.get("passed_over"))],
        finished=[dedup_end(e) for e in as_list(raw.get("finished"))],
    )


def dedup_end(raw: dict[str, Any]) -> DedupEnd:
    result = raw.get("result")
    return DedupEnd(str(raw["leader"]), base64.b64decode(result) if result else None)
