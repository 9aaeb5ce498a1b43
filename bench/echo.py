"""A no-op Admission server on the same stack (grpc.aio, same proto, same messages, same
server options): the ceiling that admitd's own throughput is divided by.
``python -m bench.echo``."""

from __future__ import annotations

import asyncio
import signal

import grpc

from admitd_client._proto import admission_pb2 as pb
from admitd_client._proto import admission_pb2_grpc as pb_grpc


class EchoAdmission(pb_grpc.AdmissionServicer):
    """Answers Acquire and Release at once with fixed, realistically sized messages."""

    def __init__(self) -> None:
        self._lease = pb.Lease(
            lease_id="0" * 32,
            tenant="default",
            pool="default",
            reserved_tokens=20,
            input_tokens=10,
        )
        self._lease.expires_at.FromSeconds(2_000_000_000)
        self._released = pb.ReleaseResponse(charged_tokens=20)

    async def Acquire(self, request: pb.AcquireRequest, context: object) -> pb.Lease:  # noqa: N802
        return self._lease

    async def Release(  # noqa: N802
        self, request: pb.ReleaseRequest, context: object
    ) -> pb.ReleaseResponse:
        return self._released


async def main() -> None:
    # admitd's own options (admitd._server.SERVER_OPTIONS), without importing the server.
    options = [("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 9 * 1024 * 1024)]
    server = grpc.aio.server(options=options)
    pb_grpc.add_AdmissionServicer_to_server(EchoAdmission(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"echo listening on 127.0.0.1 (port {port})", flush=True)
    await stop.wait()
    await server.stop(0.5)


if __name__ == "__main__":
    asyncio.run(main())
