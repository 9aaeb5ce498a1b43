"""One run against the simulated provider: admitd replicas (or none: naive clients) in
front of it, one load process, and both token buckets emptied at the start so that a short
run measures the refill rate, not the one-minute initial burst."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import grpc

from admitd_client._proto import admission_pb2 as pb
from admitd_client._proto import admission_pb2_grpc as pb_grpc
from bench import procs
from bench.provider import control
from bench.scenarios._common import Ctx, backend, replicas, stop_all

DRAIN_TENANT = "drain"


def drain_admitd(target: str, pool: str, tpm: int) -> None:
    """Empty the pool's token bucket: reserve one full minute of tokens, charge it all."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.AdmissionStub(channel)
        request = pb.AcquireRequest(tenant=DRAIN_TENANT, pool=pool, input_tokens=tpm)
        lease = stub.Acquire(request, timeout=10)
        release = pb.ReleaseRequest(lease_id=lease.lease_id)
        release.usage.input_tokens = tpm
        stub.Release(release, timeout=10)


def load_run(
    ctx: Ctx,
    provider: procs.Proc,
    spec: dict[str, Any],
    name: str,
    provider_conf: dict[str, Any],
    drain: Callable[[], None] | None = None,
    margin: float = 90.0,
) -> tuple[dict[str, Any], dict[str, Any], float | None]:
    """Run one load process from an empty provider bucket: its results, the provider's
    ``/stats`` after it, and when ``drain`` (emptying admitd's bucket, if given) began.

    The run's zero (``epoch``, wall clock) is taken just before the provider's bucket is
    emptied, and admitd's after it, so admitd's bucket is never fuller than the provider's.
    """
    load = procs.start_load(spec, ctx.workdir, name)
    drained_at = None
    try:
        procs.wait_ready(load)
        epoch = time.time()
        asyncio.run(control(provider.port, "/reset", {**provider_conf, "drain": True}))
        if drain is not None:
            drained_at = time.time() - epoch  # before the drain: in admitd's favour
            drain()
        procs.go(load, epoch)
        result = procs.finish_load(load, float(spec["duration"]) + margin)
        stats = asyncio.run(control(provider.port, "/stats"))
    finally:
        if load.poll() is None:
            load.kill()
            load.wait(10)
    return result, stats, drained_at


def provider_run(
    ctx: Ctx,
    provider: procs.Proc,
    *,
    name: str,
    provider_conf: dict[str, Any],
    tenants: list[dict[str, Any]],
    duration: float,
    replica_count: int = 0,
    kind: str = "redis",
    pool_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``replica_count`` admitd processes (0: naive clients) in front of the provider.

    Times in the result are seconds from the run's zero (see ``load_run``; admitd's bucket
    is emptied ``drained_at`` after it). admitd's pool has the provider's limits unless
    ``pool_config`` says otherwise.
    """
    tpm = int(provider_conf["tpm"])
    pool = {
        "name": "default",
        "max_concurrency": int(provider_conf["concurrency"]),
        "tokens_per_minute": tpm,
        **(pool_config or {}),
    }
    config = {
        "backend": backend(ctx, kind),
        "pools": [pool],
        "tenants": [{"name": t["name"], "weight": t.get("weight", 1)} for t in tenants]
        + [{"name": DRAIN_TENANT}],
        "queue": {"max_length": 100_000, "max_per_tenant": 10_000, "max_wait": 120, "aging": 10},
    }
    servers = replicas(ctx, config, replica_count, name) if replica_count else []
    spec = {
        "mode": "provider",
        "targets": [s.target for s in servers],
        "provider_port": provider.port,
        "duration": duration,
        "tenants": tenants,
        "wait_timeout": 60.0,
    }
    drain = functools.partial(drain_admitd, servers[0].target, "default", tpm) if servers else None
    try:
        result, stats, drained_at = load_run(ctx, provider, spec, name, provider_conf, drain)
    finally:
        stop_all(servers)
    return {
        "records": result["records"],
        "counts": result["counts"],
        "provider": stats,
        "duration_s": duration,
        "drained_at": drained_at,
        "rate": tpm / 60.0,
    }
