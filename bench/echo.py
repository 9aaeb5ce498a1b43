"""A no-op Admission server on the same stack (grpc.aio on uvloop, admitd's default event
loop; same proto, same messages, same server options): the ceiling that admitd's own
throughput is divided by. ``python -m bench.echo``."""

from __future__ import annotations

import asyncio
import signal

import grpc
import uvloop

from admitd_client._proto import admission_pb2 as pb

SERVICE = "admitd.v1.Admission"


def handler() -> grpc.GenericRpcHandler:
    """Acquire and Release, answered at once with fixed, realistically sized messages; the
    requests are decoded and the answers encoded as for admitd. The other RPCs are
    UNIMPLEMENTED: the bench calls only these two."""
    lease = pb.Lease(
        lease_id="0" * 32, tenant="default", pool="default", reserved_tokens=20, input_tokens=10
    )
    lease.expires_at.FromSeconds(2_000_000_000)
    released = pb.ReleaseResponse(charged_tokens=20)

    async def acquire(
        request: pb.AcquireRequest, context: grpc.aio.ServicerContext[pb.AcquireRequest, pb.Lease]
    ) -> pb.Lease:
        return lease

    async def release(
        request: pb.ReleaseRequest,
        context: grpc.aio.ServicerContext[pb.ReleaseRequest, pb.ReleaseResponse],
    ) -> pb.ReleaseResponse:
        return released

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Acquire": grpc.unary_unary_rpc_method_handler(
                acquire,
                request_deserializer=pb.AcquireRequest.FromString,
                response_serializer=pb.Lease.SerializeToString,
            ),
            "Release": grpc.unary_unary_rpc_method_handler(
                release,
                request_deserializer=pb.ReleaseRequest.FromString,
                response_serializer=pb.ReleaseResponse.SerializeToString,
            ),
        },
    )


async def main() -> None:
    # admitd's own options (admitd._api.server.SERVER_OPTIONS), without importing the server.
    pending = 1 << 30  # admitd's too: gRPC core never sheds calls (CANCELLED)
    options = [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", 9 * 1024 * 1024),
        ("grpc.server.max_pending_requests", pending),
        ("grpc.server.max_pending_requests_hard_limit", pending),
    ]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((handler(),))
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
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
