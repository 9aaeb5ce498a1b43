"""Clients that vanish without releasing: their waiters leave the queue at once, their
leases come back when they expire, with the full reservation charged."""

from __future__ import annotations

import asyncio

import grpc

from admitd.v1 import admission_pb2 as pb
from admitd.v1 import admission_pb2_grpc as pb_grpc
from support.faults import acquire_request
from support.harness import MakeHarness, seconds
from support.polling import until


async def test_vanished_clients_are_reclaimed_by_expiry(make_harness: MakeHarness) -> None:
    """Clients take every slot (one renews for longer), others wait, then all of them vanish:
    channels closed, nothing released. Waiters leave the queue at once; the leases stay until
    they expire, then every slot comes back and the full reservations stay charged."""
    h = await make_harness(
        {
            "pools": [{"name": "p", "max_concurrency": 3, "tokens_per_minute": 6000}],
            "tenants": [{"name": "a", "tokens_per_day": 100_000}, {"name": "b"}],
            "lease": {"ttl": 30, "reap_interval": 1},
        }
    )
    target = f"127.0.0.1:{h.server.port}"
    channels = [grpc.aio.insecure_channel(target) for _ in range(5)]
    stubs = [pb_grpc.AdmissionStub(c) for c in channels]
    leases = [await stubs[i].Acquire(acquire_request(tokens=100), timeout=10) for i in range(3)]
    renewed = pb.RenewRequest(lease_id=leases[0].lease_id, extend_by=seconds(60))
    await stubs[0].Renew(renewed, timeout=10)
    waiting = [
        asyncio.ensure_future(stubs[i].Acquire(acquire_request(wait=50), timeout=60))
        for i in (3, 4)
    ]
    await h.until_queued("p", 2)

    for channel in channels:  # vanish
        await channel.close()
    await asyncio.wait_for(asyncio.wait(waiting), 5)
    assert all(task.cancelled() for task in waiting)  # closing a channel cancels its RPCs

    async def queue_empty() -> bool:
        return (await h.pool("p")).queued == 0

    await until(queue_empty, 5, "the vanished waiters left the queue")
    pool = await h.pool("p")
    assert (pool.in_flight, pool.concurrency.value) == (3, 3)

    await h.advance(31)  # the two leases not renewed expire
    assert (await h.pool("p")).in_flight == 1
    await h.advance(30)  # and the renewed one
    status = await h.status()
    pool = status.pools[0]
    tenant = next(t for t in status.tenants if t.name == "a")
    assert (pool.in_flight, pool.queued, pool.concurrency.value) == (0, 0, 0)
    assert (tenant.in_flight, tenant.queued) == (0, 0)
    assert tenant.tokens_per_day.value == 300  # expired: the full reservations are charged
    assert pool.tokens_per_minute.value == 6000  # refilled meanwhile
    fresh = [await h.acquire(input_tokens=1) for _ in range(3)]  # every slot is back
    assert len({lease.lease_id for lease in fresh}) == 3
