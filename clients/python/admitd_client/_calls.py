"""The client's options, and ``Caller.rpc``: the one path every unary RPC takes.

``rpc`` sets the deadline and metadata of each attempt and retries with jittered backoff;
``open_stream`` is its streaming twin; both retry through ``retry_or_raise``, and every
failure leaves them as an ``AdmitdError`` (``_status``).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import grpc
from google.protobuf.message import Message

from ._effects import Call, Method, Open, Plan, Read, Sleep, Stream, StreamMethod
from ._status import from_rpc_error
from ._tokens import DEFAULT_ENCODING

log = logging.getLogger("admitd_client")

OnUnavailable = Literal["fail_closed", "fail_open"]


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of RPCs that failed with UNAVAILABLE, with capped exponential backoff.

    The delay before retry ``n`` (1-based) is uniformly random in ``[0, cap]`` with
    ``cap = min(max_backoff, initial_backoff * multiplier ** (n - 1))`` ("full jitter", as
    gRPC's own retry policy does), so clients that lost admitd together do not come back
    in lockstep.

    Attributes:
        max_attempts: Attempts in all, including the first (1 disables retries).
        initial_backoff: Cap of the first delay, seconds.
        max_backoff: Largest cap, seconds.
        multiplier: Growth of the cap per retry.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must not be negative and multiplier must be >= 1")

    def backoff(self, retry: int, uniform: float) -> float:
        """Delay before retry number ``retry`` (1-based), for ``uniform`` in [0, 1]."""
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return cap * uniform


class ClientOptions(TypedDict, total=False):
    """Keyword arguments both clients take (besides ``target`` and ``sleep``).

    Keys:
        tenant: The tenant calls are made for (a lease may override it).
        metadata: gRPC metadata sent with every RPC (e.g. an auth header).
        timeout: Deadline in seconds of each RPC attempt (default 10); Acquire gets its
            ``wait_timeout`` on top.
        retry: Retries of UNAVAILABLE RPCs (default: 4 attempts, 0.1 s to 2 s backoff).
        on_unavailable: ``"fail_closed"`` (default) raises ``Unavailable`` when admitd
            cannot be reached after the retries; ``"fail_open"`` lets the call run with an
            unadmitted lease (``Lease.admitted`` False, release a no-op) and logs a warning.
        encoding: tiktoken encoding for pools nothing else names (default o200k_base).
        pool_encodings: tiktoken encoding per pool name.
        model_pools: The pool of each model, for leases asked for with ``request=`` (and
            the SDK wrappers); a model not listed goes to ``<provider>/<model>``.
        renew_every: Seconds between background renewals of a ``lease`` block. Default: a
            third of the lease's remaining time, at least 1 s.
        credentials: TLS channel credentials; default an insecure channel.
        channel_options: Extra gRPC channel options.
        wall: Clock for the lease's remaining time (tests pass admitd's own clock).
        random: Source of jitter in [0, 1] (tests pass a constant).
    """

    tenant: str
    metadata: Sequence[tuple[str, str]]
    timeout: float
    retry: RetryPolicy
    on_unavailable: OnUnavailable
    encoding: str
    pool_encodings: Mapping[str, str]
    model_pools: Mapping[str, str]
    renew_every: float | None
    credentials: grpc.ChannelCredentials | None
    channel_options: Sequence[tuple[str, Any]]
    wall: Callable[[], float]
    random: Callable[[], float]


@dataclass
class Caller:
    """The client's options, and the one path every RPC takes (``Core`` adds the plans)."""

    tenant: str = ""
    metadata: Sequence[tuple[str, str]] = ()
    timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    on_unavailable: OnUnavailable = "fail_closed"
    encoding: str = DEFAULT_ENCODING
    pool_encodings: Mapping[str, str] = field(default_factory=dict)
    model_pools: Mapping[str, str] = field(default_factory=dict)
    renew_every: float | None = None
    credentials: grpc.ChannelCredentials | None = None
    channel_options: Sequence[tuple[str, Any]] = ()
    wall: Callable[[], float] = time.time
    random: Callable[[], float] = random.random

    def __post_init__(self) -> None:
        if self.on_unavailable not in ("fail_closed", "fail_open"):
            policy = self.on_unavailable
            raise ValueError(f"on_unavailable: fail_closed or fail_open, not {policy!r}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")
        self.metadata = tuple(self.metadata)

    def rpc(self, method: Method, request: Message, timeout: float) -> Plan[Any]:
        """Call ``method``: deadline, metadata, retries; failures become AdmitdError."""
        attempt = 1
        while True:
            try:
                return (yield Call(method, request, timeout, tuple(self.metadata)))
            except grpc.RpcError as raw:
                yield from self.retry_or_raise(method, raw, attempt)
            attempt += 1

    def open_stream(
        self, method: StreamMethod, request: Message, timeout: float
    ) -> Plan[tuple[Stream, Any]]:
        """Start a server stream and read its first message (None: it ended at once).

        Retried like ``rpc`` until the first message arrives, never after: by then the
        caller has a place in the queue, which another attempt would not keep.
        """
        attempt = 1
        while True:
            stream: Stream | None = None
            try:
                stream = yield Open(method, request, timeout, tuple(self.metadata))
                return stream, (yield Read(stream))
            except grpc.RpcError as raw:
                yield from self.retry_or_raise(method, raw, attempt)
            except BaseException:
                if stream is not None:
                    stream.cancel()
                raise
            attempt += 1

    def read(self, stream: Stream) -> Plan[Any]:
        """The stream's next message (None at its end); a failure becomes AdmitdError."""
        try:
            return (yield Read(stream))
        except grpc.RpcError as raw:
            raise from_rpc_error(raw) from raw

    def retry_or_raise(self, method: str, raw: grpc.RpcError, attempt: int) -> Plan[None]:
        """After failed attempt ``attempt``: raise it as AdmitdError, or back off to retry."""
        error = from_rpc_error(raw)
        if not error.retryable or attempt >= self.retry.max_attempts:
            raise error from raw
        delay = self.retry.backoff(attempt, self.random())
        log.debug("admitd %s unavailable, retry %d in %.3fs", method, attempt, delay)
        yield Sleep(delay)
