"""The overload probe: this replica times an Acquire to itself, for the gate (``_overload``).

gRPC core keeps calls the event loop has not taken yet in a queue of its own, one per
method, out of Python's sight; past capacity that queue grows until callers time out. The
probe's Acquire waits in the same queue as every other Acquire and is answered at once
(an empty lease, nothing reserved), so its round trip is the wait a new call has here.
It is sent every ``overload.probe_interval`` (real time) while ``max_queue_delay`` is set.

With TLS, the probe uses a port of its own on 127.0.0.1 with gRPC's local credentials
(which accept only connections from this host); it serves the same services, and every
call there is authenticated like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import grpc

from .._config import Settings
from .._overload import Gate
from ..v1 import admission_pb2 as pb

ACQUIRE = "/admitd.v1.Admission/Acquire"
# A probe that takes longer than this is abandoned (and counted as having waited so long).
PROBE_DEADLINE = 30.0
LOCAL_PORT = "127.0.0.1:0"
_LOCAL = grpc.LocalConnectionType.LOCAL_TCP


class Probe:
    def __init__(self, gate: Gate, settings: Callable[[], Settings]) -> None:
        self._gate = gate
        self._settings = settings
        self._task: asyncio.Task[None] | None = None

    def bind(self, server: grpc.aio.Server, port: int, tls: bool) -> str:
        """Where the probe calls: the server's own port, or with TLS a local one."""
        if tls:
            port = server.add_secure_port(LOCAL_PORT, grpc.local_server_credentials(_LOCAL))
        return f"127.0.0.1:{port}"

    def start(self, target: str, tls: bool) -> None:
        self._task = asyncio.ensure_future(self._run(target, tls))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, target: str, tls: bool) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]
        channel = (
            grpc.aio.secure_channel(target, grpc.local_channel_credentials(_LOCAL), options)
            if tls
            else grpc.aio.insecure_channel(target, options)
        )
        acquire = channel.unary_unary(
            ACQUIRE,
            request_serializer=pb.AcquireRequest.SerializeToString,
            response_deserializer=pb.Lease.FromString,
        )
        request = pb.AcquireRequest(pool=self._gate.probe_pool)
        try:
            while True:
                overload = self._settings().overload
                if overload.max_queue_delay is not None:
                    self._gate.probe_sent(time.monotonic())
                    # Whatever the answer (an error too: the server stopping), it came
                    # back after this long.
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await acquire(request, timeout=PROBE_DEADLINE)
                    self._gate.probe_answered(time.monotonic())
                await asyncio.sleep(overload.probe_interval)  # real time: it measures load
        finally:
            await channel.close()
