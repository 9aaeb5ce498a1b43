"""Load generators, each run as its own process: ``python -m bench.load SPEC.json``.

Prints one JSON document (the measurements) on stdout. Every loop is bounded by the spec's
``duration`` (and counts), so a load process always ends by itself. The stubs are the Python
client's copy (``admitd_client._proto``), so a load process never imports the server.

Modes:
- ``pairs``: workers loop Acquire (fail fast) + Release against ``targets``; latencies, and
  the CPU time that this process and the processes in ``cpu_pids`` spent in the window.
- ``provider``: callers of the simulated provider (see :mod:`bench.callers`).
- ``hold``: park ``count`` Acquires in admitd's queue until ``duration`` ends.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any

import grpc

from admitd_client._proto import admission_pb2 as pb
from admitd_client._proto import admission_pb2_grpc as pb_grpc
from bench import metrics, procs


def stubs(targets: list[str], channels: int = 1) -> list[pb_grpc.AdmissionAsyncStub]:
    out: list[pb_grpc.AdmissionAsyncStub] = []
    for target in targets:
        for i in range(channels):
            # A distinct option per channel keeps grpc from sharing one subchannel.
            options = [("grpc.channel_id", i), ("grpc.use_local_subchannel_pool", 1)]
            out.append(pb_grpc.AdmissionStub(grpc.aio.insecure_channel(target, options)))
    return out


def acquire_request(
    tenant: str, pool: str, input_tokens: int, max_output: int, wait: float, priority: int = 0
) -> pb.AcquireRequest:
    request = pb.AcquireRequest(
        tenant=tenant,
        pool=pool,
        input_tokens=input_tokens,
        max_output_tokens=max_output,
        priority=priority,  # type: ignore[arg-type]
    )
    if wait:
        request.wait_timeout.FromNanoseconds(round(wait * 1e9))
    return request


def release_request(lease_id: str, input_tokens: int, output_tokens: int) -> pb.ReleaseRequest:
    request = pb.ReleaseRequest(lease_id=lease_id)
    request.usage.input_tokens, request.usage.output_tokens = input_tokens, output_tokens
    return request


# -- pairs ---------------------------------------------------------------------------------


class _Window:
    """The measured window: opened after the warm-up, closed at the end, each edge with a
    CPU sample of this process and of ``pids`` (the servers), so that CPU per pair and
    throughput count exactly the pairs that completed inside it."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.opened = self.closed = 0.0
        self._cpu0: dict[str, float | None] = {}
        self.cpu: dict[str, float | None] = {}

    def _sample(self) -> dict[str, float | None]:
        sample: dict[str, float | None] = {"load": time.process_time()}
        sample.update({name: procs.cpu_seconds(pid) for name, pid in self.pids.items()})
        return sample

    async def run(self, warmup: float, duration: float) -> None:
        await asyncio.sleep(warmup)
        self._cpu0, self.opened = self._sample(), time.perf_counter()
        await asyncio.sleep(duration)
        self.closed = time.perf_counter()
        for name, value in self._sample().items():
            before = self._cpu0.get(name)
            self.cpu[name] = None if value is None or before is None else value - before

    def inside(self, t: float) -> bool:
        return self.opened > 0 and self.opened <= t and (not self.closed or t < self.closed)


async def pairs(spec: dict[str, Any]) -> dict[str, Any]:
    stub_list = stubs(spec["targets"])
    tenants: list[str] = spec.get("tenants") or ["default"]
    pool = spec.get("pool", "default")
    reject_pool = spec.get("reject_pool")  # also time a fail-fast Acquire turned away here
    duration, warmup = float(spec["duration"]), float(spec.get("warmup", 0.5))
    rng = random.Random(f"pairs-{spec.get('seed', 1)}")
    window = _Window({k: int(v) for k, v in spec.get("cpu_pids", {}).items()})
    pair_lat: list[float] = []
    acq_lat: list[float] = []
    rej_lat: list[float] = []
    errors: dict[str, int] = {}
    clock = asyncio.ensure_future(window.run(warmup, duration))

    def error(e: grpc.aio.AioRpcError) -> None:
        if window.inside(time.perf_counter()):
            errors[e.code().name] = errors.get(e.code().name, 0) + 1

    async def worker(n: int) -> None:
        stub = stub_list[n % len(stub_list)]
        while not clock.done():
            tenant = tenants[rng.randrange(len(tenants))]
            t0 = time.perf_counter()
            try:
                lease = await stub.Acquire(acquire_request(tenant, pool, 10, 10, 0), timeout=10)
                t1 = time.perf_counter()
                await stub.Release(release_request(lease.lease_id, 10, 5), timeout=10)
            except grpc.aio.AioRpcError as e:
                error(e)
                await asyncio.sleep(0.01)
                continue
            t2 = time.perf_counter()
            if window.inside(t2):
                pair_lat.append(t2 - t0)
                acq_lat.append(t1 - t0)
            if reject_pool:
                t3 = time.perf_counter()
                try:
                    await stub.Acquire(acquire_request(tenant, reject_pool, 10, 10, 0), timeout=10)
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        error(e)
                t4 = time.perf_counter()
                if window.inside(t4):
                    rej_lat.append(t4 - t3)

    await asyncio.gather(clock, *(worker(n) for n in range(int(spec["concurrency"]))))
    elapsed = window.closed - window.opened
    done = len(pair_lat)
    return {
        "pairs": done,
        "elapsed": elapsed,
        "pairs_per_s": done / elapsed,
        "rpc_per_s": 2 * done / elapsed,
        "pair_p50_ms": _ms(metrics.percentile(pair_lat, 50)),
        "pair_p99_ms": _ms(metrics.percentile(pair_lat, 99)),
        "acquire_p50_ms": _ms(metrics.percentile(acq_lat, 50)),
        "acquire_p99_ms": _ms(metrics.percentile(acq_lat, 99)),
        "reject_p50_ms": _ms(metrics.percentile(rej_lat, 50)),
        "reject_p99_ms": _ms(metrics.percentile(rej_lat, 99)),
        # CPU seconds per completed pair, per process (load = this load generator).
        "cpu_us_per_pair": {
            name: None if cpu is None or not done else cpu / done * 1e6
            for name, cpu in window.cpu.items()
        },
        "errors": errors,
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000.0


# -- hold ----------------------------------------------------------------------------------


async def hold(spec: dict[str, Any]) -> dict[str, Any]:
    """Park ``count`` waiting Acquires and keep them until ``duration`` ends (or, with
    ``tickets``, Enqueue that many deferred tickets, which wait in the same queue with no
    RPC held, and return). They are sent in batches at ``rate`` per second: a burst of
    thousands at once would measure how admitd copes with the burst, not with the queue."""
    stub_list = stubs(spec["targets"], channels=int(spec.get("channels", 8)))
    count, pool = int(spec["count"]), spec["pool"]
    tenants: list[str] = spec.get("tenants") or ["default"]
    end = time.monotonic() + float(spec["duration"])
    outcome: dict[str, int] = {}

    tickets = bool(spec.get("tickets"))  # Enqueue (no RPC held) instead of Acquire

    async def one(i: int) -> None:
        left = end - time.monotonic()
        request = acquire_request(tenants[i % len(tenants)], pool, 10, 10, left)
        stub = stub_list[i % len(stub_list)]
        try:
            if tickets:
                ticket = await stub.Enqueue(pb.EnqueueRequest(acquire=request), timeout=30)
                name = pb.TicketState.Name(ticket.state)
            else:
                await stub.Acquire(request, timeout=left + 2)
                name = "granted"
        except grpc.aio.AioRpcError as error:
            name = error.code().name
        outcome[name] = outcome.get(name, 0) + 1

    tasks = []
    batch = int(spec.get("batch", 100))
    pause = batch / float(spec.get("rate", 1000))
    for start in range(0, count, batch):
        if time.monotonic() >= end:
            break
        tasks += [asyncio.ensure_future(one(i)) for i in range(start, min(count, start + batch))]
        await asyncio.sleep(pause)
    await asyncio.gather(*tasks)
    return {"started": len(tasks), "outcome": outcome}


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    if spec["mode"] == "provider":
        from bench.callers import provider_load

        result = asyncio.run(provider_load(spec))
    else:
        result = asyncio.run({"pairs": pairs, "hold": hold}[spec["mode"]](spec))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
