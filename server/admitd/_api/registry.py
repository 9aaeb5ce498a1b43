"""How admitd's services are served by grpc.aio: ``register`` (the generated
``add_..._to_server`` with two differences, see there), and the request payloads that do not
decode, handed to the handler to refuse."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from .. import _requests as requests
from ..v1 import admission_pb2 as pb


class Undecodable:
    """A request payload that is not a message of its type; the handler refuses it."""

    def __init__(self, kind: str, error: str) -> None:
        self.error = requests.undecodable(kind, error)


def _lenient(kind: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    def deserialize(payload: bytes) -> Message | Undecodable:
        try:
            return kind.FromString(payload)
        except DecodeError as error:
            return Undecodable(kind.DESCRIPTOR.full_name, str(error))

    return deserialize


ADMISSION = pb.DESCRIPTOR.services_by_name["Admission"]
# The methods registered with gRPC core (see ``register``): the two every admitted call
# makes, and Envoy's one.
HOT = frozenset(
    (
        f"/{ADMISSION.full_name}/Acquire",
        f"/{ADMISSION.full_name}/Release",
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
    )
)
# The four kinds of method (client streaming, server streaming) and their handlers.
_HANDLERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def register(
    service: object,
    server: grpc.aio.Server,
    descriptor: ServiceDescriptor = ADMISSION,
    *,
    lenient: bool = True,
) -> None:
    """Serve ``service``'s methods of ``descriptor`` on ``server``: the generated
    ``add_..._to_server``, with two differences.

    - ``lenient`` (admitd's own services, whose handlers ``_translated`` wraps): a payload
      which does not decode reaches the handler (as ``Undecodable``), so the caller gets
      INVALID_ARGUMENT naming the message instead of grpc's UNKNOWN.
    - Only the methods in ``HOT`` are registered with gRPC core; every method is served by
      the generic handler. A call to a registered method costs less in gRPC (with none
      registered, an Acquire+Release pair took 10-15% more server CPU); but grpc.aio
      (1.85) waits for each registered method's next call in a task of its own, and its
      server loop waits on all those tasks (``asyncio.wait``) again for every call,
      whatever its method. With the 16 methods the generated code registers, that loop
      made ~130 Python calls a pair; with these 3, ~45 (with none, ~36); 6% fewer
      instructions a pair under callgrind."""
    handlers = {}
    for method in descriptor.methods:
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        make = _HANDLERS[method.client_streaming, method.server_streaming]
        handlers[method.name] = make(
            getattr(service, method.name),
            request_deserializer=_lenient(request) if lenient else request.FromString,
            response_serializer=response.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(descriptor.full_name, handlers),)
    )
    hot = {name: h for name, h in handlers.items() if f"/{descriptor.full_name}/{name}" in HOT}
    if hot:
        server.add_registered_method_handlers(descriptor.full_name, hot)
