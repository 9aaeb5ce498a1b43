"""The gRPC server: Admission, health checking and reflection, with a graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from ._backend import Backend
from ._clock import Clock, SystemClock
from ._config import Settings
from ._engine import Engine
from ._errors import Unavailable
from ._memory import MemoryBackend
from ._reload import ConfigWatcher
from ._service import AdmissionService
from ._telemetry import Telemetry
from ._tokens import TokenCounter
from .v1 import admission_pb2, admission_pb2_grpc

log = logging.getLogger("admitd")

SERVICE_NAME = admission_pb2.DESCRIPTOR.services_by_name["Admission"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def make_backend(settings: Settings, clock: Clock, *, test_clock: bool = False) -> Backend:
    """The configured backend. Redis reads its own TIME unless a test injects its clock."""
    config = settings.backend
    if config.kind == "memory":
        return MemoryBackend(clock, aging=settings.queue.aging)
    from ._redis import RedisBackend, connect

    return RedisBackend(
        connect(config),
        key_prefix=config.key_prefix,
        aging=settings.queue.aging,
        clock=clock if test_clock else None,
    )


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
        self.health = HealthServicer()
        # SO_REUSEPORT off: a second server must fail to bind a busy port, not share it.
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        admission_pb2_grpc.add_AdmissionServicer_to_server(
            AdmissionService(self.engine), self._server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self._server,
        )
        self.port = 0
        self._stopped = asyncio.Event()
        self._monitor: asyncio.Future[None] | None = None

    async def start(self, listen: str | None = None) -> int:
        """Bind ``listen`` (default: the config's), start serving and return the port."""
        address = listen or self.settings.listen
        try:
            self.port = self._server.add_insecure_port(address)
        except RuntimeError as error:  # grpc's way of saying the address is busy or bad
            raise OSError(f"cannot listen on {address}: {error}") from None
        await self._server.start()
        metrics = self.settings.observability.metrics_listen
        if metrics:
            self.telemetry.serve(metrics)
        await self.engine.start()
        await self.check_store()
        self._monitor = asyncio.ensure_future(self._watch())
        log.info("admitd serving", extra={"listen": address, "port": self.port})
        return self.port

    async def check_store(self) -> bool:
        """Health follows the store: SERVING only while it answers (and not draining)."""
        try:
            await self.engine.backend.ping()
            ok = True
        except Unavailable as error:
            log.warning("state store unreachable: %s", error.message)
            ok = False
        # fail_open keeps admitting (unchecked) without the store, so it stays SERVING.
        serving = ok or self.settings.backend.on_store_error == "fail_open"
        if not self._stopped.is_set():
            for service in ("", SERVICE_NAME):
                await self.health.set(service, SERVING if serving else NOT_SERVING)
        return ok

    async def _watch(self, interval: float = 1.0, snapshot_every: int = 5) -> None:
        for tick in itertools.count(1):
            await asyncio.sleep(interval)  # real time: probes, not admission logic
            await self.housekeeping(snapshot=tick % snapshot_every == 0)

    async def housekeeping(self, *, snapshot: bool = False) -> None:
        """What the server does every second: health follows the store; a store that was
        down at start (or during a config change) gets this replica's limits once it
        answers; the config file is looked at; gauges follow a snapshot when asked."""
        if not await self.check_store():
            return
        with contextlib.suppress(Unavailable):
            if not self.engine.limits_published:
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
        await self.drain()
        if delay:
            await asyncio.sleep(delay)  # real time: load balancers react in real time
        await self._server.stop(self.settings.shutdown_grace if grace is None else grace)
        await self.engine.close()
        self.telemetry.close()

    async def wait(self) -> None:
        await self._server.wait_for_termination()


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
