"""Where the time goes per Acquire+Release: one admitd replica per backend at concurrency
16, first measured plainly (CPU per pair, per thread, from /proc), then profiled with
pyinstrument (steady state only, see :mod:`bench.profiled`). Also timed in this process:
what the telemetry of one served pair costs (its spans, counters and histograms)."""

from __future__ import annotations

import signal
import statistics
import time
import timeit
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from pyinstrument.session import Session

from bench import generator, procs, profiling
from bench.scenarios._common import UNLIMITED_POOL, Ctx, backend, stop_all

CONCURRENCY = 16


def run(ctx: Ctx) -> dict[str, Any]:
    duration, warmup = (1.0, 1.0) if ctx.smoke else (8.0, 1.5)
    out: dict[str, Any] = {}
    kinds = ("memory", "redis")
    sessions = {kind: ctx.workdir / f"profile_{kind}.pyisession" for kind in kinds}
    servers = {
        kind: procs.admitd(
            {
                "backend": backend(ctx, kind),
                "pools": [UNLIMITED_POOL],
                "tenants": [{"name": "default"}],
            },
            ctx.workdir,
            f"profile-{kind}",
            profile=sessions[kind],
            wait=False,
        )
        for kind in kinds
    }
    try:
        procs.ready(*servers.values())
        for kind in kinds:
            out[kind] = _one(ctx, servers[kind], kind, duration, warmup, sessions[kind])
    finally:
        stop_all(list(servers.values()))
    out["telemetry"] = telemetry_cost(ctx)
    return out


def telemetry_cost(ctx: Ctx) -> dict[str, Any]:
    """The telemetry one served Acquire+Release reports, timed alone: a span each, the
    admitted and settled events (counters and histograms); median of 5 runs, per pair.
    Without an exporter, and with spans exported to an OTLP collector (a thread-pool gRPC
    server in this process that counts what it receives)."""
    from admitd import parse_config

    collector, port = _collector()
    try:
        endpoint = {"observability": {"otlp_endpoint": f"http://127.0.0.1:{port}"}}
        plans = {"no exporter": parse_config({}), "OTLP spans": parse_config(endpoint)}
        result = {label: _telemetry_pair_us(ctx, settings) for label, settings in plans.items()}
    finally:
        collector.stop(grace=None)
    ctx.log(
        "  telemetry per pair: " + ", ".join(f"{label} {us:.1f} us" for label, us in result.items())
    )
    return {"us_per_pair": result}


def _telemetry_pair_us(ctx: Ctx, settings: Any) -> float:
    from admitd._telemetry import Telemetry

    telemetry = Telemetry(settings)

    def pair() -> None:
        with telemetry.span("admitd.Acquire") as span:
            span.set_attribute("admitd.tenant", "default")
        telemetry.admitted("default", "default", 2, 300, 0.0)
        with telemetry.span("admitd.Release") as span:
            span.set_attribute("admitd.lease_id", "0" * 32)
        telemetry.settled("default", "default", 300, 250, 50)

    number = 2_000 if ctx.smoke else 20_000
    try:
        runs = [timeit.timeit(pair, number=number) / number * 1e6 for _ in range(5)]
    finally:
        telemetry.close()
    return statistics.median(runs)


def _collector() -> tuple[grpc.Server, int]:
    """An OTLP trace collector that accepts every export and keeps nothing: the request is
    not even decoded, and an empty message is a valid ``ExportTraceServiceResponse``."""

    def export(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b""

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    service = "opentelemetry.proto.collector.trace.v1.TraceService"
    rpc: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(export)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {"Export": rpc}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def _one(
    ctx: Ctx, server: procs.Proc, kind: str, duration: float, warmup: float, session_path: Path
) -> dict[str, Any]:
    plain = _plain(ctx, server, kind, duration)
    profiled = _profiled(ctx, server, kind, duration, warmup, session_path)
    session = Session.load(session_path)
    text_path = ctx.out / f"profile_{kind}.txt"
    text_path.write_text(profiling.render_text(session))
    ctx.log(
        f"  profile {kind}: {plain['server_cpu_us_per_pair']:.0f} us server CPU per pair "
        f"(main thread {plain['thread_share'].get('main', 0):.0%})"
    )
    return {
        **plain,
        "pairs_profiled": profiled["pairs"],
        "rpc_per_s_profiled": profiled["rpc_per_s"],
        "profile_text": text_path.name,
        **profiling.breakdown(session),
    }


def _load(server: procs.Proc, duration: float, warmup: float) -> generator.Load:
    pids = {"server": server.pid}
    return generator.Load([server.target], duration, CONCURRENCY, warmup=warmup, cpu_pids=pids)


def _plain(ctx: Ctx, server: procs.Proc, kind: str, duration: float) -> dict[str, Any]:
    """CPU per pair of the server (and of redis-server), and how it splits over threads."""
    load = _load(server, duration, 0.5)
    if kind == "redis":
        load.cpu_pids["redis"] = ctx.redis().pid
        _redis_stats(ctx)  # zeroed
    before = procs.thread_cpu(server.pid)
    result = generator.pairs(load, ctx.workdir, f"profile-plain-{kind}")
    after = procs.thread_cpu(server.pid)
    scripts = _redis_stats(ctx) if kind == "redis" else {}
    used = {name: after[name] - before.get(name, 0.0) for name in after}
    total = sum(used.values()) or 1.0
    return {
        "pairs": result["pairs"],
        "rpc_per_s": result["rpc_per_s"],
        "server_cpu_us_per_pair": result["cpu_us_per_pair"].get("server"),
        "redis_cpu_us_per_pair": result["cpu_us_per_pair"].get("redis"),
        "thread_share": {name: t / total for name, t in sorted(used.items()) if t > 0},
        **scripts,
    }


def _redis_stats(ctx: Ctx) -> dict[str, Any]:
    """Redis's own accounting since the last call (then zeroed): the scripts (EVALSHA and
    FCALL) and the commands they ran inside, per script call."""
    import redis

    client = redis.Redis(port=ctx.redis().port)
    try:
        stats = client.info("commandstats")
        client.config_resetstat()
    finally:
        client.close()
    calls = {k.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for k, v in stats.items()}
    # Acquire and Release are functions (FCALL), the other operations scripts (EVALSHA).
    scripts, script_us = (
        sum(pair)
        for pair in zip(calls.pop("evalsha", (0, 0)), calls.pop("fcall", (0, 0)), strict=True)
    )
    if not scripts:
        return {}
    inner = {k: v for k, v in calls.items() if k not in ("info", "config|resetstat", "ping")}
    return {
        "script_calls": scripts,
        "script_us_per_call": script_us / scripts,
        "script_commands_per_call": sum(c for c, _ in inner.values()) / scripts,
        "script_commands_us_per_call": sum(u for _, u in inner.values()) / scripts,
    }


def _profiled(
    ctx: Ctx, server: procs.Proc, kind: str, duration: float, warmup: float, session_path: Path
) -> dict[str, Any]:
    """A second load run, with the profiler on from the middle of its warm-up until the
    load has ended: switching the profiler on can hold the server up for a moment on a busy
    machine, which must not fall in the measured window (that once left it empty)."""
    load = _load(server, duration, warmup)
    process = generator.start(load, ctx.workdir, f"profile-{kind}")
    time.sleep(warmup / 2)
    server.process.send_signal(signal.SIGUSR1)
    try:
        result = generator.finish(process, load)
    finally:
        server.process.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 60
    while not session_path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return result
