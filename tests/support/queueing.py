"""One pool's queue, filled and drained one slot at a time to see the order it serves."""

from __future__ import annotations

import asyncio
from typing import Any

from admitd.v1 import admission_pb2 as pb
from support.harness import Harness


async def queue_up(h: Harness, requests: list[dict[str, Any]]) -> list[asyncio.Task[pb.Lease]]:
    """Start waiting Acquires one by one, each in the queue before the next is sent."""
    tasks = []
    for i, fields in enumerate(requests, start=1):
        tasks.append(h.acquire_later(**{"wait_timeout": 60, "input_tokens": 100, **fields}))
        await h.until_queued("p", i)
    return tasks


async def grant_order(
    h: Harness, holder: pb.Lease, tasks: list[asyncio.Task[pb.Lease]], labels: list[str]
) -> list[str]:
    """Free the single slot again and again; return the label of each waiter served."""
    order = []
    pending = set(tasks)
    lease = holder
    while pending:
        await h.release(lease.lease_id)
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1, "one slot freed must admit exactly one waiter"
        task = done.pop()
        lease = task.result()
        order.append(labels[tasks.index(task)])
    return order
