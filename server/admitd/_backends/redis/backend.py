"""The Redis backend: many admitd replicas share one set of limits, one fair queue and one
lease table. Each operation is one Lua script (``lua/<operation>.lua``, with the shared state
machine ``lua/_lib*.lua`` and the prologue written from Python in front: ``scripts.py``),
registered once with redis-py ``register_script`` and called by its digest (EVALSHA), loaded
again after ``SCRIPT FLUSH``; Acquire and Release, which every admission makes, are functions
of a library loaded once instead (``FCALL``; ``scripts.FUNCTIONS``), loaded again when Redis
lost it. Every call goes out through ``client.Line``; everything sent to or read from a
script goes through ``codec.py``.
Its twin is the memory backend, ``_backends/memory/backend.py``.

Time is Redis ``TIME``, so replicas agree (tests pass their injected clock instead). A grant
made for a waiter held by another replica is published on ``<prefix>:grants``; the replica
holding the RPC claims it, and polls for unclaimed grants of its waiters in case a message is
lost (``listener.py``). Redis being unreachable surfaces as
:class:`~admitd._backends.errors.StoreUnreachable`, which the engine's ``Store`` counts and
answers UNAVAILABLE (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import NoScriptError, ResponseError

from ..._clock import Clock
from ..._model import (
    AcquireResult,
    Beat,
    DedupEnd,
    ExpireResult,
    Gate,
    LeaseRecord,
    Limit,
    Look,
    Outcome,
    Progress,
    ReleaseResult,
    Snapshot,
    Ticket,
    UsageRow,
)
from ..._usage import Unreported, Usage
from ..errors import StoreUnreachable
from . import codec, views
from .client import UNREACHABLE, Line
from .client import connect as connect  # the package's, with the backend
from .failover import PrimaryWatch
from .lanes import Lanes
from .libraries import Pruner
from .listener import Listener
from .scripts import function_library, load_scripts

# Connections a backend made without ``lanes`` (tests) may use at once, and an admission's
# longest wait for one: BackendConfig's defaults.
POOL_SIZE, POOL_TIMEOUT = 64, 1.0


class RedisBackend:
    """State in Redis under ``{key_prefix}:*`` (one hash tag: one Cluster slot).

    Args:
        client: a redis-py asyncio client (plain URL or Sentinel master).
        key_prefix: namespace; replicas sharing it form one admission controller.
        aging: the queue's anti-starvation step (policy input).
        clock: tests pass their clock; production reads Redis ``TIME``.
        poll_interval: how often waiters look for grants whose message was lost.
        lanes: who may use a connection when (``backend.pool_size``, ``pool_timeout``);
            the client's pool must hold three more (the Line's, grant messages, a spare).
        learning: after the primary changes, grant nothing beyond what the new one can
            prove free for ``window`` seconds (one lease TTL; ``failover.py``).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        key_prefix: str,
        aging: float,
        clock: Clock | None = None,
        poll_interval: float = 0.5,
        lanes: Lanes | None = None,
        learning: bool = True,
        window: float = 120.0,
    ) -> None:
        self._client = client
        self.lanes = lanes or Lanes(POOL_SIZE, POOL_TIMEOUT)
        """Who may use a connection when (every store call takes one)."""
        self._background: set[asyncio.Future[Any]] = set()
        self._base = "{" + key_prefix + "}"
        self._aging_text = repr(aging)
        self._clock = clock
        self._poll_interval = poll_interval
        sources = load_scripts()
        self._scripts = {op: client.register_script(src) for op, src in sources.items()}
        self._library, library_name, self._functions = function_library()
        self._pruner = Pruner(client, library_name, self.lanes)
        """Deletes other admitd versions' function libraries nobody calls any more."""
        self._line = Line(client.connection_pool)
        self.watch = PrimaryWatch(
            self._base, sources["failover"], self._common, learning=learning, window=window
        )
        """Which primary this process talks to (checked on every new connection)."""
        client.connection_pool.connection_kwargs["redis_connect_func"] = self.watch.on_connect
        self._listener: asyncio.Task[None] | None = None
        self._closing = False
        self.replica = uuid.uuid4().hex
        """This process among the replicas: its waiters and heartbeats carry it."""
        self.first: Callable[[], Awaitable[None] | None] = lambda: None
        """What a script call awaits once it has its connection, just before it is sent
        (the engine's ``Store`` sets it: ``Heartbeat.due``)."""

    # -- operations -----------------------------------------------------------------------

    async def acquire(self, ticket: Ticket, *, wait: bool) -> AcquireResult:
        self.watch.saw_ttl(ticket.ttl)
        # A deferred ticket has no RPC waiting, so no replica whose death ends it.
        replica = "" if ticket.deferred else self.replica
        args = (codec.ticket_json(ticket), "1" if wait else "0", replica)
        doc = await self._shielded("acquire", *args, undo=lambda doc: self._undo(doc, ticket))
        return codec.acquire_result(doc, ticket)

    def _undo(self, doc: dict[str, Any], ticket: Ticket) -> None:
        """An Acquire whose caller left while its script ran: what it granted or queued
        for nobody goes back."""
        result = codec.acquire_result(doc, ticket)
        if result.replayed:
            return  # an earlier attempt's: its own caller may still want it
        if result.lease is not None and not ticket.idempotency_key:  # else a retry takes it
            lease_id = result.lease.lease_id
            nothing = Unreported.NOTHING
            self._keep(self.release(lease_id, nothing, None, Outcome.CANCELLED, 0.0, None))
        elif result.queued:
            self._keep(self.cancel(ticket.lease_id))

    async def cancel(self, lease_id: str) -> Progress:
        return codec.progress((await self._run("cancel", lease_id)).get("progress"))

    async def claim(self, lease_id: str) -> bool:
        return bool((await self._run("claim", lease_id))["claimed"])

    async def release(
        self,
        lease_id: str,
        usage: Usage | Unreported,
        tenant: str | None,
        outcome: Outcome = Outcome.OK,
        retry_after: float = 0.0,
        result: bytes | None = None,
    ) -> ReleaseResult:
        args = codec.release_args(lease_id, usage, tenant, outcome, retry_after, result)
        return codec.release_result(await self._shielded("release", *args), lease_id)

    async def charge(self, ticket: Ticket, usage: Usage) -> None:
        await self._run("charge", codec.ticket_json(ticket), codec.usage_json(usage))

    async def renew(self, lease_id: str, extend_by: float, tenant: str | None) -> LeaseRecord:
        doc = await self._shielded("renew", lease_id, repr(extend_by), tenant or "")
        codec.raise_lease_error(doc, lease_id)
        return codec.lease(doc["lease"])

    async def expire(self) -> ExpireResult:
        return codec.expire_result(await self._run("expire"))

    async def dispatch(self) -> Progress:
        return codec.progress((await self._run("dispatch")).get("progress"))

    async def beat(self, dead_after: float) -> Beat:
        # Outside the lanes (the Heartbeat sends one beat at a time), straight onto the
        # Line with the calls of its turn: a beat queued behind a busy replica's calls
        # would be late for the very reason the replica is alive and busy, and the calls
        # that wait for it (``first``) already hold their turns.
        beat = codec.beat(await self._script("beat", self.replica, repr(dead_after)))
        wall = time.time() if self._clock is None else self._clock.wall()
        look = self._pruner.due(wall, self._now())
        if look is not None:
            self._keep(look)
        return beat

    async def placed(self, lease_ids: Sequence[str]) -> set[str]:
        """Of these waiters of this replica, those still queued (``w:<id>``) or granted and
        not yet claimed (``granted:<id>``): a replica found dead (it missed its heartbeats)
        has lost the others (``Heartbeat.recount``). One transaction, so no waiter is seen
        between the two keys as a dispatch moves it from one to the other."""
        await self.lanes.take(admit=False)
        try:
            with _store_errors():
                async with self._client.pipeline(transaction=True) as pipe:
                    for i in lease_ids:
                        pipe.exists(f"{self._base}:{codec.WAITER}:{i}", self._granted(i))
                    found = await pipe.execute()
        finally:
            self.lanes.give()
        return {i for i, n in zip(lease_ids, found, strict=True) if n}

    def _granted(self, lease_id: str) -> str:
        return f"{self._base}:{codec.GRANTED}:{lease_id}"

    async def look(self, lease_id: str, *, claim: bool) -> Look:
        return views.look(await self._run("look", lease_id, "1" if claim else "0"))

    async def snapshot(self, limits: list[Limit]) -> Snapshot:
        return views.snapshot(await self._run("snapshot", codec.limits_json(limits)))

    async def dedup_end(self, leader: str) -> DedupEnd | None:
        doc = await self._run("dedup_end", leader)
        return codec.dedup_end(doc) if doc else None

    async def usage(self, days: list[int]) -> list[UsageRow]:
        return views.usage_rows(await self._run("usage", json.dumps(days)))

    async def configure(self, limits: list[Limit], gates: list[Gate]) -> None:
        await self._run("configure", codec.limits_json(limits), codec.gates_json(gates))

    def subscribe(
        self,
        waiting: Callable[[], Collection[str]],
        deliver: Callable[[LeaseRecord], None],
        finish: Callable[[DedupEnd], None],
        failed: Callable[[Exception], None],
    ) -> None:
        """Deliver grants made (by any replica) for the waiters this process holds, and the
        ends of the dedup leaders its followers wait for; ``failed`` hears the listener's
        store errors."""
        if self._listener is None:
            listener = Listener(
                self._client, self._base, self.lanes, self._poll_interval, lambda: self._closing
            )
            self._listener = asyncio.ensure_future(listener.run(waiting, deliver, finish, failed))

    async def ping(self) -> None:
        await self.lanes.take(admit=False)
        try:
            with _store_errors():
                await self._client.ping()
        finally:
            self.lanes.give()

    async def close(self) -> None:
        self._closing = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._background:  # settling calls whose callers left: let them finish
            await asyncio.gather(*self._background, return_exceptions=True)
        await self._line.close()
        await self._client.aclose()
        pool = self._client.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            # The master client does not own the Sentinel's clients (redis-py): close them too.
            await pool.sentinel_manager.aclose()

    # -- plumbing -------------------------------------------------------------------------

    def _now(self) -> str:
        return "" if self._clock is None else repr(self._clock.wall())

    def _common(self) -> list[str]:
        """Every script's ARGV[1..2]: the time to use ("" for Redis TIME), queue aging."""
        return [self._now(), self._aging_text]

    async def _run(self, op: str, *args: str) -> dict[str, Any]:
        await self._turn(admit=False)
        try:
            return await self._script(op, *args)
        finally:
            self.lanes.give()

    async def _turn(self, *, admit: bool) -> None:
        """A connection of one's own (``lanes``), then what must go first (``first``: a
        heartbeat, when the last one is overdue). In this order: a call waits for a
        connection as long as the event loop stalls, so a beat checked before that wait
        (when the call was made) could be long overdue when the call is sent, and the
        dispatch it runs would then find this replica dead and drop its own waiters."""
        await self.lanes.take(admit=admit)
        ahead = self.first()
        if ahead is not None:
            try:
                await ahead
            except BaseException:  # cancelled while the beat went: nothing was sent
                self.lanes.give()
                raise

    async def _script(
        self, op: str, *args: str, later: Callable[[asyncio.Future[Any]], None] | None = None
    ) -> dict[str, Any]:
        argv = [*self._common(), *args]
        # As _store_errors does: written out, as this runs on every store call, and a
        # generator context manager costs six Python calls each time.
        try:
            raw = await self._call(op, argv, later)
        except UNREACHABLE as error:
            raise StoreUnreachable(str(error)) from None
        doc: dict[str, Any] = json.loads(raw)
        return doc

    async def _call(
        self, op: str, argv: list[str], later: Callable[[asyncio.Future[Any]], None] | None
    ) -> Any:
        """Call ``op``: a function of the library (``scripts.FUNCTIONS``) or a script by its
        digest, loading the library or the script first when Redis does not have it (a
        restart that kept nothing, a flush, a new primary: nothing ran then), as redis-py's
        ``Script`` does after NOSCRIPT. Through the ``Line`` (``later``: see ``Line.call``)."""
        name = self._functions.get(op)
        script = self._scripts[op]
        command = ("FCALL", name) if name else ("EVALSHA", script.sha)
        try:
            return await self._line.call(*command, "1", self._base, *argv, later=later)
        except NoScriptError:
            await self._client.script_load(script.script)
        except ResponseError as error:
            if "Function not found" not in str(error):
                raise
            await self._client.function_load(self._library, replace=True)
        return await self._line.call(*command, "1", self._base, *argv, later=later)

    async def _shielded(
        self, op: str, *args: str, undo: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Run ``op``'s script to its end even if the RPC that asked is cancelled meanwhile
        (its caller gave up): a Release or Renew is never lost halfway, and ``undo`` hears
        what an Acquire did for nobody. A caller that leaves while it waits for its
        turn leaves at once: nothing ran. Only Acquire waits in the admission lane."""
        await self._turn(admit=op == "acquire")
        # In the caller's own task (no task or loop iteration more per call): a caller
        # cancelled after the call was sent leaves at once, and its reply, which the
        # ``Line`` reads anyway, is handed to a future (``later``) that ``_left`` follows.
        handed = False

        def later(rest: asyncio.Future[Any]) -> None:
            nonlocal handed
            handed = True
            self._background.add(rest)
            rest.add_done_callback(lambda done: self._left(done, undo))

        try:
            return await self._script(op, *args, later=later)
        finally:
            if not handed:  # else its turn lasts until the reply is read
                self.lanes.give()

    def _left(
        self, rest: asyncio.Future[Any], undo: Callable[[dict[str, Any]], None] | None
    ) -> None:
        """A call's reply read after its caller left: its turn given back, what it did
        for nobody to ``undo``."""
        self._background.discard(rest)
        self.lanes.give()
        if rest.cancelled() or rest.exception() is not None:
            return  # not run (a library to load), or Redis lost: nothing to undo
        if undo is not None:
            undo(json.loads(rest.result()))

    def _keep(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        """Run ``coro`` as a task held until it ends (``close`` waits for it)."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


@contextmanager
def _store_errors() -> Iterator[None]:
    """Redis unreachable or too slow: the engine's ``Store`` counts it and fails closed."""
    try:
        yield
    except UNREACHABLE as error:
        raise StoreUnreachable(str(error)) from None
