"""The gRPC server: Admission, health checking and reflection, with a graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha._async import ReflectionServicer

from .._backends import Backend, make_backend
from .._clock import Clock, SystemClock
from .._config import Settings
from .._engine import Engine
from .._errors import Unavailable
from .._overload import Gate
from .._telemetry import Telemetry
from .._tokens import TokenCounter
from ..v1 import admission_pb2
from .envoy import RATE_LIMIT_SERVICE, RateLimitService
from .probe import Probe
from .registry import register
from .service import AdmissionService
from .tls import CertificateFiles
from .watch import ConfigWatcher

log = logging.getLogger("admitd")

SERVICE_NAME = admission_pb2.DESCRIPTOR.services_by_name["Admission"].full_name
HEALTH = descriptor_pool.Default().FindServiceByName(health.SERVICE_NAME)
REFLECTION = descriptor_pool.Default().FindServiceByName(reflection.SERVICE_NAME)
# Readiness: the whole server (""), Admission, and Envoy's rate limit service on the same port.
READINESS = ("", SERVICE_NAME, RATE_LIMIT_SERVICE.full_name)
# For liveness probes: SERVING while the process runs and answers, whatever the store does.
# Readiness follows the store ("" and the Admission service); restarting a replica because
# Redis is down would only add a cold start to the outage.
LIVENESS = "admitd.liveness"
# The largest request accepted: a prompt at its limit (2M characters, at most 4 UTF-8 bytes
# each) plus every other field at its limit fits; anything larger is refused by gRPC before
# it is read into memory.
MAX_REQUEST_BYTES = 9 * 1024 * 1024
# gRPC core keeps calls the event loop has not taken yet in a queue per method, and past
# 1,000 of them (all past 3,000) it drops new ones, which callers see as CANCELLED. admitd
# refuses past capacity itself, explicitly (the overload gate), so core never sheds.
MAX_PENDING = 1 << 30
SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),  # a second server must fail to bind a busy port, not share it
    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
    ("grpc.server.max_pending_requests", MAX_PENDING),
    ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING),
]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class AdmitdServer:
    """One admitd process. ``start`` binds and serves; ``stop`` drains and shuts down."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        backend: Backend | None = None,
        counter: TokenCounter | None = None,
        config_path: str | None = None,
    ) -> None:
        self.settings = settings
        injected = clock is not None
        clock = clock or SystemClock()
        backend = backend or make_backend(settings, clock, test_clock=injected)
        self.telemetry = Telemetry(settings)
        self.engine = Engine(settings, backend, clock, counter, self.telemetry)
        self.watcher = ConfigWatcher(config_path, self.engine) if config_path else None
        self.gate = Gate(
            lambda: self.engine.settings, self.telemetry.overloaded, self.telemetry.queue_delay
        )
        self.probe = Probe(self.gate, lambda: self.engine.settings)
        self.health = HealthServicer()
        self._server = grpc.aio.server(options=SERVER_OPTIONS)
        admission = AdmissionService(self.engine, self.gate)
        register(admission, self._server)
        # The same credentials as Admission (Envoy sends its key as initial_metadata).
        envoy = RateLimitService(self.engine, admission._caller)
        register(envoy, self._server, RATE_LIMIT_SERVICE)
        # Health and reflection by ``register`` too: none of their methods registered (see there).
        register(self.health, self._server, HEALTH, lenient=False)
        listed = (
            SERVICE_NAME,
            RATE_LIMIT_SERVICE.full_name,
            HEALTH.full_name,
            REFLECTION.full_name,
        )
        register(ReflectionServicer(listed), self._server, REFLECTION, lenient=False)
        # Plaintext and health only: for probes that cannot speak TLS (Kubernetes gRPC).
        self._health_server: grpc.aio.Server | None = None
        if settings.health_listen is not None:
            self._health_server = grpc.aio.server(options=SERVER_OPTIONS)
            register(self.health, self._health_server, HEALTH, lenient=False)
        self.port = 0
        self.health_port = 0
        self._stopped = asyncio.Event()
        self._monitor: asyncio.Future[None] | None = None

    async def start(self, listen: str | None = None) -> int:
        """Bind ``listen`` (default: the config's), start serving and return the port."""
        address = listen or self.settings.listen
        tls = self.settings.tls
        credentials = CertificateFiles(tls).credentials() if tls is not None else None
        # grpc's health servicer starts out SERVING: say NOT_SERVING until the store answers.
        for service in READINESS:
            await self.health.set(service, NOT_SERVING)
        self.port = _bind(self._server, address, credentials)
        probe_target = self.probe.bind(self._server, self.port, tls=tls is not None)
        if self._health_server is not None and self.settings.health_listen is not None:
            self.health_port = _bind(self._health_server, self.settings.health_listen, None)
            await self._health_server.start()
        await self._server.start()
        self.probe.start(probe_target, tls=tls is not None)
        metrics = self.settings.observability.metrics_listen
        if metrics:
            self.telemetry.serve(metrics)
        await self.engine.start()
        await self.health.set(LIVENESS, SERVING)
        await self.check_store()
        self._monitor = asyncio.ensure_future(self._watch())
        log.info("admitd serving", extra={"listen": address, "port": self.port})
        return self.port

    async def check_store(self) -> bool:
        """Readiness follows the store: SERVING only while it answers (and not draining)."""
        try:
            await self.engine.ping()
            ok = True
        except Unavailable as error:
            log.warning("not ready: %s", error.message)  # "state store unreachable: ..."
            ok = False
            # It may come back empty (a restarted Redis keeps nothing): publish again then.
            self.engine.limits_published = False
        # fail_open keeps admitting (unchecked) without the store, so it stays SERVING.
        serving = ok or self.settings.backend.on_store_error == "fail_open"
        if not self._stopped.is_set():
            for service in READINESS:
                await self.health.set(service, SERVING if serving else NOT_SERVING)
        return ok

    async def _watch(
        self, interval: float = 1.0, snapshot_every: int = 5, publish_every: int = 30
    ) -> None:
        for tick in itertools.count(1):
            await asyncio.sleep(interval)  # real time: probes, not admission logic
            await self.housekeeping(
                snapshot=tick % snapshot_every == 0, publish=tick % publish_every == 0
            )

    async def housekeeping(self, *, snapshot: bool = False, publish: bool = False) -> None:
        """What the server does every second: health follows the store; a store that was
        down (at start, during a config change, or restarted empty between two looks)
        gets this replica's limits and gates once it answers, and every half minute
        anyway (``publish``); the config file is looked at; gauges follow a snapshot."""
        if not await self.check_store():
            return
        with contextlib.suppress(Unavailable):
            if publish or not self.engine.limits_published:
                await self.engine.publish_limits()
            if snapshot:
                await self.engine.snapshot()
            if self.watcher is not None:
                await self.watcher.check()

    async def drain(self) -> None:
        """Health NOT_SERVING, Acquire UNAVAILABLE (waiters too); Release/Renew still work."""
        await self.health.enter_graceful_shutdown()
        self.engine.drain()

    async def stop(self, grace: float | None = None, *, delay: float = 0.0) -> None:
        """Drain, keep the port open ``delay`` seconds, then let in-flight RPCs finish."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._monitor is not None:
            self._monitor.cancel()
        await self.probe.stop()
        await self.drain()
        if delay:
            await asyncio.sleep(delay)  # real time: load balancers react in real time
        grace = self.settings.shutdown_grace if grace is None else grace
        await self._server.stop(grace)
        if self._health_server is not None:
            await self._health_server.stop(0)
        await self.engine.close()
        self.telemetry.close()

    async def wait(self) -> None:
        await self._server.wait_for_termination()


def _bind(server: grpc.aio.Server, address: str, tls: grpc.ServerCredentials | None) -> int:
    try:
        if tls is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, tls)
    except RuntimeError as error:  # grpc's way of saying the address is busy or bad
        raise OSError(f"cannot listen on {address}: {error}") from None


async def serve(
    settings: Settings, listen: str | None = None, config_path: str | None = None
) -> None:
    """Run until SIGTERM or SIGINT, then drain gracefully. ``config_path`` is watched."""
    server = AdmitdServer(settings, config_path=config_path)
    await server.start(listen)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"admitd listening on {listen or settings.listen} (port {server.port})", flush=True)
    await stop.wait()
    log.info("admitd draining", extra={"drain_delay": settings.drain_delay})
    await server.stop(delay=settings.drain_delay)
