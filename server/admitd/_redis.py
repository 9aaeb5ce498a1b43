"""The Redis backend: many admitd replicas share one set of limits, one fair queue and one
lease table. Each operation is one Lua script (``lua/<operation>.lua``, with the shared state
machine ``lua/_lib*.lua`` in front), registered once with redis-py ``register_script``, which
uses EVALSHA and reloads a script after ``SCRIPT FLUSH``.

Time is Redis ``TIME``, so replicas agree (tests pass their injected clock instead). A grant
made for a waiter held by another replica is published on ``<prefix>:grants``; the replica
holding the RPC claims it, and polls for unclaimed grants of its waiters in case a message is
lost. Redis being unreachable surfaces as :class:`~admitd.Unavailable` (fail closed).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import math
from collections import deque
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._backend import (
    AcquireResult,
    DedupEnd,
    Denial,
    ExpireResult,
    FingerprintMismatch,
    Gate,
    GateView,
    Kind,
    LeaseGone,
    LeaseRecord,
    Limit,
    Look,
    NotOwner,
    Outcome,
    Progress,
    QueueFull,
    QueueSpot,
    ReleaseResult,
    Scope,
    Settlement,
    Snapshot,
    Ticket,
    TicketEnd,
    Unit,
    UsageRow,
)
from ._clock import Clock
from ._config import BackendConfig
from ._errors import Unavailable

log = logging.getLogger("admitd")

# Each waiter's grant is looked up at least this often by the poll that backs up pub/sub
# (seconds). Well under CLAIM_TIMEOUT: a grant whose message was lost must be found, even by
# a waiter that arrived just after a cycle began (up to two cycles), before it goes back.
POLL_CYCLE = 3.0

OPERATIONS = (
    "acquire",
    "cancel",
    "claim",
    "release",
    "renew",
    "expire",
    "dispatch",
    "snapshot",
    "configure",
    "look",
    "usage",
    "dedup_end",
)


def _load_scripts() -> dict[str, str]:
    """Each operation's script: the library's parts (``_lib<n>_*.lua``, in order) in front
    of the operation's own file, as one script."""
    folder = resources.files("admitd") / "lua"
    parts = sorted(f.name for f in folder.iterdir() if f.name.startswith("_lib"))
    lib = "\n".join((folder / name).read_text() for name in parts)
    return {op: lib + "\n" + (folder / f"{op}.lua").read_text() for op in OPERATIONS}


class RedisBackend:
    """State in Redis under ``{key_prefix}:*`` (one hash tag: one Cluster slot).

    Args:
        client: a redis-py asyncio client (plain URL or Sentinel master).
        key_prefix: namespace; replicas sharing it form one admission controller.
        aging: the queue's anti-starvation step (policy input).
        clock: tests pass their clock; production reads Redis ``TIME``.
        poll_interval: how often waiters look for grants whose message was lost.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        key_prefix: str,
        aging: float,
        clock: Clock | None = None,
        poll_interval: float = 0.5,
    ) -> None:
        self._client = client
        self._base = "{" + key_prefix + "}"
        self._aging = aging
        self._clock = clock
        self._poll_interval = poll_interval
        self._scripts = {op: client.register_script(src) for op, src in _load_scripts().items()}
        self._listener: asyncio.Task[None] | None = None
        self._closing = False

    # -- operations -----------------------------------------------------------------------

    async def acquire(self, ticket: Ticket, *, wait: bool) -> AcquireResult:
        doc = await self._run("acquire", _ticket_json(ticket), "1" if wait else "0")
        if doc.get("mismatch"):
            raise FingerprintMismatch(ticket.idempotency_key)
        result = AcquireResult(
            queued=bool(doc.get("queued")),
            replayed=bool(doc.get("replayed")),
            waiting_on=str(doc.get("waiting_on", "")),
            follows=str(doc.get("follows", "")),
            progress=_progress(doc.get("progress")),
        )
        if "lease" in doc:
            result.lease = _lease(doc["lease"])
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
            result.denial = _denial(doc["denial"])
        return result

    async def cancel(self, lease_id: str) -> Progress:
        return _progress((await self._run("cancel", lease_id)).get("progress"))

    async def claim(self, lease_id: str) -> None:
        with _store_errors():
            await self._scripts["claim"](
                keys=[self._base], args=[self._now(), self._aging, lease_id]
            )

    async def release(
        self,
        lease_id: str,
        usage: tuple[int, int] | None,
        tenant: str | None,
        outcome: Outcome = Outcome.OK,
        retry_after: float = 0.0,
        result: bytes | None = None,
    ) -> ReleaseResult:
        usage_json = "" if usage is None else json.dumps(list(usage))
        shared = base64.b64encode(result).decode() if result is not None else ""
        args = (lease_id, usage_json, tenant or "", str(int(outcome)), repr(retry_after), shared)
        doc = await self._run("release", *args)
        _raise_lease_error(doc)
        s = doc["settlement"]
        settlement = Settlement(
            lease=_lease(s["lease"]),
            charged_tokens=int(s["charged_tokens"]),
            refunded_tokens=int(s["refunded_tokens"]),
            charged_nano_usd=int(s["charged_nano_usd"]),
            already_released=bool(s["already_released"]),
        )
        return ReleaseResult(settlement, _progress(doc.get("progress")))

    async def renew(self, lease_id: str, extend_by: float, tenant: str | None) -> LeaseRecord:
        doc = await self._run("renew", lease_id, repr(extend_by), tenant or "")
        _raise_lease_error(doc)
        return _lease(doc["lease"])

    async def expire(self) -> ExpireResult:
        doc = await self._run("expire")
        expired = [_lease(item) for item in _list(doc.get("expired"))]
        next_in = doc.get("next_expiry_in")
        return ExpireResult(
            expired, _progress(doc.get("progress")), None if next_in is None else float(next_in)
        )

    async def dispatch(self) -> Progress:
        return _progress((await self._run("dispatch")).get("progress"))

    async def look(self, lease_id: str, *, claim: bool) -> Look:
        doc = await self._run("look", lease_id, "1" if claim else "0")
        if "queued" in doc:
            q = doc["queued"]
            rate = q.get("grants_per_second")
            return Look(
                queued=QueueSpot(
                    tenant=str(q["tenant"]),
                    pool=str(q["pool"]),
                    position=int(q["position"]),
                    depth=int(q["depth"]),
                    grants_per_second=None if rate is None else float(rate),
                    wait_left=float(q["wait_left"]),
                )
            )
        if "lease" in doc:
            return Look(lease=_lease(doc["lease"]), claimed=bool(doc["claimed"]))
        if "ended" in doc:
            e = doc["ended"]
            denial = _denial(e["denial"]) if isinstance(e.get("denial"), dict) else None
            return Look(ended=TicketEnd(e["kind"], str(e["tenant"]), denial))
        return Look()

    async def snapshot(self, limits: list[Limit]) -> Snapshot:
        doc = await self._run("snapshot", json.dumps([_limit_json(limit) for limit in limits]))
        return Snapshot(
            levels={k: float(v) for k, v in _dict(doc.get("levels")).items()},
            in_flight_by_pool={k: int(v) for k, v in _dict(doc.get("in_flight_by_pool")).items()},
            in_flight_by_tenant={
                k: int(v) for k, v in _dict(doc.get("in_flight_by_tenant")).items()
            },
            queued_by_pool={
                k: [int(n) for n in _list(v)] for k, v in _dict(doc.get("queued_by_pool")).items()
            },
            queued_by_tenant={k: int(v) for k, v in _dict(doc.get("queued_by_tenant")).items()},
            gates={
                pool: GateView(float(g["factor"]), g["circuit"], float(g["paused_for"]))
                for pool, g in _dict(doc.get("gates")).items()
            },
        )

    async def dedup_end(self, leader: str) -> DedupEnd | None:
        doc = await self._run("dedup_end", leader)
        return _dedup_end(doc) if doc else None

    async def usage(self, days: list[int]) -> list[UsageRow]:
        doc = await self._run("usage", json.dumps(days))
        rows = [
            UsageRow(
                int(r["day"]),
                str(r["tenant"]),
                str(r["pool"]),
                int(r["calls"]),
                int(r["in"]),
                int(r["out"]),
                int(r["usd"]),
            )
            for r in _list(doc.get("rows"))
        ]
        return sorted(rows, key=lambda r: (r.day, r.tenant, r.pool))

    async def configure(self, limits: list[Limit], gates: list[Gate]) -> None:
        await self._run(
            "configure",
            json.dumps([_limit_json(limit) for limit in limits]),
            json.dumps([dataclasses.asdict(gate) for gate in gates]),
        )

    def subscribe(
        self,
        waiting: Callable[[], Collection[str]],
        deliver: Callable[[LeaseRecord], None],
        finish: Callable[[DedupEnd], None],
    ) -> None:
        """Deliver grants made (by any replica) for the waiters this process holds, and the
        ends of the dedup leaders its followers wait for."""
        if self._listener is None:
            self._listener = asyncio.ensure_future(self._listen(waiting, deliver, finish))

    async def ping(self) -> None:
        with _store_errors():
            await self._client.ping()

    async def close(self) -> None:
        self._closing = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._client.aclose()

    # -- plumbing -------------------------------------------------------------------------

    def _now(self) -> str:
        return "" if self._clock is None else repr(self._clock.wall())

    async def _run(self, op: str, *args: str) -> dict[str, Any]:
        with _store_errors():
            raw = await self._scripts[op](
                keys=[self._base], args=[self._now(), repr(self._aging), *args]
            )
        doc: dict[str, Any] = json.loads(raw)
        return doc

    async def _listen(
        self,
        waiting: Callable[[], Collection[str]],
        deliver: Callable[[LeaseRecord], None],
        finish: Callable[[DedupEnd], None],
    ) -> None:
        """Pub/sub for prompt delivery, plus a poll of this process's waiters, so that a lost
        message (or a reconnect) only delays a grant, never loses it.

        Stops on ``_closing`` as well as on cancellation: redis-py turns a cancellation that
        lands while ``get_message`` waits out its timeout into a plain timeout (it returns
        None), so a cancelled listener could otherwise poll on forever."""
        channel = f"{self._base}:grants"
        rotation = _PollRotation(self._poll_interval)
        while not self._closing:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(channel)
                    while not self._closing:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=self._poll_interval
                        )
                        ids = waiting()
                        if message is not None:
                            data = _text(message["data"])
                            wanted = [data] if data in ids else []
                        else:
                            wanted = rotation.next(ids)
                        if wanted:
                            await self._fetch(wanted, deliver, finish)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as error:
                log.warning("grant listener: %s; retrying", error)
                await asyncio.sleep(self._poll_interval)

    async def _fetch(
        self,
        ids: list[str],
        deliver: Callable[[LeaseRecord], None],
        finish: Callable[[DedupEnd], None],
    ) -> None:
        """The grants of waiter ids, and the ends of ``end:<leader>`` ids, that exist."""
        keys = [
            f"{self._base}:dedupend:{i[4:]}" if i[:4] == "end:" else f"{self._base}:granted:{i}"
            for i in ids
        ]
        for wanted, value in zip(ids, await self._client.mget(keys), strict=True):
            if value is None:
                continue
            doc = json.loads(value)
            if wanted.startswith("end:"):
                finish(_dedup_end(doc))
            else:
                deliver(_lease(doc))


class _PollRotation:
    """Which waiters a poll looks up: a rotating share of them, so that each one is looked up
    about once per POLL_CYCLE however many there are. Looking up every waiter at every poll
    (one MGET) took 70% of a core with 80,000 waiters and nothing happening."""

    def __init__(self, interval: float) -> None:
        self._share = min(1.0, interval / POLL_CYCLE)
        self._left: deque[str] = deque()

    def next(self, waiting: Collection[str]) -> list[str]:
        if not self._left:
            self._left.extend(waiting)  # ids that ended since only schedule a reap
        count = min(len(self._left), max(1, math.ceil(len(waiting) * self._share)))
        return [self._left.popleft() for _ in range(count)]


def connect(config: BackendConfig) -> aioredis.Redis:
    """A client for the configured Redis (through Sentinel when sentinels are given), with
    short timeouts so that a dead or slow Redis fails calls fast instead of stalling them."""
    options: dict[str, Any] = {
        "socket_timeout": config.timeout,
        "socket_connect_timeout": config.timeout,
        # A connection idle over a second is pinged (and reconnected) before use, so the
        # pooled connections a restarted Redis broke do not each fail one real call.
        "health_check_interval": 1,
    }
    if config.password is not None:
        options["password"] = config.password  # a password in the URL takes precedence
    if config.sentinels:
        hosts = [(h.rpartition(":")[0], int(h.rpartition(":")[2])) for h in config.sentinels]
        sentinel = Sentinel(hosts, sentinel_kwargs=dict(options), **options)
        client: aioredis.Redis = sentinel.master_for(config.sentinel_service)
        return client
    return aioredis.Redis.from_url(config.url, **options)


@contextmanager
def _store_errors() -> Iterator[None]:
    """Redis unreachable or too slow: fail closed with a clear message."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as error:
        raise Unavailable(f"state store unreachable: {error}") from None


def _raise_lease_error(doc: dict[str, Any]) -> None:
    error = doc.get("error")
    if error == "gone":
        raise LeaseGone()
    if error == "not_owner":
        raise NotOwner()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _list(value: Any) -> list[Any]:
    # cjson encodes an empty Lua table as {}.
    return list(value) if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _limit_json(limit: Limit) -> list[Any]:
    return [
        limit.key,
        limit.kind.value,
        limit.unit.value,
        limit.scope.value,
        limit.capacity,
        limit.rate,
        limit.name,
        limit.owner,
        limit.shadow,
    ]


def _limit(raw: list[Any]) -> Limit:
    key, kind, unit, scope, capacity, rate, name, owner, shadow = raw
    return Limit(
        str(key),
        Kind(kind),
        Unit(unit),
        Scope(scope),
        str(name),
        str(owner),
        float(capacity),
        float(rate),
        bool(shadow),
    )


def _ticket_json(t: Ticket) -> str:
    return json.dumps(
        {
            "id": t.lease_id,
            "tenant": t.tenant,
            "pool": t.pool,
            "in": t.input_tokens,
            "out": t.max_output_tokens,
            "usd": t.nano_usd,
            "pin": t.price_in,
            "pout": t.price_out,
            "prio": t.priority,
            "cost": t.cost,
            "ttl": t.ttl,
            "wait": t.wait,
            "claim": t.claim_timeout,
            "def": t.deferred,
            "dd": t.dedup_key,
            "idem": t.idempotency_key,
            "fp": t.fingerprint,
            "mqt": t.max_queued_tenant,
            "mqa": t.max_queued_total,
            "limits": [_limit_json(limit) for limit in t.limits],
        }
    )


def _lease(raw: dict[str, Any]) -> LeaseRecord:
    return LeaseRecord(
        lease_id=str(raw["id"]),
        tenant=str(raw["tenant"]),
        pool=str(raw["pool"]),
        input_tokens=int(raw["in"]),
        max_output_tokens=int(raw["out"]),
        nano_usd=int(raw["usd"]),
        expires_in=float(raw["expires_in"]),
        queued_for=float(raw["queued_for"]),
        held_for=float(raw["held_for"]),
        shadowed=str(raw.get("shadowed") or ""),
    )


def _denial(raw: dict[str, Any]) -> Denial:
    limit, cause = _limit(raw["limit"]), str(raw.get("cause") or "")
    return Denial(limit, float(raw["level"]), float(raw["amount"]), cause)


def _progress(raw: Any) -> Progress:
    raw = _dict(raw)
    return Progress(
        grants=[_lease(g) for g in _list(raw.get("grants"))],
        rejections=[(str(r[0]), _denial(r[1])) for r in _list(raw.get("rejections"))],
        blocked={pool: _denial(d) for pool, d in _dict(raw.get("blocked")).items()},
        passed_over=[_denial(d) for d in _list(raw.get("passed_over"))],
        finished=[_dedup_end(e) for e in _list(raw.get("finished"))],
    )


def _dedup_end(raw: dict[str, Any]) -> DedupEnd:
    result = raw.get("result")
    return DedupEnd(str(raw["leader"]), base64.b64decode(result) if result else None)
