"""How long one replica's event loop stops while it holds N waiting Acquire RPCs, and why.

``python -m bench.gc_stalls --waiters 30000 --step 5000`` parks waiters on a Redis-backed
replica (as the scale scenario does: pool ``blocked``, its one slot held, Acquires sent at
``HOLD_RATE``) and, each ``step`` waiters, makes the replica run one full (generation 2)
garbage collection, timed. It prints, as JSON: the forced collections (waiters parked, the
objects the collector tracks, seconds), every collection the replica ran by itself that took
over 10 ms, the heartbeats the replica missed (its log's warnings), and how many of the
waiters held are still queued in Redis at the end.

The replica runs under ``python -m bench.gc_stalls serve LOG <admitd argv>``: the ``admitd``
command with a ``gc.callbacks`` timer writing each collection to LOG, and SIGUSR1 running a
full collection. Numbers of objects and collection times move little with the machine's
load; the heartbeats missed do (a loaded core stretches every stall).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

from admitd_client._proto import admission_pb2 as pb
from admitd_client._proto import admission_pb2_grpc as pb_grpc
from bench import procs
from bench.scenarios.scale import HOLD_RATE, hold_spec

LONG = 0.01  # collections logged by themselves: the young ones take well under this


def serve(log_path: str, argv: list[str]) -> int:
    """The admitd command, its collections timed into ``log_path`` (JSON lines)."""
    from admitd._cli import main as admitd_main

    out = open(log_path, "a", buffering=1)  # noqa: SIM115 (open for the process's life)
    state: dict[str, Any] = {"forced": False, "start": 0.0}

    def timing(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            state["start"] = time.perf_counter()
            return
        took = time.perf_counter() - state["start"]
        if state["forced"] or took > LONG or info["generation"] == 2:
            line = {"t": time.time(), "gen": info["generation"], "s": round(took, 4)}
            line |= {"collected": info["collected"], "forced": state["forced"]}
            out.write(json.dumps(line) + "\n")

    def full(signum: int, frame: object) -> None:
        state["forced"] = True
        try:
            gc.collect()
        finally:
            state["forced"] = False
        # Counted after the timed collection, so as not to be part of it.
        out.write(json.dumps({"t": time.time(), "tracked": len(gc.get_objects())}) + "\n")

    def census(signum: int, frame: object) -> None:
        kinds = Counter(type(o).__qualname__ for o in gc.get_objects())
        out.write(json.dumps({"t": time.time(), "census": kinds.most_common(40)}) + "\n")

    def sweep(signum: int, frame: object) -> None:
        """Everything unfrozen and collected (what admitd's Collector sweeps), timed: the
        cyclic garbage that freezing had kept is what it collects."""
        gc.unfreeze()
        state["forced"] = True
        try:
            gc.collect()
        finally:
            state["forced"] = False
        gc.freeze()
        out.write(json.dumps({"t": time.time(), "swept": True}) + "\n")

    gc.callbacks.append(timing)
    signal.signal(signal.SIGWINCH, sweep)
    signal.signal(signal.SIGUSR1, full)
    signal.signal(signal.SIGUSR2, census)  # what the collector tracks, by type
    return admitd_main(argv)


def probe(waiters: int, step: int, workdir: Path, wait: float | None = None) -> dict[str, Any]:
    """``wait``: the waiters' wait_timeout (they end QUEUE_TIMEOUT); default: they wait
    until their client goes away at the end (cancelled)."""
    redis = procs.Redis(workdir)
    gc_log = workdir / "gc.jsonl"
    tenants = [f"tenant{i}" for i in range(10)]
    config = {
        "drain_delay": 0,
        "shutdown_grace": 1,
        "observability": {"metrics_listen": None, "log_format": "text"},
        "backend": {"kind": "redis", "url": redis.url, "key_prefix": "gcstalls"},
        "lease": {"ttl": 3600},
        "queue": {"max_length": waiters + 1000, "max_per_tenant": waiters + 1000, "max_wait": 3600},
        "pools": [{"name": "blocked", "max_concurrency": 1}],
        "tenants": [{"name": t} for t in tenants],
    }
    config_path = workdir / "admitd.json"
    config_path.write_text(json.dumps(config))
    argv = [sys.executable, "-m", "bench.gc_stalls", "serve", str(gc_log)]
    argv += ["serve", "--config", str(config_path), "--listen", "127.0.0.1:0"]
    server = procs.Proc("admitd", argv, workdir).ready()
    holder = None
    forced: list[dict[str, Any]] = []
    timeline: list[tuple[float, int]] = []  # (time, waiters queued) as GetStatus saw them
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.AdmissionStub(channel)
            block = pb.AcquireRequest(tenant="tenant0", pool="blocked", input_tokens=1)
            stub.Acquire(block, timeout=10)
            spec = hold_spec(server.target, waiters, tenants, wait or waiters / HOLD_RATE + 120)
            holder = procs.start_load(spec, workdir, "hold")
            next_at, most, grew_at = step, 0, time.monotonic()
            while next_at <= waiters and time.monotonic() - grew_at < 30:
                queued = _queued(stub)
                timeline.append((time.time(), queued))
                if queued > most:
                    most, grew_at = queued, time.monotonic()
                if queued >= next_at:
                    forced.append({"waiters": queued, **_force(server.pid, gc_log)})
                    next_at = (queued // step + 1) * step
                time.sleep(0.5)
            final = _queued(stub)
            census = _census(server.pid, gc_log)
            # The waiters end (their wait runs out, or their client goes away), then
            # everything is collected: what that finds is the cyclic garbage they left,
            # which freezing would keep.
            if wait is None:
                holder.kill()
                holder.wait(10)
            ended_by = time.monotonic() + 120 + (wait or 0)
            while _queued(stub) != 0 and time.monotonic() < ended_by:
                time.sleep(0.5)
            time.sleep(2)  # a tick or two of admitd's own Collector
            after = _signalled(server.pid, gc_log, signal.SIGWINCH, "swept")
            swept = next(x for x in after if x.get("forced"))
    finally:
        server.stop()
        if holder is not None:
            holder.kill()
            holder.wait(10)
        redis.stop()
    lines = [json.loads(x) for x in gc_log.read_text().splitlines()]
    own = [x for x in lines if "gen" in x and not x["forced"]]
    for x in own:  # the waiters queued when it ran (the last count seen before it)
        x["waiters"] = max((q for t, q in timeline if t <= x["t"]), default=0)
    log = server.log_path.read_text()
    return {
        "waiters_sent": waiters,
        "queued_at_end": final,
        "forced_full_collections": forced,
        "own_collections_over_10ms": own,
        "longest_own_collection_s": max((x["s"] for x in own), default=0.0),
        "heartbeats_missed": log.count("missed its heartbeats"),
        "tracked_by_type": census,
        "sweep_after_waiters_ended": {"s": swept["s"], "collected": swept["collected"]},
    }


def _signalled(pid: int, gc_log: Path, sig: int, done: str) -> list[dict[str, Any]]:
    """Signal the replica; the lines it logs until one with ``done``."""
    seen = len(gc_log.read_text().splitlines())
    os.kill(pid, sig)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in gc_log.read_text().splitlines()[seen:]]
        if any(done in x for x in lines):
            return lines
        time.sleep(0.1)
    raise RuntimeError(f"the replica did not report {done!r}")


def _census(pid: int, gc_log: Path) -> list[tuple[str, int]]:
    """The types the replica's collector tracks most, counted once the waiters are parked."""
    seen = len(gc_log.read_text().splitlines())
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in gc_log.read_text().splitlines()[seen:]:
            if "census" in line:
                census: list[tuple[str, int]] = json.loads(line)["census"]
                return census
        time.sleep(0.1)
    raise RuntimeError("the replica did not report its census")


def _queued(stub: pb_grpc.AdmissionStub) -> int:
    """Waiters queued in Redis (-1: the replica did not answer in time)."""
    try:
        status = stub.GetStatus(pb.GetStatusRequest(), timeout=30)
    except grpc.RpcError:
        return -1
    return next(p.queued for p in status.pools if p.name == "blocked")


def _force(pid: int, gc_log: Path) -> dict[str, Any]:
    """One full collection in the replica, timed there: its duration and tracked objects."""
    seen = len(gc_log.read_text().splitlines())
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in gc_log.read_text().splitlines()[seen:]]
        done = [x for x in lines if "tracked" in x]
        if done:
            took = next(x["s"] for x in lines if x.get("forced"))
            return {"full_collection_s": took, "tracked_objects": done[0]["tracked"]}
        time.sleep(0.1)
    raise RuntimeError("the replica did not report its collection")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "serve":
        sys.exit(serve(sys.argv[2], sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, default=30_000)
    parser.add_argument("--step", type=int, default=5_000)
    parser.add_argument("--wait", type=float, help="the waiters' wait (default: the run's)")
    parser.add_argument("--workdir", type=Path, help="keep the logs here (default: none)")
    args = parser.parse_args()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = probe(args.waiters, args.step, args.workdir, args.wait)
    else:
        with tempfile.TemporaryDirectory(prefix="gc-stalls-") as workdir:
            result = probe(args.waiters, args.step, Path(workdir), args.wait)
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
