"""What one Acquire+Release pair costs a whole admitd server, counted so that a busy machine
does not move the figure: a fixed number of pairs at a fixed concurrency (16 callers by
default) from a grpc.aio client in this process against one memory-backed replica, or the
no-op echo server (``--echo``). Per pair: the Python function calls the server's main thread
made (cProfile, switched on and off by signals around the counted pairs), or, with
``--callgrind``, the CPU instructions the whole server process executed (valgrind's
callgrind, every thread, switched on and off by ``callgrind_control``). Where
:mod:`bench.store_cost` counts the engine alone, this counts the gRPC layer, the servicer
and the event loop as well.

    .venv/bin/python -m bench.server_cost                          # Python calls, 2,000 pairs
    .venv/bin/python -m bench.server_cost --callgrind --pairs 500  # instructions (~1 min)
    .venv/bin/python -m bench.server_cost --callgrind --echo       # the echo's, beside it
    .venv/bin/python -m bench.server_cost --callgrind --refusals   # a refused Acquire's

The overload gate keeps measuring but never refuses (its probe every 30 s): under callgrind
a server is ~50x slower, and refusals would not be pairs. With ``--refusals`` it refuses
every Acquire SERVER_OVERLOADED (``max_queue_delay`` 1 ms, which its first probe, slowed
down by valgrind, exceeds; the run fails if one is not refused), and the count is per
refused Acquire: past capacity a replica must refuse every call it cannot serve before the
caller's deadline, so a refusal must cost far less than a pair (the overload scenario's
loads are chosen from this ratio). Run-to-run spread of the instruction count is ~2-3%
(the event loop's batching depends on timing).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import yaml

from bench import procs
from bench.load import acquire_request, release_request

CONFIG: dict[str, Any] = {
    "backend": {"kind": "memory"},
    "pools": [
        {
            "name": "default",
            "max_concurrency": 1_000_000,
            "tokens_per_minute": 10**12,
            "requests_per_minute": 10**9,
        }
    ],
    "tenants": [{"name": "default"}],
    "drain_delay": 0,
    "shutdown_grace": 1,
    "overload": {"max_queue_delay": 3600, "probe_interval": 30},
    "observability": {"metrics_listen": None, "log_format": "text"},
}
REFUSING = {**CONFIG, "overload": {"max_queue_delay": "1ms", "probe_interval": 30}}
_PORT = re.compile(rb"port (\d+)")
_ADMISSION = "/admitd.v1.Admission"


async def _pairs(
    target: str, count: int, callers: int, deadline: float, *, refused: bool = False
) -> None:
    """``count`` Acquire+Release pairs from ``callers`` callers, as the bench's generator
    sends them (its requests, ``deadline`` seconds on each RPC); ``refused``: ``count``
    Acquires, each of which must be refused SERVER_OVERLOADED."""
    from admitd.v1 import admission_pb2 as pb

    async with grpc.aio.insecure_channel(target) as channel:
        acquire = channel.unary_unary(
            f"{_ADMISSION}/Acquire",
            request_serializer=pb.AcquireRequest.SerializeToString,
            response_deserializer=pb.Lease.FromString,
        )
        release = channel.unary_unary(
            f"{_ADMISSION}/Release",
            request_serializer=pb.ReleaseRequest.SerializeToString,
            response_deserializer=pb.ReleaseResponse.FromString,
        )
        request = acquire_request("default", "default", 10, 10, 0)
        left = count

        async def caller() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                if refused:
                    await _refusal(acquire(request, timeout=deadline))
                    continue
                lease = await acquire(request, timeout=deadline)
                await release(release_request(lease.lease_id, 10, 5), timeout=deadline)

        await asyncio.gather(*(caller() for _ in range(callers)))


async def _refusal(call: Any) -> None:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "overloaded" in str(
            error.details()
        ):
            return
        raise
    raise RuntimeError("an Acquire was served, not refused SERVER_OVERLOADED")


def measure(count: int, callers: int, *, callgrind: bool, server: str) -> dict[str, Any]:
    echo, refusals = server == "echo", server == "refusals"
    workdir = Path(tempfile.mkdtemp(prefix="server_cost-"))
    try:
        config = workdir / "admitd.yaml"
        config.write_text(yaml.safe_dump(REFUSING if refusals else CONFIG))
        stats, out = workdir / "calls.json", workdir / "callgrind.out"
        if echo:
            argv = [sys.executable, "-m", "bench.echo"]
        elif callgrind:
            argv = [sys.executable, "-m", "admitd"]
        else:  # this module's ``serve``: admitd with cProfile on signals
            argv = [sys.executable, "-m", "bench.server_cost", "serve", str(stats)]
        if not echo:
            argv += ["serve", "--config", str(config), "--listen", "127.0.0.1:0"]
        if callgrind:
            argv = [*procs.callgrind(out), *argv]
        elif echo:
            raise SystemExit("--echo counts instructions only: add --callgrind")
        with (workdir / "server.log").open("wb") as log:
            process = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=log, env=procs.env(), cwd=procs.ROOT
            )
        try:
            target = f"127.0.0.1:{_port(process)}"
            timeout = 600.0 if callgrind else 10.0
            asyncio.run(_pairs(target, 200, callers, timeout, refused=refusals))  # warm-up
            _switch(process, callgrind, on=True)
            asyncio.run(_pairs(target, count, callers, timeout, refused=refusals))
            _switch(process, callgrind, on=False)
            while not callgrind and not stats.exists():  # written once the profiler stops
                if process.poll() is not None:
                    raise RuntimeError("the server ended; see its log")
                time.sleep(0.1)
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(300)
        each = "refusal" if refusals else "pair"
        result: dict[str, Any] = {"server": server, f"{each}s": count}
        if callgrind:
            result[f"instructions_per_{each}"] = procs.instructions(out) / count
        else:
            result[f"python_calls_per_{each}"] = json.loads(stats.read_text()) / count
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _port(server: subprocess.Popen[bytes]) -> int:
    assert server.stdout is not None
    deadline = time.monotonic() + 600  # valgrind takes a while to start Python
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        if not line:
            break
        found = _PORT.search(line)
        if found:
            return int(found.group(1))
    raise RuntimeError("the server did not say its port; see its log")


def _switch(server: subprocess.Popen[bytes], callgrind: bool, *, on: bool) -> None:
    if callgrind:
        procs.collect(server.pid, on)
    else:
        server.send_signal(signal.SIGUSR1 if on else signal.SIGUSR2)
        if on:
            time.sleep(0.5)  # handled (the profiler on) before the counted pairs start


def serve(stats_path: str, argv: list[str]) -> int:
    """``admitd`` with cProfile on the main thread from SIGUSR1 to SIGUSR2, which writes the
    number of calls it counted to ``stats_path``."""
    from admitd._cli import main as admitd_main

    profiler = cProfile.Profile()

    def start(signum: int, frame: FrameType | None) -> None:
        profiler.enable()

    def stop(signum: int, frame: FrameType | None) -> None:
        profiler.disable()
        calls = pstats.Stats(profiler).total_calls  # type: ignore[attr-defined]
        Path(stats_path + ".part").write_text(json.dumps(calls))
        os.replace(stats_path + ".part", stats_path)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    return admitd_main(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        sys.exit(serve(argv[1], argv[2:]))
    parser = argparse.ArgumentParser(prog="python -m bench.server_cost", description=__doc__)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--callgrind", action="store_true", help="count instructions")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--echo", action="store_true", help="the echo server (--callgrind)")
    which.add_argument(
        "--refusals", action="store_true", help="admitd refusing every Acquire (overloaded)"
    )
    args = parser.parse_args(argv)
    server = "echo" if args.echo else "refusals" if args.refusals else "memory"
    result = measure(args.pairs, args.concurrency, callgrind=args.callgrind, server=server)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
