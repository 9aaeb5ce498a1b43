#!/usr/bin/env python3
"""Run the admitd image as its users do: alone, and as a pair the way the Helm chart runs it.

    python scripts/check_image.py --image IMAGE --redis-image IMAGE \\
        --default-chart RENDERED.yaml --pair-chart RENDERED.yaml   # scripts/check_image.sh

1. The image and the chart (rendered with its default values) agree: user, ports, command,
   config folder, health check.
2. One container with the embedded default, ``--read-only --cap-drop ALL``: time to SERVING,
   both of the chart's probes, a lease acquired and released over gRPC from the host,
   /metrics scraped; then SIGTERM: NOT_SERVING, Acquire UNAVAILABLE, Release still served,
   exit 0 within drain_delay + shutdown_grace.
3. Two replicas and a Redis on one Docker network, each run with the rendered Deployment's
   user, security context, arguments, Secret environment and volumes (the ConfigMap a folder
   laid out and updated as the kubelet does): a lease granted by one is released by the
   other; a config change reaches both; ``docker kill`` of one loses no reservation (its
   leases come back after their TTL, never earlier) and the other keeps serving.
4. Nothing of the build is left in the image: no compiler, no pip, no cache.

A check that does not hold raises; the containers' logs are printed and the exit status is 1.
Everything this run starts (containers, a network, a folder) is its own and removed at the end.
Ports are published on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2
from image_harness import (
    ChartPod,
    CheckFailed,
    ConfigFolder,
    Replica,
    Run,
    check,
    docker,
    rejected,
    until,
)

import admitd._telemetry as admitd_telemetry
from admitd import EMBEDDED_DEFAULT, load_config

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ROOT = Path(__file__).resolve().parent.parent

# Runs inside the image, with admitd's Python: what a build could have left behind.
LEFTOVERS = r"""
import glob, importlib.util, json, os, shutil
found = [t for t in ("gcc", "cc", "c++", "make", "ld", "pip", "pip3") if shutil.which(t)]
found += [m for m in ("pip", "setuptools", "wheel") if importlib.util.find_spec(m)]
found += [p for p in ("/root/.cache", "/src", "/build") if os.path.exists(p)]
for pattern in ("/var/lib/apt/lists/*_Packages*", "/var/cache/apt/archives/*.deb",
                "/var/cache/apt/*.bin", "/opt/admitd/**/__pycache__/*.tmp*"):
    found += glob.glob(pattern, recursive=True)
print(json.dumps(found))
"""


def check_agreement(image: str, chart: ChartPod) -> None:
    config = json.loads(docker("image", "inspect", image))[0]["Config"]
    check(config["User"] == chart.user, f"image user {config['User']}, chart {chart.user}")
    check(
        config["Entrypoint"] == ["admitd"] and config["Cmd"] == chart.args,
        f"image runs {config['Entrypoint']} {config['Cmd']}, the chart admitd {chart.args}",
    )
    exposed = {int(port.split("/")[0]) for port in config["ExposedPorts"]}
    check(set(chart.ports.values()) <= exposed, f"chart ports {chart.ports}, image {exposed}")
    path = chart.args[chart.args.index("--config") + 1]
    check(Path(path).parent == Path(chart.config_dir), f"--config {path} not in {chart.config_dir}")
    check(all(port == chart.ports["grpc"] for port, _ in chart.probes), "probes off the gRPC port")
    check(
        f"127.0.0.1:{chart.ports['grpc']}" in config["Healthcheck"]["Test"],
        f"HEALTHCHECK {config['Healthcheck']['Test']} is not on the gRPC port",
    )


def check_single(run: Run, image: str, chart: ChartPod) -> None:
    started = time.monotonic()
    publish = [f"--publish=127.0.0.1::{port}" for port in chart.ports.values()]
    admitd = chart.replica(run.start("single", image, "--read-only", "--cap-drop", "ALL", *publish))
    admitd.wait_status(SERVING)
    print(f"   time to SERVING: {time.monotonic() - started:.1f} s (from docker run)")
    for port, service in chart.probes:
        check(admitd.status(service) == SERVING, f"probe {service!r} on {port}: not SERVING")
    uid = re.search(
        r"^Uid:\s+(\d+)", docker("exec", admitd.container, "cat", "/proc/1/status"), re.M
    )
    check(uid is not None and uid.group(1) == chart.user.split(":")[0], f"runs as uid {uid}")
    pool = EMBEDDED_DEFAULT.pools[0].name
    lease = admitd.acquire(pool, prompt="Hello, admitd!", max_output_tokens=64)
    check(lease.input_tokens > 0, f"the prompt was not counted: {lease}")
    check(admitd.release(lease).charged_tokens == lease.reserved_tokens, "release charged wrong")
    admitted = admitd.metric("admitd_decisions_total", decision="admitted", pool=pool)
    check(admitted == 1, f"/metrics: admitd_decisions_total admitted = {admitted}, not 1")
    print("   a lease acquired and released over gRPC; /metrics scraped")

    held = admitd.acquire(pool, input_tokens=1, max_output_tokens=1)
    drain, grace = EMBEDDED_DEFAULT.drain_delay, EMBEDDED_DEFAULT.shutdown_grace
    signalled = time.monotonic()
    docker("kill", "--signal", "TERM", admitd.container)
    admitd.wait_status(NOT_SERVING, within=drain)
    code = rejected(lambda: admitd.acquire(pool, input_tokens=1, max_output_tokens=1))
    check(code == grpc.StatusCode.UNAVAILABLE, f"Acquire while draining: {code}, not UNAVAILABLE")
    check(not admitd.release(held).already_released, "Release while draining was not served")
    status = docker("wait", admitd.container, timeout=drain + grace + 30)
    took = time.monotonic() - signalled
    check(status == "0", f"exit status {status} after SIGTERM")
    check(took <= drain + grace, f"exited {took:.1f} s after SIGTERM, over {drain + grace:.0f} s")
    print(f"   SIGTERM: drained (Release served, Acquire UNAVAILABLE), exit 0 after {took:.1f} s")


def check_dashboard(admitd: Replica) -> int:
    """Every metric the Grafana dashboard queries is exported, or (a counter of a rare event,
    exported once it happens) declared by admitd's telemetry. Return how many it queries."""
    dashboard = (ROOT / "helm/admitd/dashboards/admitd.json").read_text()
    queried = {
        re.sub(r"_(bucket|count|sum)$", "", m) for m in re.findall(r"admitd_[a-z_]+", dashboard)
    }
    rare = {
        "admitd_store_errors_total",
        "admitd_lease_expiries_total",
        "admitd_unchecked_admissions_total",
    }

    def exported() -> set[str]:
        names = {line.split("{")[0].split(" ")[0] for line in admitd.scrape()}
        return {re.sub(r"_(bucket|count|sum|created)$", "", name) for name in names}

    # Gauges follow a snapshot taken every few seconds.
    missing: set[str] = set()

    def complete() -> bool:
        missing.clear()
        missing.update(queried - rare - exported())
        return not missing

    try:
        until(complete, 15, "/metrics exports every metric the dashboard queries")
    except CheckFailed:
        raise CheckFailed(f"/metrics lacks what the dashboard queries: {sorted(missing)}") from None
    declared = set(re.findall(r"``(admitd_[a-z_]+)``", admitd_telemetry.__doc__ or ""))
    check(rare & queried <= declared, f"undeclared metrics: {sorted((rare & queried) - declared)}")
    return len(queried)


def check_pair(run: Run, image: str, redis_image: str, chart: ChartPod, work: Path) -> None:
    network = run.network()
    redis_flags = ("--network", network, "--network-alias", "redis", "--read-only")
    run.start(
        "redis",
        redis_image,
        *redis_flags,
        args=("redis-server", "--save", "", "--appendonly", "no", "--protected-mode", "no"),
    )
    folder = ConfigFolder(work / "config", chart.config)
    flags = [*chart.flags, "--network", network, "--volume", f"{folder.root}:{chart.config_dir}:ro"]
    a, b = (chart.replica(run.start(name, image, *flags, args=tuple(chart.args))) for name in "ab")
    for replica in (a, b):
        for _, service in chart.probes:
            replica.wait_status(SERVING, service)
    settings = load_config(folder.root / "admitd.yaml", environ={})
    pool = settings.pools[0]

    lease = a.acquire(pool.name, input_tokens=5, max_output_tokens=5)
    check(not b.release(lease).already_released, "a lease from one replica unknown to the other")
    check(a.release(lease).already_released, "released through b, but a does not know it")
    print("   a lease granted by one replica, released by the other")

    limit = (pool.max_concurrency or 0) + 1
    changed = yaml.safe_load(chart.config)
    changed["pools"][0]["max_concurrency"] = limit
    folder.write(yaml.safe_dump(changed))

    def applied(replica: Replica) -> bool:  # by this replica itself: its own reload counter
        reloads = replica.metric("admitd_config_reloads_total", result="applied")
        return reloads == 1 and replica.pool(pool.name).concurrency.limit == limit

    for replica in (a, b):
        until(partial(applied, replica), 15, f"{replica.container} applies max_concurrency {limit}")
    print(f"   config change (max_concurrency {limit - 1} -> {limit}) applied by both replicas")

    ttl, small = settings.lease.ttl, {"input_tokens": 5, "max_output_tokens": 5}
    sent = time.monotonic()
    for _ in range(limit):
        a.acquire(pool.name, **small)
    received = time.monotonic()
    docker("kill", a.container)
    check(b.status() == SERVING, "b stopped serving when a was killed")
    check(b.pool(pool.name).in_flight == limit, "a reservation was lost with the killed replica")
    # Host clocks only (a lease's expires_at is the server's estimate): none of a's leases can
    # expire before sent + ttl, and all have by received + ttl. Until the first, every Acquire
    # on b must be refused; a waiter must then be granted soon after the last.
    refused = 0
    while time.monotonic() < sent + ttl:
        try:
            early = b.acquire(pool.name, **small)
        except grpc.RpcError as error:
            check(error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, f"b said {error.code()}")
            refused += 1
            time.sleep(0.1)  # real time: the property is the TTL on a real clock
            continue
        ahead = sent + ttl - time.monotonic()
        check(ahead <= 0, f"a killed replica's lease came back {ahead:.2f} s before its TTL")
        b.release(early)
    granted = b.acquire(pool.name, wait=ttl + 10, **small)
    late = time.monotonic() - (received + ttl)
    check(late <= settings.lease.reap_interval + 2, f"came back {late:.1f} s after the TTL")
    b.release(granted)
    print(
        f"   docker kill: leases kept ({refused} Acquires refused before the TTL), a waiter"
        f" granted {late:+.2f} s after it; the other replica served on"
    )
    print(f"   /metrics has the {check_dashboard(b)} metrics the Grafana dashboard queries")
    docker("kill", "--signal", "TERM", b.container)
    status = docker(
        "wait", b.container, timeout=settings.drain_delay + settings.shutdown_grace + 30
    )
    check(status == "0", f"b exited {status} after SIGTERM")


def check_leftovers(image: str) -> None:
    found = json.loads(
        docker(
            "run",
            "--rm",
            "--read-only",
            "--cap-drop",
            "ALL",
            "--entrypoint",
            "python3",
            image,
            "-c",
            LEFTOVERS,
        )
    )
    check(not found, f"left in the image by the build: {found}")
    size = int(docker("image", "inspect", "--format", "{{.Size}}", image))
    print(f"   no compiler, pip or cache; image size {size / 1e6:.0f} MB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--image", required=True)
    parser.add_argument("--redis-image", required=True)
    parser.add_argument("--default-chart", type=Path, required=True)
    parser.add_argument("--pair-chart", type=Path, required=True)
    options = parser.parse_args()
    default, pair = ChartPod.read(options.default_chart), ChartPod.read(options.pair_chart)
    run = Run()
    try:
        with tempfile.TemporaryDirectory(prefix="admitd-image-") as scratch:
            Path(scratch).chmod(0o755)  # the containers' user reads the config folder
            steps: list[tuple[str, Callable[[], None]]] = [
                ("image and chart agree", lambda: check_agreement(options.image, default)),
                (
                    "one container, embedded default",
                    lambda: check_single(run, options.image, default),
                ),
                (
                    "HA pair on Redis, as the chart runs it",
                    lambda: check_pair(
                        run, options.image, options.redis_image, pair, Path(scratch)
                    ),
                ),
                ("nothing of the build left", lambda: check_leftovers(options.image)),
            ]
            for name, step in steps:
                started = time.monotonic()
                print(f"== {name}", flush=True)
                step()
                print(f"   ok ({time.monotonic() - started:.1f} s)", flush=True)
    except (CheckFailed, grpc.RpcError, subprocess.TimeoutExpired) as error:
        run.print_logs()
        print(f"check_image: FAIL: {error}", file=sys.stderr)
        return 1
    finally:
        run.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
