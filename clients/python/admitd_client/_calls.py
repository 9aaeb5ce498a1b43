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
from ._errors import AdmitdError, Reason, Rejected
from ._status import from_rpc_error
from ._tokens import DEFAULT_ENCODING
from ._version import USER_AGENT

log = logging.getLogger("admitd_client")

OnUnavailable = Literal["fail_closed", "fail_open"]

# The shortest attempt worth making: an RPC's last attempt gets at least this long.
MIN_ATTEMPT = 0.05
# A refusal for load (SERVER_OVERLOADED) is retried after its hint plus up to this share
# of it, so the callers one overloaded replica turned away do not come back together.
OVERLOAD_JITTER = 0.5


# gRPC's channel reconnects after a lost connection with a backoff of its own (1 s, growing
# 1.6x to 120 s by default); a replica restart takes well under a second, so the client's
# channels come back within a second of it (a channel passed in keeps its own settings).
RECONNECT_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


def overload_hint(error: AdmitdError) -> float | None:
    """Seconds to wait before retrying a call a replica refused for load (SERVER_OVERLOADED:
    it reserved nothing); None for any other error."""
    if isinstance(error, Rejected) and error.reason is Reason.SERVER_OVERLOADED:
        return error.retry_after or 0.0
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of RPCs that admitd did not answer, with capped exponential backoff.

    An RPC failing with UNAVAILABLE (no connection, or a draining replica) or CANCELLED
    (cancelled by the server side, e.g. a replica shutting down: a caller's own
    cancellation is never an RPC error), or refused SERVER_OVERLOADED (after the replica's
    hint, jittered, instead of the backoff below), is retried until its deadline: Acquire's is the
    caller's (``timeout`` + ``wait_timeout``), Release's the lease's expiry (Release is
    idempotent, and until then an unreleased lease holds its slot), every other RPC's its
    ``timeout``. An attempt that ran out of time (DEADLINE_EXCEEDED) is retried while the
    RPC's deadline is not spent. The delay before retry ``n`` (1-based) is uniformly random
    in ``[0, cap]`` with ``cap = min(max_backoff, initial_backoff * multiplier ** (n - 1))``
    ("full jitter", as gRPC's own retry policy does), so clients that lost admitd together
    do not come back in lockstep; ``max_backoff`` is near the time gRPC takes to reconnect.

    Attributes:
        max_attempts: Attempts in all, including the first (1 disables retries); None:
            as many as the RPC's deadline allows.
        initial_backoff: Cap of the first delay, seconds.
        max_backoff: Largest cap, seconds.
        multiplier: Growth of the cap per retry.
    """

    max_attempts: int | None = None
    initial_backoff: float = 0.1
    max_backoff: float = 1.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must not be negative and multiplier must be >= 1")

    def backoff(self, retry: int, uniform: float) -> float:
        """Delay before retry number ``retry`` (1-based), for ``uniform`` in [0, 1]."""
        growth = self.multiplier ** min(retry - 1, 64)  # bounded: retries may be many
        cap = min(self.max_backoff, self.initial_backoff * growth)
        return cap * uniform


class ClientOptions(TypedDict, total=False):
    """Keyword arguments both clients take (besides ``target`` and ``sleep``).

    Keys:
        tenant: The tenant calls are made for (a lease may override it).
        metadata: gRPC metadata sent with every RPC (e.g. an auth header).
        timeout: Deadline in seconds of each RPC attempt (default 10); Acquire gets its
            ``wait_timeout`` on top.
        retry: Retries of RPCs admitd did not answer (default: until the RPC's deadline,
            0.1 s to 1 s backoff; see ``RetryPolicy``).
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

    def channel_args(self) -> list[tuple[str, Any]]:
        """Options of a channel the client opens: user agent, reconnect backoff, the user's."""
        own = {name for name, _ in self.channel_options}
        defaults = [option for option in RECONNECT_OPTIONS if option[0] not in own]
        return [("grpc.primary_user_agent", USER_AGENT), *defaults, *self.channel_options]

    def rpc(
        self, method: Method, request: Message, timeout: float, budget: float | None = None
    ) -> Plan[Any]:
        """Call ``method``: deadline, metadata, retries; failures become AdmitdError.

        Each attempt gets ``timeout``, cut to what is left of ``budget`` (default:
        ``timeout``), the time all attempts together may take.
        """
        deadline = self.wall() + max(budget or 0.0, timeout)
        attempt, each = 1, timeout
        while True:
            try:
                return (yield Call(method, request, each, tuple(self.metadata)))
            except grpc.RpcError as raw:
                yield from self.retry_or_raise(method, raw, attempt, deadline)
            attempt, each = attempt + 1, min(timeout, max(deadline - self.wall(), MIN_ATTEMPT))

    def open_stream(
        self, method: StreamMethod, request: Message, timeout: float
    ) -> Plan[tuple[Stream, Any]]:
        """Start a server stream and read its first message (None: it ended at once).

        Retried like ``rpc`` until the first message arrives, never after: by then the
        caller has a place in the queue, which another attempt would not keep.
        """
        deadline = self.wall() + timeout
        attempt, each = 1, timeout
        while True:
            stream: Stream | None = None
            try:
                stream = yield Open(method, request, each, tuple(self.metadata))
                return stream, (yield Read(stream))
            except grpc.RpcError as raw:
                yield from self.retry_or_raise(method, raw, attempt, deadline)
            except BaseException:
                if stream is not None:
                    stream.cancel()
                raise
            attempt, each = attempt + 1, max(deadline - self.wall(), MIN_ATTEMPT)

    def read(self, stream: Stream) -> Plan[Any]:
        """The stream's next message (None at its end); a failure becomes AdmitdError."""
        try:
            return (yield Read(stream))
        except grpc.RpcError as raw:
            raise from_rpc_error(raw) from raw

    def retry_or_raise(
        self, method: str, raw: grpc.RpcError, attempt: int, deadline: float
    ) -> Plan[None]:
        """After failed attempt ``attempt``: raise it as AdmitdError, or back off to retry
        (while ``deadline``, the RPC's, leaves time for another attempt)."""
        error = from_rpc_error(raw)
        hint = overload_hint(error)
        retryable = error.retryable or error.code is grpc.StatusCode.DEADLINE_EXCEEDED
        most = self.retry.max_attempts
        if not (retryable or hint is not None) or (most is not None and attempt >= most):
            raise error from raw
        if hint is not None:  # not before the replica's hint; jittered after it
            delay = hint * (1 + OVERLOAD_JITTER * self.random())
        else:
            delay = self.retry.backoff(attempt, self.random())
        if self.wall() + delay + MIN_ATTEMPT > deadline:
            raise error from raw
        code = error.code.name
        log.debug("admitd %s failed (%s), retry %d in %.3fs", method, code, attempt, delay)
        yield Sleep(delay)
