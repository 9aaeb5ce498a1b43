"""What one Acquire+Release pair costs the state store, measured so that a busy machine does
not move the figure much: a fixed number of pairs, one at a time, through admitd's engine in
this process (no gRPC), against a redis-server of its own. Reported per pair: the Lua
scripts' time inside redis-server (``INFO commandstats``, EVALSHA's and FCALL's usec),
redis-server's whole CPU (``INFO cpu``, sockets included), the Redis commands the scripts
ran, and the Python function calls this process made (cProfile's count, which no noise
moves). With
``--callgrind``, redis-server runs under valgrind's callgrind and the figure is the CPU
instructions it executed per pair: slow (use a few hundred pairs), and the same on a busy
machine as on a quiet one.

    .venv/bin/python -m bench.store_cost                 # 2,000 pairs of each case
    .venv/bin/python -m bench.store_cost --pairs 500 --case queued
    .venv/bin/python -m bench.store_cost --pairs 200 --callgrind
    .venv/bin/python -m bench.store_cost --pairs 200 --callgrind --held 120

Cases: ``fail_fast`` (no wait_timeout: the caller takes a refusal rather than wait),
``queued`` (a wait_timeout: it would wait if the pool were full), both on a pool with a
concurrency, a token and a request limit and a tenant with limits of its own, nothing
waiting; ``memory`` runs the fail-fast case on the memory backend (Python calls only).
``--held N`` keeps N leases granted before the measured pairs and holds them through the run,
as a busy deployment does: the sets of leases by expiry and of each gauge's holders then have
N members, which is what a Redis command on them walks.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import json
import pstats
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import uvloop

from bench import procs

CASES = ("fail_fast", "queued", "memory")
LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
"""The event loop the pairs run on: uvloop by default, as ``admitd serve`` runs (its
``event_loop`` setting); the process's own CPU per pair depends on it."""
_PREFIX = itertools.count()

CONFIG: dict[str, Any] = {
    "pools": [
        {
            "name": "default",
            "max_concurrency": 1_000_000,
            "tokens_per_minute": 10**12,
            "requests_per_minute": 10**9,
        }
    ],
    "tenants": [{"name": "default", "max_concurrency": 1_000_000, "tokens_per_minute": 10**12}],
    # The reaper would come round every second while an Acquire is in flight: a number of
    # expire scripts that depends on how fast the pairs run. Here it waits out the run.
    "lease": {"ttl": 3600, "reap_interval": 3600},
}


async def pairs(
    backend: dict[str, Any],
    count: int,
    wait: float,
    calls: bool,
    warmup: int = 50,
    held: int = 0,
) -> float:
    """Run ``count`` pairs after ``warmup`` pairs and ``held`` Acquires never released (they
    stay in Redis after this engine closes): the CPU seconds this process spent on the pairs,
    or (``calls``) the Python function calls it made, counted by cProfile."""
    from admitd import parse_config
    from admitd._backends import make_backend
    from admitd._clock import SystemClock
    from admitd._engine import Engine
    from admitd._requests import AcquireSpec
    from admitd._usage import Usage

    settings = parse_config({**CONFIG, "backend": backend})
    clock = SystemClock()
    engine = Engine(settings, make_backend(settings, clock), clock)
    await engine.start()
    spec = AcquireSpec(
        tenant="default",
        pool="default",
        input_tokens=100,
        max_output_tokens=200,
        wait_timeout=wait,
    )
    used = Usage(100, 50)

    async def run(n: int) -> None:
        for _ in range(n):
            lease = await engine.acquire(spec)
            await engine.release(lease.lease_id, used)

    try:
        await run(warmup)  # connections made, caches warm
        for _ in range(held):
            await engine.acquire(spec)
        if not calls:
            started = time.process_time()
            await run(count)
            return time.process_time() - started
        profiler = cProfile.Profile()
        profiler.enable()
        await run(count)
        profiler.disable()
        return float(pstats.Stats(profiler).total_calls)  # type: ignore[attr-defined]
    finally:
        await engine.close()


def measure(
    case: str, count: int, *, calls: bool, callgrind: bool, held: int = 0, loop: str = "uvloop"
) -> dict[str, Any]:

    def run(coro: Any) -> float:
        with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
            spent: float = runner.run(coro)
            return spent

    wait = 5.0 if case == "queued" else 0.0
    mine = "python_calls_per_pair" if calls else "python_cpu_us_per_pair"
    scale = 1 if calls else 1e6
    if case == "memory":
        spent = run(pairs({"kind": "memory"}, count, wait, calls, held=held))
        return {"case": case, "pairs": count, mine: spent * scale / count}
    instructions = None
    with tempfile.TemporaryDirectory() as tmp:
        server = _Callgrind(Path(tmp)) if callgrind else procs.Redis(Path(tmp))
        try:
            client = redis.Redis(port=server.port)
            backend = {
                "kind": "redis",
                "url": server.url,
                "key_prefix": f"cost{next(_PREFIX)}",
                "timeout": 60 if callgrind else 1,
            }
            # Scripts loaded, and the held leases granted before the count starts.
            run(pairs(backend, 50, wait, calls=False, held=held))
            client.config_resetstat()
            cpu0 = _cpu(client)
            if isinstance(server, _Callgrind):
                server.collect(True)
            spent = run(pairs(backend, count, wait, calls, warmup=0))
            if isinstance(server, _Callgrind):
                server.collect(False)
            cpu1 = _cpu(client)
            stats = client.info("commandstats")
            client.close()
        finally:
            server.stop()
        if isinstance(server, _Callgrind):
            instructions = server.instructions()
            shutil.copy(server.out, Path(tempfile.gettempdir()) / f"store_cost.{case}.callgrind")
    # The engine's start (configure) is in the counts: small beside count pairs.
    # Acquire and Release are functions (FCALL), the other operations scripts (EVALSHA).
    outer = ("cmdstat_evalsha", "cmdstat_evalsha_ro", "cmdstat_fcall", "cmdstat_fcall_ro")
    inner = sum(v["calls"] for k, v in stats.items() if k not in outer)
    scripts = [stats.get(k, {}) for k in outer]
    return {
        "case": case,
        "pairs": count,
        "script_us_per_pair": sum(s.get("usec", 0) for s in scripts) / count,
        "scripts_per_pair": sum(s.get("calls", 0) for s in scripts) / count,
        "redis_cpu_us_per_pair": (cpu1 - cpu0) * 1e6 / count,
        "redis_commands_per_pair": inner / count,
        mine: spent * scale / count,
        **({} if instructions is None else {"redis_instructions_per_pair": instructions / count}),
    }


class _Callgrind:
    """redis-server under callgrind, counting instructions only while told to."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("--callgrind needs redis-server")
        self.port = procs.free_port()
        self.out = workdir / "callgrind.out"
        argv = [*procs.callgrind(self.out), binary, "--port", str(self.port)]
        argv += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
            time.sleep(0.2)
        client.close()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def collect(self, on: bool) -> None:
        procs.collect(self.process.pid, on)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)

    def instructions(self) -> int:
        return procs.instructions(self.out)


def _cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.store_cost", description=__doc__)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--case", choices=CASES, action="append")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (median of each)")
    parser.add_argument("--held", type=int, default=0, help="leases held through the run")
    parser.add_argument(
        "--callgrind", action="store_true", help="count redis-server's instructions"
    )
    parser.add_argument("--loop", choices=tuple(LOOPS), default="uvloop")
    parser.add_argument(
        "--calls", action="store_true", help="count Python calls (cProfile) instead of CPU time"
    )
    args = parser.parse_args(argv)
    for case in args.case or CASES:
        runs = [
            measure(
                case,
                args.pairs,
                calls=args.calls,
                callgrind=args.callgrind,
                held=args.held,
                loop=args.loop,
            )
            for _ in range(args.repeat)
        ]
        best = {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0] if k != "case"}
        shown = {k: round(v, 1) for k, v in best.items()}
        print(json.dumps({"case": case, **({"held": args.held} if args.held else {}), **shown}))


if __name__ == "__main__":
    main()
