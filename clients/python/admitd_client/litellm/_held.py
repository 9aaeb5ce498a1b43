"""What the callback keeps between LiteLLM's hooks: the leases held, by LiteLLM call, and
the pools admitd has said are paused or open, so the router is steered around them.

One LiteLLM call (``litellm_call_id``) makes its attempts one after another (retries,
fallbacks), so it holds at most one lease at a time. Whoever ``take``s a lease releases it:
taking is the only way out of the registry, which is how each lease is released exactly
once whichever hook sees the call end first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._lease import Lease


@dataclass
class Held:
    """A lease held for one LiteLLM call, renewed in the background until released.

    Attributes:
        lease: The lease.
        hold: The client's ``hold(lease)`` block, entered: leaving it releases the lease.
        stream: The call streams its answer; the lease then lasts until the stream ends.
        model: The model as the provider names it (its tokenizer counts a stream's text).
        streamed: Output text seen in the stream, for a provider that reports no usage.
        owner: The task that acquired, and the callback watching it for cancellation.
    """

    lease: Lease
    hold: contextlib.AbstractAsyncContextManager[Lease]
    stream: bool = False
    model: str = ""
    streamed: list[str] = field(default_factory=list)
    owner: tuple[asyncio.Task[Any], Callable[[asyncio.Task[Any]], None]] | None = None


class Leases:
    """The leases held, by LiteLLM call id."""

    def __init__(self) -> None:
        self._held: dict[str, Held] = {}

    def put(self, call_id: str, held: Held) -> Held | None:
        """Hold ``held`` for the call; returns the lease it held before, if any (an attempt
        whose end no hook reported), which the caller must release."""
        before = self._held.pop(call_id, None)
        self._held[call_id] = held
        return before

    def take(self, call_id: object) -> Held | None:
        """The call's lease, now the caller's to release; None when there is none."""
        return self._held.pop(call_id, None) if isinstance(call_id, str) else None

    def peek(self, call_id: object) -> Held | None:
        return self._held.get(call_id) if isinstance(call_id, str) else None

    def __len__(self) -> int:
        return len(self._held)


class UnavailablePools:
    """Pools admitd refused as paused or open, until when (this process's own view)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._until: dict[str, float] = {}
        self._clock = clock

    def mark(self, pool: str, seconds: float | None) -> None:
        if seconds is not None and seconds > 0:
            until = self._clock() + seconds
            self._until[pool] = max(until, self._until.get(pool, 0.0))

    def blocked(self, pool: str) -> bool:
        until = self._until.get(pool)
        if until is None:
            return False
        if until <= self._clock():
            del self._until[pool]
            return False
        return True
