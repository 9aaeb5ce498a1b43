"""One pool's queue, filled and drained one slot at a time to see the order it serves."""

from __future__ import annotations

import asyncio
from typing import Any

from admitd.v1 import admission_pb2 as pb
from support.harness import Harness


async def queue_up(
    h: Harness, requests: list[dict[str, Any]], start: int = 0
) -> list[asyncio.Task[pb.Lease]]:
    """Start waiting Acquires one by one, each in the queue before the next is sent
    (``start``: waiters already queued)."""
    tasks = []
    for i, fields in enumerate(requests, start=start + 1):
        tasks.append(h.acquire_later(**{"wait_timeout": 60, "input_tokens": 100, **fields}))
        await h.until_queued("p", i)
    return tasks


async def grant_order(
    h: Harness,
    holder: pb.Lease,
    tasks: list[asyncio.Task[pb.Lease]],
    labels: list[str],
    usage: tuple[int, int] | None = None,
) -> list[str]:
    """Free the single slot again and again; return the label of each waiter served. Every
    lease is released with ``usage`` (None: with none, so charged in full)."""
    order = []
    pending = set(tasks)
    lease = holder
    while pending:
        await h.release(lease.lease_id, usage)
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1, "one slot freed must admit exactly one waiter"
        task = done.pop()
        lease = task.result()
        order.append(labels[tasks.index(task)])
    return order


# Fair on usage (VTC): tenant a has weight 2, so a lease of 600 tokens costs it 300 of virtual
# time; b and c weigh 1.
CREDITED = {
    "pools": [{"name": "p", "max_concurrency": 1}],
    "tenants": [{"name": "a", "weight": 2}, {"name": "b"}, {"name": "c"}],
}


async def refund_moves_its_tenant_ahead(holding: Harness, queueing: Harness) -> None:
    """A refund credited back in the fair queue, exactly: the lease is held and released
    through ``holding``, the waiters queued through ``queueing`` (one server, or two
    replicas sharing Redis). Charged in full, a's waiters would finish at 500 and 700 and
    the order would be b1 b2 b3 b4 a1 c1 a2."""
    holder = await holding.acquire(tenant="a", input_tokens=100, max_output_tokens=500)
    # Virtual time is now 300 (the holder's finish). Finish tags, queued b, then a, then c:
    # b 350 400 450 500 (50 tokens each), a 500 700 (400 tokens at weight 2), c 550.
    requests = [{"tenant": "b", "input_tokens": 50}] * 4
    requests += [{"tenant": "a", "input_tokens": 400}] * 2 + [{"tenant": "c", "input_tokens": 250}]
    labels = ["b1", "b2", "b3", "b4", "a1", "a2", "c1"]
    tasks = await queue_up(queueing, requests)
    # Released having used 300 of its 600 tokens: a is credited 300 / 2 = 150, so its waiters
    # finish at 350 and 550. Equal tags go to the waiter queued first: a1 right after b1,
    # a2 right before c1. A credit any larger would put a1 before b1, any smaller c1 before a2.
    await holding.release(holder.lease_id, (100, 200))
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1
    first = done.pop()
    rest = [task for task in tasks if task is not first]
    order = [labels[tasks.index(first)]]
    order += await grant_order(
        holding, first.result(), rest, [labels[tasks.index(t)] for t in rest]
    )
    assert order == ["b1", "a1", "b2", "b3", "b4", "a2", "c1"]
