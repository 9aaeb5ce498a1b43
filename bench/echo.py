"""A no-op Admission server on the same stack (grpc.aio on uvloop, admitd's default event
loop; same proto, same messages, same server options): the ceiling that admitd's own
throughput is divided by. ``python -m bench.echo``.

``python -m bench.echo --park``: every Acquire is held open instead, its handler awaiting a
future that is never set, and GetStatus says how many are (as pool ``blocked``'s queue):
the floor of what one held-open Acquire can cost on this stack, which admitd's own waiters
are measured against (the scale scenario)."""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc
import uvloop

from admitd_client._proto import admission_pb2 as pb

SERVICE = "admitd.v1.Admission"


def handler(*, park: bool = False) -> grpc.GenericRpcHandler:
    """Acquire and Release, answered at once with fixed, realistically sized messages; the
    requests are decoded and the answers encoded as for admitd. The other RPCs are
    UNIMPLEMENTED: the bench calls only these two."""
    lease = pb.Lease(
        lease_id="0" * 32, tenant="default", pool="default", reserved_tokens=20, input_tokens=10
    )
    lease.expires_at.FromSeconds(2_000_000_000)
    released = pb.ReleaseResponse(charged_tokens=20)
    parked = 0
    never: asyncio.Future[None] | None = None

    async def acquire(
        request: pb.AcquireRequest, context: grpc.aio.ServicerContext[pb.AcquireRequest, pb.Lease]
    ) -> pb.Lease:
        nonlocal parked, never
        if not park:
            return lease
        if never is None:
            never = asyncio.get_running_loop().create_future()
        parked += 1
        try:
            await never  # until the caller leaves (its RPC is cancelled)
        finally:
            parked -= 1
        return lease

    async def status(
        request: pb.GetStatusRequest,
        context: grpc.aio.ServicerContext[pb.GetStatusRequest, pb.StatusResponse],
    ) -> pb.StatusResponse:
        return pb.StatusResponse(pools=[pb.PoolStatus(name="blocked", queued=parked)])

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
            "GetStatus": grpc.unary_unary_rpc_method_handler(
                status,
                request_deserializer=pb.GetStatusRequest.FromString,
                response_serializer=pb.StatusResponse.SerializeToString,
            ),
        },
    )


async def main(*, park: bool = False) -> None:
    # admitd's own options (admitd._api.server.SERVER_OPTIONS), without importing the server.
    pending = 1 << 30  # admitd's too: gRPC core never sheds calls (CANCELLED)
    options = [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", 9 * 1024 * 1024),
        ("grpc.server.max_pending_requests", pending),
        ("grpc.server.max_pending_requests_hard_limit", pending),
    ]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((handler(park=park),))
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
        runner.run(main(park="--park" in sys.argv[1:]))
