"""Callers of the simulated provider (load mode ``provider``), in a load process.

Through admitd (``targets`` set): Acquire (waiting in the queue), call the provider,
Release with the usage the provider reported (honest clients). Naive (no targets): call
the provider and, on 429, retry with exponential backoff and full jitter.

The process prints ``ready``, then waits for the harness to empty the buckets and send the
run's zero time (wall clock) on stdin; it stops starting calls ``duration`` after it. One
record per successful call, see :mod:`bench.metrics` for the fields.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import sys
import time
from typing import Any

import grpc

from admitd_client._proto import admission_pb2 as pb
from admitd_client._proto import admission_pb2_grpc as pb_grpc
from bench.load import acquire_request, release_request, stubs
from bench.provider import Client

PRIORITIES = {"CRITICAL": 1, "HIGH": 2, "NORMAL": 3, "LOW": 4}
RETRY_LIMIT = 6  # naive clients give a call up after this many 429s
BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.0


def draw(tenant: dict[str, Any], rng: random.Random) -> tuple[int, int, int]:
    """(input tokens, max output tokens, actual output tokens) of one call."""
    lo, hi = tenant.get("input", [100, 1000])
    input_tokens = rng.randint(lo, hi)
    lo, hi = tenant.get("max_output", [50, 500])
    max_output = rng.randint(lo, hi)
    lo_f, hi_f = tenant.get("output_frac", [0.3, 1.0])
    output = max(1, round(max_output * rng.uniform(lo_f, hi_f)))
    return input_tokens, max_output, output


def callers(tenant: dict[str, Any]) -> list[dict[str, Any]]:
    """A tenant's caller groups: ``workers`` backlogged NORMAL callers, plus its ``extra``
    groups ``{"priority", "workers", "think_s"}`` (think time: a pause after each call)."""
    groups = [{"priority": "NORMAL", "workers": int(tenant["workers"]), "think_s": 0.0}]
    return groups + list(tenant.get("extra", []))


class Run:
    """Shared state of one provider run: the records, the counts, and the clock."""

    def __init__(self, spec: dict[str, Any], epoch: float) -> None:
        self.spec = spec
        self.epoch = epoch
        self.end = epoch + float(spec["duration"])
        self.pool = spec.get("pool", "default")
        self.wait = float(spec.get("wait_timeout", 30.0))
        self.records: list[list[Any]] = []
        self.counts = {"provider_429": 0, "rejected": 0, "errors": 0, "gave_up": 0}

    async def think(self, group: dict[str, Any]) -> None:
        """The caller group's pause between calls (never past the run's end)."""
        await asyncio.sleep(max(0.0, min(float(group.get("think_s", 0.0)), self.end - time.time())))

    def now(self) -> float:
        return time.time() - self.epoch

    def record(
        self,
        tenant: str,
        priority: int,
        granted: float,
        queued: float,
        acquire: float,
        call: tuple[int, int, int],
    ) -> None:
        self.records.append([tenant, priority, granted, self.now(), queued, acquire, *call])

    async def through_admitd(
        self,
        stub: pb_grpc.AdmissionAsyncStub,
        client: Client,
        tenant: dict[str, Any],
        group: dict[str, Any],
        rng: random.Random,
    ) -> None:
        name, priority = tenant["name"], PRIORITIES[group["priority"]]
        while (left := self.end - time.time()) > 0:
            input_tokens, max_output, output = draw(tenant, rng)
            wait = min(self.wait, left)
            request = acquire_request(name, self.pool, input_tokens, max_output, wait, priority)
            t0 = self.now()
            try:
                lease = await stub.Acquire(request, timeout=wait + 5)
            except grpc.aio.AioRpcError as error:
                key = "rejected" if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else "errors"
                self.counts[key] += 1
                await asyncio.sleep(0.05)
                continue
            granted = self.now()
            status, body = await client.complete(name, input_tokens, max_output, output)
            if status == 200:
                release = release_request(lease.lease_id, input_tokens, output)
            else:  # the provider refused: nothing was used; pass on its hint, as callers should
                self.counts["provider_429"] += 1
                release = release_request(lease.lease_id, 0, 0)
                release.outcome = pb.OUTCOME_PROVIDER_RATE_LIMITED
                release.provider_retry_after.FromNanoseconds(int(body["retry_after"] * 1e9))
            try:
                await stub.Release(release, timeout=10)
            except grpc.aio.AioRpcError:
                self.counts["errors"] += 1
            if status == 200:
                queued = lease.queued_for.ToNanoseconds() / 1e9
                call = (input_tokens, max_output, output)
                self.record(name, priority, granted, queued, granted - t0, call)
            await self.think(group)

    async def naive(
        self, client: Client, tenant: dict[str, Any], group: dict[str, Any], rng: random.Random
    ) -> None:
        name, priority = tenant["name"], PRIORITIES[group["priority"]]
        while time.time() < self.end:
            input_tokens, max_output, output = draw(tenant, rng)
            t0 = self.now()
            for attempt in range(RETRY_LIMIT + 1):
                started = self.now()
                status, _ = await client.complete(name, input_tokens, max_output, output)
                if status == 200:
                    call = (input_tokens, max_output, output)
                    self.record(name, priority, started, started - t0, started - t0, call)
                    break
                self.counts["provider_429"] += 1
                if attempt == RETRY_LIMIT:
                    self.counts["gave_up"] += 1
                    break
                delay = rng.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))
                if time.time() + delay >= self.end:
                    return
                await asyncio.sleep(delay)
            await self.think(group)


async def provider_load(spec: dict[str, Any]) -> dict[str, Any]:
    stub_list = stubs(spec.get("targets") or [])
    port = int(spec["provider_port"])
    print("ready", flush=True)
    line = await asyncio.wait_for(asyncio.to_thread(sys.stdin.readline), 300)
    run = Run(spec, float(line))

    async def worker(n: int, tenant: dict[str, Any], group: dict[str, Any]) -> None:
        rng = random.Random(f"{spec.get('seed', 1)}-{tenant['name']}-{n}")
        client = Client(port)
        try:
            if stub_list:
                stub = stub_list[n % len(stub_list)]
                await run.through_admitd(stub, client, tenant, group, rng)
            else:
                await run.naive(client, tenant, group, rng)
        finally:
            await client.close()

    numbers = itertools.count()
    await asyncio.gather(
        *(
            worker(next(numbers), tenant, group)
            for tenant in spec["tenants"]
            for group in callers(tenant)
            for _ in range(int(group["workers"]))
        )
    )
    return {"records": run.records, "counts": run.counts}
