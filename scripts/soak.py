#!/usr/bin/env python3
"""Soak test: thousands of tenants against 1-3 real admitd replicas for a long time, then the
invariants and the servers' memory growth. Not part of CI (``tests/test_soak.py`` runs only
``--smoke``, a few seconds, so this script cannot rot).

    python scripts/soak.py                          # 10 min, 2000 tenants, 3 replicas, Redis
    python scripts/soak.py --duration 3600 --concurrency 128
    python scripts/soak.py --backend memory         # one replica, in-memory state
    python scripts/soak.py --smoke                  # ~10 s: 200 tenants, 2 replicas, Redis

It starts its own redis-server (``--backend redis``) and ``python -m admitd serve`` replicas
on loopback ports, then runs ``--concurrency`` asyncio clients in this process, each in a
loop: pick a tenant, a pool and a replica at random; Acquire (fail fast, or waiting up to 1 s);
then hold the lease a few milliseconds and Release it with random usage (sometimes above the
reservation, sometimes through another replica), or Renew it first, or abandon it (never
released: the lease TTL must reclaim it).

When the time is up it releases what it holds, waits (polling, bounded) for the abandoned
leases to expire and checks:

- no RPC ever failed with anything but OK / RESOURCE_EXHAUSTED / NOT_FOUND (a lease that
  expired before its Release) -- no UNKNOWN, INTERNAL, UNAVAILABLE or DEADLINE_EXCEEDED;
- every refund is reservation - usage, never more than the reservation;
- nothing in flight and nothing queued, every concurrency level back at 0, every token and
  request bucket back at capacity, no lease, waiter or unclaimed grant left in Redis;
- the global daily token count moved by exactly what was charged (usage for released leases,
  the full reservation for expired ones): nothing lost, nothing charged twice;
- RSS growth of each server from the end of warm-up (the first 10 % of the run) to the end
  stays below ``--max-rss-growth-mb`` (default 64) or 25 % of its warm-up RSS, whichever is
  larger. Why that bound: a healthy replica's state is O(tenants + in-flight + one TTL of
  remembered releases), all of it reached during warm-up; what grows afterwards is allocator
  and gRPC arena slack (tens of MB). A leak of 1 KB per call at this script's ~1000 calls/s
  is 60 MB per minute, far beyond the bound after a 10-minute soak.

Exit status 0 when every check holds, 1 otherwise; a summary (throughput, outcomes, RSS) is
printed either way (``--json`` prints it as JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/support: the helpers that start processes

import grpc  # noqa: E402
from google.protobuf import duration_pb2  # noqa: E402

from admitd.v1 import admission_pb2 as pb  # noqa: E402
from admitd.v1 import admission_pb2_grpc as pb_grpc  # noqa: E402
from support.processes import AdmitdProcess, rss_bytes  # noqa: E402
from support.redis_server import RedisServer  # noqa: E402

POOLS = ("gpt-4o", "claude", "small")
GOOD = {"OK", "RESOURCE_EXHAUSTED", "NOT_FOUND"}


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)  # "Acquire OK", ...
    problems: list[str] = field(default_factory=list)
    expected_tokens: int = 0  # what the daily counters must have moved by
    held: dict[str, tuple[int, pb_grpc.AdmissionStub]] = field(default_factory=dict)
    abandoned: int = 0
    latencies: list[float] = field(default_factory=list)

    def saw(self, rpc: str, code: str) -> None:
        self.outcomes[f"{rpc} {code}"] += 1
        if code not in GOOD and len(self.problems) < 20:
            self.problems.append(f"{rpc} answered {code}")


def build_config(args: argparse.Namespace, backend: dict[str, Any]) -> dict[str, Any]:
    rng = random.Random(args.seed)
    tenants = []
    for i in range(args.tenants):
        tenant: dict[str, Any] = {"name": f"t{i:05d}", "weight": rng.choice([0.5, 1.0, 2.0, 4.0])}
        if i % 3 == 0:
            tenant["max_concurrency"] = rng.randint(1, 4)
        if i % 5 == 0:
            tenant["max_queued"] = rng.randint(1, 3)
        tenants.append(tenant)
    return {
        "backend": backend,
        "lease": {"ttl": args.ttl, "reap_interval": 0.25},
        "queue": {"max_wait": 2, "max_per_tenant": 5, "max_length": 2000},
        "budget": {"tokens_per_day": 10**12},
        "pools": [
            {
                "name": name,
                "max_concurrency": args.concurrency // 2 + 1,
                "tokens_per_minute": 50_000_000,
                "requests_per_minute": 1_000_000,
            }
            for name in POOLS
        ],
        "tenants": tenants,
    }


def seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(value * 1e9))
    return duration


async def client(
    n: int, stubs: list[pb_grpc.AdmissionStub], args: argparse.Namespace, tally: Tally, end: float
) -> None:
    rng = random.Random(args.seed * 1000 + n)
    while time.monotonic() < end:
        stub = rng.choice(stubs)
        request = pb.AcquireRequest(
            tenant=f"t{rng.randrange(args.tenants):05d}",
            pool=rng.choice(POOLS),
            input_tokens=rng.randint(1, 2000),
            max_output_tokens=rng.randint(0, 500),
        )
        if rng.random() < 0.3:
            request.wait_timeout.CopyFrom(seconds(rng.choice([0.05, 0.2, 1.0])))
        started = time.monotonic()
        try:
            lease = await stub.Acquire(request, timeout=10)
        except grpc.aio.AioRpcError as error:
            tally.saw("Acquire", error.code().name)
            await asyncio.sleep(0.001)  # pacing: rejected callers back off a little
            continue
        tally.latencies.append(time.monotonic() - started)
        tally.saw("Acquire", "OK")
        reserved = lease.reserved_tokens
        action = rng.random()
        if action < 0.05:
            tally.abandoned += 1  # never released: expiry must reclaim it
            tally.expected_tokens += reserved
            continue
        tally.held[lease.lease_id] = (reserved, stub)
        await asyncio.sleep(rng.uniform(0, 0.02))  # the "LLM call"
        if action < 0.25:
            renew = pb.RenewRequest(lease_id=lease.lease_id)
            await call(tally, "Renew", rng.choice(stubs).Renew(renew, timeout=10))
        usage = None
        if rng.random() < 0.9:
            usage = pb.Usage(
                input_tokens=rng.randint(0, request.input_tokens),
                output_tokens=rng.randint(0, request.max_output_tokens * 12 // 10 + 1),
            )
        await release(tally, rng.choice(stubs), lease.lease_id, reserved, usage)


async def call(tally: Tally, rpc: str, pending: Any) -> Any:
    try:
        response = await pending
    except grpc.aio.AioRpcError as error:
        tally.saw(rpc, error.code().name)
        return None
    tally.saw(rpc, "OK")
    return response


async def release(
    tally: Tally,
    stub: pb_grpc.AdmissionStub,
    lease_id: str,
    reserved: int,
    usage: pb.Usage | None,
) -> None:
    tally.held.pop(lease_id, None)
    request = pb.ReleaseRequest(lease_id=lease_id)
    if usage is not None:
        request.usage.CopyFrom(usage)
    settled = await call(tally, "Release", stub.Release(request, timeout=10))
    if settled is None:  # NOT_FOUND: it expired first, its full reservation charged
        tally.expected_tokens += reserved
        return
    charged = reserved if usage is None else usage.input_tokens + usage.output_tokens
    if settled.already_released or settled.charged_tokens != charged:
        tally.problems.append(f"release of {lease_id}: {settled} (charged {charged} expected)")
    if settled.refunded_tokens != max(0, reserved - charged) or settled.refunded_tokens > reserved:
        tally.problems.append(f"refund of {lease_id}: {settled.refunded_tokens} of {reserved}")
    tally.expected_tokens += settled.charged_tokens


async def status(stub: pb_grpc.AdmissionStub) -> pb.StatusResponse:
    return await stub.GetStatus(pb.GetStatusRequest(), timeout=10)


def drained(s: pb.StatusResponse) -> list[str]:
    """What is not back at rest: in flight, queued, concurrency in use, buckets below full."""
    out = []
    for kind, items in (("pool", s.pools), ("tenant", s.tenants)):
        for item in items:
            if item.in_flight or item.queued:
                out.append(f"{kind} {item.name}: {item.in_flight} in flight, {item.queued} queued")
            if item.HasField("concurrency") and item.concurrency.value:
                out.append(f"{kind} {item.name}: concurrency {item.concurrency.value:g} in use")
            for name in ("tokens_per_minute", "requests_per_minute"):
                if item.HasField(name):
                    level = getattr(item, name)
                    if level.value < level.limit - 1e-6:
                        out.append(f"{kind} {item.name}: {name} {level.value:g}/{level.limit:g}")
    return out


async def settle_down(stub: pb_grpc.AdmissionStub, within: float) -> list[str]:
    """Poll until everything is back at rest (expiry of abandoned leases, bucket refill)."""
    deadline = time.monotonic() + within
    while True:
        left = drained(await status(stub))
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.2)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    redis_server = RedisServer().start() if args.backend == "redis" else None
    backend: dict[str, Any] = {"kind": "memory"}
    if redis_server is not None:
        # A generous store timeout: on a loaded machine a 0.5 s Redis reply is not a fault.
        backend = {"kind": "redis", "url": redis_server.url, "key_prefix": "soak", "timeout": 2}
    config = build_config(args, backend)
    replicas: list[AdmitdProcess] = []
    report: dict[str, Any] = {"args": vars(args)}
    try:
        for i in range(args.replicas):
            replicas.append(AdmitdProcess(config, f"soak-{i}"))
        rss_start = [rss_bytes(r.pid) for r in replicas]
        channels = [grpc.aio.insecure_channel(r.target) for r in replicas]
        stubs = [pb_grpc.AdmissionStub(c) for c in channels]
        before = await status(stubs[0])
        tally = Tally()
        started = time.monotonic()
        end = started + args.duration
        clients = [
            asyncio.ensure_future(client(n, stubs, args, tally, end))
            for n in range(args.concurrency)
        ]
        await asyncio.sleep(max(1.0, args.duration * 0.1))  # warm-up, in real time
        rss_warm = [rss_bytes(r.pid) for r in replicas]
        await asyncio.gather(*clients)
        elapsed = time.monotonic() - started
        for lease_id, (reserved, stub) in list(tally.held.items()):
            await release(tally, stub, lease_id, reserved, None)
        left = await settle_down(stubs[0], args.ttl + 70)
        after = await status(stubs[-1])
        rss_end = [rss_bytes(r.pid) for r in replicas]
        for channel in channels:
            await channel.close()
        problems = list(tally.problems) + left
        used = after.budget.tokens_per_day.value - before.budget.tokens_per_day.value
        if used != tally.expected_tokens:
            problems.append(f"daily tokens moved by {used:g}, expected {tally.expected_tokens}")
        if redis_server is not None:
            client_ = redis_server.client()
            for kind in ("lease", "w", "granted"):
                keys = list(client_.scan_iter(match=f"{{soak}}:{kind}:*", count=1000))
                if keys:
                    problems.append(f"{len(keys)} {kind} keys left in Redis")
            if client_.zcard("{soak}:unclaimed"):
                problems.append("unclaimed grants left in Redis")
            report["redis_keys_end"] = client_.dbsize()
        mb = 1024 * 1024
        for i, (warm, final) in enumerate(zip(rss_warm, rss_end, strict=True)):
            bound = max(args.max_rss_growth_mb * mb, warm // 4)
            if final - warm > bound:
                problems.append(
                    f"replica {i} RSS grew {(final - warm) / mb:.1f} MB after warm-up"
                    f" (bound {bound / mb:.0f} MB)"
                )
        calls = sum(tally.outcomes.values())
        lat = sorted(tally.latencies) or [0.0]
        report.update(
            {
                "seconds": round(elapsed, 1),
                "calls": calls,
                "calls_per_second": round(calls / elapsed, 1),
                "acquire_latency_ms": {
                    "p50": round(lat[len(lat) // 2] * 1000, 2),
                    "p99": round(lat[int(len(lat) * 0.99)] * 1000, 2),
                },
                "outcomes": dict(sorted(tally.outcomes.items())),
                "abandoned": tally.abandoned,
                "tokens_charged": tally.expected_tokens,
                "rss_mb": [
                    {
                        "start": round(s / mb, 1),
                        "warm": round(w / mb, 1),
                        "end": round(e / mb, 1),
                    }
                    for s, w, e in zip(rss_start, rss_warm, rss_end, strict=True)
                ],
                "problems": problems,
                "ok": not problems,
            }
        )
        return report
    finally:
        for replica in replicas:
            code = replica.stop()
            if code not in (0, None):
                report.setdefault("problems", []).append(f"replica exited with {code}")
                report["ok"] = False
        if redis_server is not None:
            redis_server.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--tenants", type=int, default=2000)
    parser.add_argument("--replicas", type=int, default=3, choices=(1, 2, 3))
    parser.add_argument("--backend", choices=("redis", "memory"), default="redis")
    parser.add_argument("--concurrency", type=int, default=64, help="clients in parallel")
    parser.add_argument("--ttl", type=float, default=5.0, help="lease TTL, seconds")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-rss-growth-mb", type=float, default=64.0)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--smoke", action="store_true", help="a few seconds: 200 tenants, 2 replicas, Redis"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.duration, args.tenants, args.replicas, args.concurrency = 3.0, 200, 2, 16
        args.ttl = 2.0
    if args.backend == "memory" and args.replicas > 1:
        parser.error("the memory backend is one process: use --replicas 1 (or --backend redis)")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(soak(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
        print("PASS" if report.get("ok") else f"FAIL (rerun with --seed {args.seed})")
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
