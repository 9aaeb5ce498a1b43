"""How the grants made (by any replica) for the RPCs waiting in this process reach them, and
the ends of the dedup leaders its followers wait for: the Redis backend's grant listener.

Pub/sub on ``<prefix>:grants`` delivers at once; a poll every ``interval`` backs it up, so a
lost message (a reconnect, the subscriber cut off) only delays a grant, by up to
``interval``. The poll costs nothing per waiter: it reads the ids of the grants nobody has
claimed yet, deployment-wide (``<prefix>:unclaimed``, written by ``lua/_lib5_queue.lua``:
few, as a grant is claimed within a round trip or two, a deferred ticket's within
``queue.ticket_claim_timeout``), keeps those waited for here (a dict lookup each) and reads
their grants. Looking up the waiters' own grant keys instead, a rotating sixth of them per
poll, with the list of every waiter built at each poll and each message, took 28% of a core
with 97,868 waiters parked and nothing happening. Dedup followers, whose leaders' ends have
no such index, are still looked up in a rotating share (:class:`_PollRotation`).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import Protocol, runtime_checkable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..._model import END_PREFIX, DedupEnd, LeaseRecord
from . import codec
from .lanes import Lanes

# Each dedup follower's leader's end is looked up at least this often by the poll (seconds).
POLL_CYCLE = 3.0


@runtime_checkable
class Ends(Protocol):
    """What ``waiting`` may also tell (the engine's does): the ``end:<leader>`` ids alone,
    so that the poll need not go through every waiter to find them."""

    def ends(self) -> Collection[str]: ...


class Listener:
    """Args:
    client: the backend's client (its pool holds a connection for the subscription).
    base: the key prefix with its hash tag, ``{<key_prefix>}``.
    lanes: every other read takes a connection here, as the backend's calls do.
    interval: how often the poll runs, messages or not.
    closing: true once the backend closes (see :meth:`run`)."""

    def __init__(
        self,
        client: aioredis.Redis,
        base: str,
        lanes: Lanes,
        interval: float,
        closing: Callable[[], bool],
    ) -> None:
        self._client = client
        self._base = base
        self._lanes = lanes
        self._interval = interval
        self._closing = closing

    async def run(
        self,
        waiting: Callable[[], Collection[str]],
        deliver: Callable[[LeaseRecord], None],
        finish: Callable[[DedupEnd], None],
        failed: Callable[[Exception], None],
    ) -> None:
        """Deliver until closed. ``waiting`` is asked at each message and poll: it must
        answer ``in`` without copying (the engine's is a view of its waiters).

        Stops on ``closing`` as well as on cancellation: redis-py turns a cancellation that
        lands while ``get_message`` waits out its timeout into a plain timeout (it returns
        None), so a cancelled listener could otherwise poll on forever."""
        channel = f"{self._base}:{codec.GRANTS}"
        rotation = _PollRotation(self._interval)
        loop = asyncio.get_running_loop()
        while not self._closing():
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(channel)
                    polled = -math.inf  # poll at once: what was published while unsubscribed
                    while not self._closing():
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=self._interval
                        )
                        ids = waiting()
                        wanted: list[str] = []
                        if message is not None:
                            data = codec.text(message["data"])
                            if data in ids:
                                wanted.append(data)
                        # On time even while messages keep coming: a lost one is found.
                        if loop.time() - polled >= self._interval:
                            polled = loop.time()
                            wanted += await self._unclaimed(ids)
                            wanted += rotation.next(_ends(ids))
                        if wanted:
                            await self._fetch(list(dict.fromkeys(wanted)), deliver, finish)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as error:
                failed(error)  # counted and logged by the engine's Store
                await asyncio.sleep(self._interval)

    async def _unclaimed(self, ids: Collection[str]) -> list[str]:
        """The unclaimed grants waited for here."""
        await self._lanes.take(admit=False)
        try:
            found = await self._client.zrange(f"{self._base}:{codec.UNCLAIMED}", 0, -1)
        finally:
            self._lanes.give()
        return [i for i in map(codec.text, found) if i in ids]

    async def _fetch(
        self,
        ids: Sequence[str],
        deliver: Callable[[LeaseRecord], None],
        finish: Callable[[DedupEnd], None],
    ) -> None:
        """The grants of waiter ids, and the ends of ``end:<leader>`` ids, that exist."""
        ends = len(END_PREFIX)
        keys = [
            f"{self._base}:{codec.DEDUP_END}:{i[ends:]}"
            if i.startswith(END_PREFIX)
            else f"{self._base}:{codec.GRANTED}:{i}"
            for i in ids
        ]
        await self._lanes.take(admit=False)
        try:
            values = await self._client.mget(keys)
        finally:
            self._lanes.give()
        for wanted, value in zip(ids, values, strict=True):
            if value is None:
                continue
            doc = json.loads(value)
            if wanted.startswith(END_PREFIX):
                finish(codec.dedup_end(doc))
            else:
                deliver(codec.lease(doc))


def _ends(ids: Collection[str]) -> Collection[str]:
    """The ``end:<leader>`` ids among ``ids``: told by the engine's; found in any other."""
    if isinstance(ids, Ends):
        return ids.ends()
    return [i for i in ids if i.startswith(END_PREFIX)]


class _PollRotation:
    """Which dedup ends a poll looks up: a rotating share of them, so that each one is looked
    up about once per POLL_CYCLE however many there are (looking up 80,000 at every poll, one
    MGET, took 70% of a core)."""

    def __init__(self, interval: float) -> None:
        self._share = min(1.0, interval / POLL_CYCLE)
        self._left: deque[str] = deque()

    def next(self, waiting: Collection[str]) -> list[str]:
        if not waiting:
            return []
        if not self._left:
            self._left.extend(waiting)  # ids that ended since are looked up for nothing
        count = min(len(self._left), max(1, math.ceil(len(waiting) * self._share)))
        return [self._left.popleft() for _ in range(count)]
