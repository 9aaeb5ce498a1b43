"""Docker containers of admitd driven from the host, for scripts/check_image.py.

``Run`` starts containers and a network and removes exactly those; ``Replica`` talks gRPC,
health and /metrics to one container through ports published on 127.0.0.1; ``ChartPod`` reads
a rendered Helm chart and turns its admitd container into ``docker run`` flags (user,
security context, Secret environment, volumes, ports), so a container runs as the chart runs a
pod; ``ConfigFolder`` lays out and updates a ConfigMap volume as the kubelet does.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc

from admitd.v1 import admission_pb2 as pb
from admitd.v1 import admission_pb2_grpc as pb_grpc

DOCKER = os.environ.get("DOCKER", "docker")
START_WITHIN = 60.0  # seconds from docker run to SERVING, on a loaded 2-core machine
Manifest = dict[str, Any]


class CheckFailed(Exception):
    """A property of the image that did not hold; the message says which."""


def check(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


def docker(*args: str, timeout: float = 120) -> str:
    done = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise CheckFailed(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def until(condition: Callable[[], bool], within: float, what: str) -> float:
    """Wait for ``condition`` (a look at real containers), return the seconds it took."""
    start = time.monotonic()
    while not condition():
        check(time.monotonic() - start < within, f"not within {within:.0f} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - start


@dataclass
class Run:
    """What this run created, so that close() removes exactly that."""

    prefix: str = field(default_factory=lambda: f"admitd-check-{uuid.uuid4().hex[:8]}")
    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)

    def start(self, name: str, image: str, *flags: str, args: tuple[str, ...] = ()) -> str:
        container = f"{self.prefix}-{name}"
        self.containers.append(container)
        docker("run", "--detach", "--name", container, *flags, image, *args)
        return container

    def network(self) -> str:
        self.networks.append(self.prefix)
        docker("network", "create", self.prefix)
        return self.prefix

    def print_logs(self) -> None:
        for container in self.containers:
            done = subprocess.run(
                [DOCKER, "logs", "--tail", "40", container],
                capture_output=True,
                text=True,
                check=False,
            )
            print(f"--- {container}\n{done.stdout}{done.stderr}", file=sys.stderr)

    def close(self) -> None:
        for container in self.containers:
            subprocess.run([DOCKER, "rm", "--force", container], capture_output=True, check=False)
        for network in self.networks:
            subprocess.run([DOCKER, "network", "rm", network], capture_output=True, check=False)


class Replica:
    """One running admitd container, reached from the host through its published ports."""

    def __init__(self, container: str, grpc_port: int, metrics_port: int) -> None:
        self.container = container
        self.target = f"127.0.0.1:{self._published(grpc_port)}"
        self.metrics_url = f"http://127.0.0.1:{self._published(metrics_port)}/metrics"
        channel = grpc.insecure_channel(self.target)
        self.admission = pb_grpc.AdmissionStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)

    def _published(self, port: int) -> str:
        return docker("port", self.container, f"{port}/tcp").splitlines()[0].rsplit(":", 1)[1]

    def status(self, service: str = "") -> int | None:
        try:
            request = health_pb2.HealthCheckRequest(service=service)
            # The grpc health stubs' types omit the methods.
            response = self.health.Check(request, timeout=1)  # type: ignore[attr-defined]
            return int(response.status)
        except grpc.RpcError:
            return None

    def wait_status(self, want: int, service: str = "", within: float = START_WITHIN) -> float:
        def reached() -> bool:
            if self.status(service) == want:
                return True
            state = docker("inspect", "--format", "{{.State.Status}}", self.container)
            check(state == "running", f"{self.container} is {state}")
            return False

        name = health_pb2.HealthCheckResponse.ServingStatus.Name(want)
        return until(reached, within, f"{self.container} health {service!r} {name}")

    def acquire(self, pool: str, wait: float = 0.0, **fields: Any) -> pb.Lease:
        timeout = Duration(seconds=int(wait), nanos=int(wait % 1 * 1e9))
        request = pb.AcquireRequest(pool=pool, wait_timeout=timeout, **fields)
        lease: pb.Lease = self.admission.Acquire(request, timeout=wait + 10)
        return lease

    def release(self, lease: pb.Lease) -> pb.ReleaseResponse:
        request = pb.ReleaseRequest(lease_id=lease.lease_id)
        response: pb.ReleaseResponse = self.admission.Release(request, timeout=10)
        return response

    def pool(self, name: str) -> pb.PoolStatus:
        status = self.admission.GetStatus(pb.GetStatusRequest(), timeout=10)
        (pool,) = [p for p in status.pools if p.name == name]
        return pool

    def scrape(self) -> list[str]:
        """The sample lines of /metrics."""
        text: str = urllib.request.urlopen(self.metrics_url, timeout=5).read().decode()
        return [line for line in text.splitlines() if line and not line.startswith("#")]

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples that carry these labels (0 when there are none)."""
        total = 0.0
        for line in self.scrape():
            sample, _, value = line.rpartition(" ")
            if sample.split("{")[0] == name and all(
                f'{k}="{v}"' in sample for k, v in labels.items()
            ):
                total += float(value)
        return total


def rejected(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    raise CheckFailed("the call succeeded, but it had to be refused")


@dataclass(frozen=True)
class ChartPod:
    """The admitd container of a rendered chart, and how docker runs it the same way."""

    args: list[str]
    user: str
    ports: dict[str, int]
    probes: list[tuple[int, str]]
    config_dir: str
    config: str
    flags: list[str]

    @classmethod
    def read(cls, path: Path) -> ChartPod:
        docs: list[Manifest] = [d for d in yaml.safe_load_all(path.read_text()) if d]
        (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        user = f"{context['runAsUser']}:{context['runAsGroup']}"
        flags = ["--user", user, "--cap-drop", *context["capabilities"]["drop"]]
        check(context["readOnlyRootFilesystem"] is True, "the chart's root filesystem is writable")
        flags.append("--read-only")
        if context.get("allowPrivilegeEscalation") is False:
            flags += ["--security-opt", "no-new-privileges"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        config_dir = ""
        for mount in container["volumeMounts"]:
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                check(mount.get("readOnly") is True, "the config folder is mounted writable")
                config_dir = mount["mountPath"]
            elif "emptyDir" in volume:
                size = volume["emptyDir"].get("sizeLimit", "64Mi").replace("Mi", "m")
                # An emptyDir is writable by every user, as a tmpfs with mode 1777.
                flags += ["--tmpfs", f"{mount['mountPath']}:size={size},mode=1777"]
            else:
                raise CheckFailed(f"volume {mount['name']}: not a ConfigMap or an emptyDir")
        secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
        for env in container.get("env", []):
            if "valueFrom" in env:
                ref = env["valueFrom"]["secretKeyRef"]
                secret = secrets[ref["name"]]
                value = secret.get("stringData", {}).get(ref["key"])
                if value is None:
                    value = base64.b64decode(secret["data"][ref["key"]]).decode()
            else:
                value = env["value"]
            flags += ["--env", f"{env['name']}={value}"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for port in ports.values():
            flags += ["--publish", f"127.0.0.1::{port}"]
        probes = [
            (container[p]["grpc"]["port"], container[p]["grpc"].get("service", ""))
            for p in ("readinessProbe", "livenessProbe")
        ]
        (config_map,) = [d for d in docs if d["kind"] == "ConfigMap" and "admitd.yaml" in d["data"]]
        return cls(
            container["args"],
            user,
            ports,
            probes,
            config_dir,
            config_map["data"]["admitd.yaml"],
            flags,
        )

    def replica(self, container: str) -> Replica:
        return Replica(container, self.ports["grpc"], self.ports["metrics"])


class ConfigFolder:
    """A folder laid out as the kubelet lays out a ConfigMap volume, and updated the same way.

    ``admitd.yaml -> ..data/admitd.yaml`` and ``..data -> ..<timestamp>``: an update writes a
    new timestamped folder, then renames a new ``..data`` link over the old one (atomic).
    """

    def __init__(self, root: Path, text: str) -> None:
        self.root = root
        self.generation = 0
        root.mkdir(mode=0o755)
        self.write(text)
        (root / "admitd.yaml").symlink_to("..data/admitd.yaml")

    def write(self, text: str) -> None:
        self.generation += 1
        version = self.root / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{self.generation}"
        version.mkdir(mode=0o755)
        (version / "admitd.yaml").write_text(text)
        (version / "admitd.yaml").chmod(0o644)
        link = self.root / "..data_tmp"
        link.symlink_to(version.name)
        link.rename(self.root / "..data")
