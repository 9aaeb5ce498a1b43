"""Scale: Acquire latency (concurrency 1) with few vs many tenants configured, and with few
vs many waiters parked in a queue. The small and the large server of each comparison run
side by side and are measured alternately, so the ratio between them is taken under the
same noise."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc

from admitd_client._proto import admission_pb2 as pb
from admitd_client._proto import admission_pb2_grpc as pb_grpc
from bench import generator, metrics, procs
from bench.scenarios._common import UNLIMITED_POOL, Ctx, backend, stop_all

KINDS = ("memory", "redis")
# Waiters parked per second: under what one replica serves on 2 shared cores (~650 calls/s).
# Faster, the calls pile up unaccepted in gRPC core, which sheds the excess as CANCELLED
# (its overload protection), and the queue never reaches its size.
HOLD_RATE = 500


def run(ctx: Ctx) -> dict[str, Any]:
    reps, duration = (1, 0.5) if ctx.smoke else (3, 2.0)
    tenant_counts = (10, 200) if ctx.smoke else (10, 10_000)
    waiter_counts = (10, ctx.waiters)
    rows = []
    for kind in ("memory",) if ctx.smoke else KINDS:
        rows += _tenants(ctx, kind, tenant_counts, reps, duration)
    for kind in ("redis",) if ctx.smoke else KINDS:
        rows += _waiters(ctx, kind, waiter_counts, reps, duration, tickets=False)
    for kind in ("memory",) if ctx.smoke else KINDS:
        rows += _waiters(ctx, kind, waiter_counts, reps, duration, tickets=True)
    return {
        "reps": reps,
        "duration_s": duration,
        "hold_rate": HOLD_RATE,
        "rows": rows,
        "echo_waiters": _echo_waiters(ctx, ctx.waiters),
    }


def _measure(
    ctx: Ctx,
    servers: dict[int, procs.Proc],
    loads: dict[int, dict[str, Any]],
    reps: int,
    label: str,
) -> dict[int, list[dict[str, Any]]]:
    """Alternate ``reps`` runs of the generator over ``servers`` (keyed by size), at
    concurrency 1, each with the :class:`~bench.generator.Load` fields ``loads[size]``."""
    out: dict[int, list[dict[str, Any]]] = {n: [] for n in servers}
    sizes = list(servers)
    for rep in range(reps):
        for n in sizes if rep % 2 == 0 else sizes[::-1]:
            pids = {"server": servers[n].pid}
            if "redis" in label:
                pids["redis"] = ctx.redis().pid
            load = generator.Load([servers[n].target], cpu_pids=pids, seed=rep, **loads[n])
            result = generator.pairs(load, ctx.workdir, f"scale-{label}-{n}-{rep}")
            out[n].append(result)
            ctx.log(
                f"  scale {label}={n}: acquire p50 {_f(result['acquire_p50_ms'])} ms, "
                f"rejected p50 {_f(result['reject_p50_ms'])} ms"
            )
    return out


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _rows(
    what: str, kind: str, results: dict[int, list[dict[str, Any]]], extra: dict[int, dict[str, Any]]
) -> list[dict[str, Any]]:
    small = min(results)
    rows = []
    for n, runs in results.items():
        ratios = [
            r["acquire_p50_ms"] / s["acquire_p50_ms"]
            for r, s in zip(runs, results[small], strict=True)
        ]
        rows.append(
            {
                "what": what,
                "n": n,
                "backend": kind,
                "acquire_p50_ms": metrics.median(r["acquire_p50_ms"] for r in runs),
                "acquire_p99_ms": metrics.median(r["acquire_p99_ms"] for r in runs),
                "p50_ratio_to_small": metrics.median(ratios),
                "pairs_per_s": metrics.median(r["pairs_per_s"] for r in runs),
                "reject_p50_ms": metrics.median(r["reject_p50_ms"] for r in runs),
                "reject_p99_ms": metrics.median(r["reject_p99_ms"] for r in runs),
                "server_cpu_us_per_pair": metrics.median(
                    r["cpu_us_per_pair"].get("server") for r in runs
                ),
                "errors": sum(sum(r["errors"].values()) for r in runs),
                **extra.get(n, {}),
            }
        )
    return rows


def _tenants(
    ctx: Ctx, kind: str, counts: tuple[int, int], reps: int, duration: float
) -> list[dict[str, Any]]:
    names = {n: [f"tenant{i}" for i in range(n)] for n in counts}
    servers = {
        n: procs.admitd(
            {
                "backend": backend(ctx, kind),
                "pools": [UNLIMITED_POOL],
                "tenants": [{"name": t, "max_concurrency": 100} for t in names[n]],
            },
            ctx.workdir,
            f"scale-t{n}-{kind}",
            wait=False,
        )
        for n in counts
    }
    try:
        procs.ready(*servers.values())
        loads = {n: {"duration": duration, "warmup": 0.3, "tenants": names[n]} for n in counts}
        results = _measure(ctx, servers, loads, reps, f"tenants-{kind}")
    finally:
        stop_all(list(servers.values()))
    return _rows("tenants", kind, results, {})


def _waiters(
    ctx: Ctx, kind: str, counts: tuple[int, int], reps: int, duration: float, *, tickets: bool
) -> list[dict[str, Any]]:
    """Park n waiters on pool ``blocked`` (its one slot held), then time Acquire+Release on
    pool ``free`` and a fail-fast Acquire on ``blocked``, which joins the long queue's fair
    order and is turned away. Also measured: how long parking took, the servers' CPU use
    while idle with the waiters, their memory, and what the parked calls got in the end.

    The waiters are Acquire RPCs held open, or (``tickets``) deferred tickets from Enqueue:
    the same queue entries without an RPC each, so the queue's own cost shows apart from
    the cost of holding that many RPCs."""
    what = "tickets" if tickets else "waiters"
    tenants = [f"tenant{i}" for i in range(10)]
    setup_timeout = max(counts) / HOLD_RATE + (20.0 if ctx.smoke else 120.0)
    servers: dict[int, procs.Proc] = {}
    holders: dict[int, Any] = {}
    extra: dict[int, dict[str, Any]] = {n: {} for n in counts}
    try:
        for n in counts:
            config = {
                "backend": backend(ctx, kind),
                "lease": {"ttl": 3600},
                "queue": {"max_length": n + 1000, "max_per_tenant": n + 1000, "max_wait": 3600},
                "pools": [
                    UNLIMITED_POOL | {"name": "free"},
                    {"name": "blocked", "max_concurrency": 1},
                ],
                "tenants": [{"name": t} for t in tenants],
            }
            name = f"scale-{what}{n}-{kind}"
            servers[n] = procs.admitd(config, ctx.workdir, name, wait=False)
        procs.ready(*servers.values())
        hold_for = setup_timeout + 2 * reps * (duration + 5) + 60
        for n, server in servers.items():
            _block(server.target)
            extra[n]["rss_before_mb"] = _rss_mb(server.pid)
            spec = hold_spec(server.target, n, tenants, hold_for, tickets=tickets)
            holders[n] = procs.start_load(spec, ctx.workdir, f"scale-hold-{what}{n}-{kind}")
        started = time.monotonic()
        for n, server in servers.items():
            extra[n].update(_wait_queued(server, n, started, setup_timeout))
            extra[n].update(_memory_per_waiter(server.pid, extra[n]))
        extra = _idle_cpu(servers, extra, 1.0 if ctx.smoke else 5.0)
        load = {
            "duration": duration,
            "warmup": 0.3,
            "pool": "free",
            "reject_pool": "blocked",
            "tenants": tenants,
        }
        results = _measure(ctx, servers, dict.fromkeys(counts, load), reps, f"{what}-{kind}")
        for n, server in servers.items():
            extra[n]["server_rss_mb"] = _rss_mb(server.pid)
    finally:
        stop_all(list(servers.values()))
        for n, holder in holders.items():
            try:
                extra[n]["parked_calls_ended"] = procs.finish_load(holder, 120)["outcome"]
            except RuntimeError as error:
                extra[n]["parked_calls_ended"] = str(error)
    return _rows(what, kind, results, extra)


def _echo_waiters(ctx: Ctx, n: int) -> dict[str, Any]:
    """Park ``n`` Acquires the same way on a no-op grpc.aio server that holds each one open
    (``bench.echo --park``), and measure its memory as for admitd: what a held-open Acquire
    costs on this stack before admitd does anything with it (gRPC core's call, grpc.aio's
    task and coroutines), the floor under admitd's own ``kb_per_waiter``."""
    setup_timeout = n / HOLD_RATE + (20.0 if ctx.smoke else 120.0)
    echo = procs.echo(ctx.workdir, name="scale-echo-park", park=True)
    out: dict[str, Any] = {"n": n, "rss_before_mb": _rss_mb(echo.pid)}
    holder = None
    try:
        spec = hold_spec(echo.target, n, ["tenant0"], setup_timeout + 60)
        holder = procs.start_load(spec, ctx.workdir, "scale-hold-echo")
        out.update(_wait_queued(echo, n, time.monotonic(), setup_timeout))
        out.update(_memory_per_waiter(echo.pid, out))
        ctx.log(f"  scale echo waiters={n}: {_f(out['kb_per_waiter'])} KB each")
    finally:
        echo.stop()
        if holder is not None:
            try:
                out["parked_calls_ended"] = procs.finish_load(holder, 120)["outcome"]
            except RuntimeError as error:
                out["parked_calls_ended"] = str(error)
    return out


def hold_spec(
    target: str, count: int, tenants: list[str], duration: float, *, tickets: bool = False
) -> dict[str, Any]:
    """What the Python holder (``procs.start_load``, mode ``hold``) parks: ``count`` waiters
    (Enqueue tickets with ``tickets``) on pool ``blocked`` of ``target``, at ``HOLD_RATE`` a
    second, held ``duration`` seconds."""
    return {
        "mode": "hold",
        "targets": [target],
        "count": count,
        "pool": "blocked",
        "tenants": tenants,
        "duration": duration,
        "rate": HOLD_RATE,
        "tickets": tickets,
    }


def _block(target: str) -> None:
    """Take pool ``blocked``'s only slot (held for the lease TTL)."""
    with grpc.insecure_channel(target) as channel:
        request = pb.AcquireRequest(tenant="tenant0", pool="blocked", input_tokens=1)
        pb_grpc.AdmissionStub(channel).Acquire(request, timeout=10)


def _wait_queued(server: procs.Proc, n: int, started: float, timeout: float) -> dict[str, Any]:
    """Poll the queue depth until n are parked, it stops growing for 30 s, or time is up."""
    queued, grew_at, failures = 0, time.monotonic(), 0
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.AdmissionStub(channel)
        while time.monotonic() - started < timeout and time.monotonic() - grew_at < 30:
            try:
                status = stub.GetStatus(pb.GetStatusRequest(), timeout=30)
            except grpc.RpcError:
                failures += 1  # e.g. UNAVAILABLE: the store timed out; try again
            else:
                now_queued = next(p.queued for p in status.pools if p.name == "blocked")
                if now_queued > queued:
                    queued, grew_at = now_queued, time.monotonic()
                if queued >= n:
                    break
            time.sleep(0.5)
    return {"queued": queued, "setup_s": grew_at - started, "status_failures": failures}


def _idle_cpu(
    servers: dict[int, procs.Proc], extra: dict[int, dict[str, Any]], seconds: float
) -> dict[int, dict[str, Any]]:
    """Share of a core each server burns while nothing but its parked waiters is there."""
    before = {n: procs.cpu_seconds(s.pid) for n, s in servers.items()}
    time.sleep(seconds)
    for n, server in servers.items():
        after, start = procs.cpu_seconds(server.pid), before[n]
        extra[n]["idle_cpu_share"] = (
            None if after is None or start is None else ((after - start) / seconds)
        )
    return extra


def _memory_per_waiter(pid: int, extra: dict[str, Any]) -> dict[str, Any]:
    """The server's resident memory once the waiters are parked, and what each took (its
    growth since before the first was parked, per waiter parked)."""
    parked, before = _rss_mb(pid), extra["rss_before_mb"]
    grown = None if parked is None or before is None else parked - before
    return {
        "rss_parked_mb": parked,
        "kb_per_waiter": grown * 1024 / extra["queued"] if grown and extra["queued"] else None,
    }


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None
