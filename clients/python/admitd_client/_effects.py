"""The effects a plan (``_core``) yields, and each client performs in its own way.

``Call`` and ``Open``/``Read`` are the RPCs, ``Sleep`` waits, ``Offload`` runs blocking
work (in a worker thread under asyncio), ``Invoke`` calls the provider while a lease is
renewed, and ``Emit`` hands a value to the caller: an iterator yields it, a callback
receives it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from google.protobuf.message import Message

from ._lease import Lease

T = TypeVar("T")
Method = Literal[
    "Acquire",
    "Release",
    "Renew",
    "GetStatus",
    "Enqueue",
    "GetTicket",
    "WaitTicket",
    "CancelTicket",
    "GetUsage",
]
StreamMethod = Literal["AcquireStream"]


@dataclass(frozen=True)
class Call:
    """Effect: one RPC attempt. Result: the response message; raises grpc.RpcError."""

    method: Method
    request: Message
    timeout: float
    metadata: tuple[tuple[str, str], ...]


class Stream(Protocol):
    """An open server-streaming call (grpc's sync rendezvous or a grpc.aio call)."""

    def cancel(self) -> bool: ...


@dataclass(frozen=True)
class Open:
    """Effect: start a server-streaming RPC. Result: its ``Stream``."""

    method: StreamMethod
    request: Message
    timeout: float
    metadata: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Read:
    """Effect: the stream's next message, None once it ended; raises grpc.RpcError."""

    stream: Stream


@dataclass(frozen=True)
class Emit:
    """Effect: hand ``value`` to the caller (an iterator yields it; a callback gets it)."""

    value: Any


@dataclass(frozen=True)
class Sleep:
    """Effect: wait this many seconds."""

    seconds: float


@dataclass(frozen=True)
class Offload:
    """Effect: run a blocking function (the async client runs it in a worker thread)."""

    fn: Callable[[], Any]


@dataclass(frozen=True)
class Invoke:
    """Effect: call the provider (``fn()``; awaited by the async client) while ``lease`` is
    renewed in the background. A cancellation (or KeyboardInterrupt) during the call
    releases the lease with outcome CANCELLED before it propagates."""

    fn: Callable[[], Any]
    lease: Lease


Effect = Call | Open | Read | Emit | Sleep | Offload | Invoke
Plan = Generator[Effect, Any, T]


@dataclass(frozen=True)
class Done:
    """What a client's ``_steps`` yields last: the plan's result."""

    value: Any
