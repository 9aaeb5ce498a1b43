"""gRPC errors -> the client's exceptions, with admitd's rich status details decoded.

admitd sends ``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer. Its details
are ``Any`` messages; they are matched on ``type_url`` and parsed with the client's own
wire-compatible copies of the google.rpc messages (``_proto/rpc_status_pb2``; the .proto
says why), so googleapis-common-protos is not a dependency.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from ._errors import AdmitdError, LeaseEnded, Reason, Rejected, Unavailable
from ._proto import rpc_status_pb2 as rpc

DETAILS_KEY = "grpc-status-details-bin"
_TYPE_PREFIX = "google.rpc."

M = TypeVar("M", rpc.ErrorInfo, rpc.RetryInfo, rpc.BadRequest)

# No answer from admitd: fail-open applies to all three. UNAVAILABLE and CANCELLED (which the
# server side caused: a caller's own cancellation is not an RPC error) are retried; a spent
# deadline only while the RPC's own deadline is not (``Caller.retry_or_raise``).
_UNREACHABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}
# A refusal with a reason: a limit (RESOURCE_EXHAUSTED), or a dedup follower that gets no
# result (ABORTED: its leader failed, or it did not wait).
_REFUSALS = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}


def from_rpc_error(error: grpc.RpcError) -> AdmitdError:
    """Translate a failed RPC (sync or grpc.aio) into the matching client exception."""
    if not isinstance(error, grpc.Call | grpc.aio.AioRpcError):
        # grpc raises bare RpcErrors only for local failures, e.g. a closed channel.
        return Unavailable(grpc.StatusCode.UNAVAILABLE, str(error) or type(error).__name__)
    code = error.code()
    message = error.details() or ""
    status = _details(error.trailing_metadata())
    if code in _UNREACHABLE:
        return Unavailable(code, message)
    info = _first(status, "ErrorInfo", rpc.ErrorInfo)
    if code in _REFUSALS and info is not None:
        retry = _first(status, "RetryInfo", rpc.RetryInfo)
        retry_after = None
        if retry is not None:
            delay = retry.retry_delay
            retry_after = delay.seconds + delay.nanos / 1e9
        return Rejected(
            message,
            reason=Reason(info.reason),
            retry_after=retry_after,
            metadata=info.metadata,
            code=code,
        )
    if code is grpc.StatusCode.NOT_FOUND and info is not None:  # a lease that ended
        return LeaseEnded(message, reason=Reason(info.reason), metadata=info.metadata)
    bad = _first(status, "BadRequest", rpc.BadRequest)
    violations = {v.field: v.description for v in bad.field_violations} if bad else {}
    return AdmitdError(code, message, field_violations=violations)


def _details(trailing: Iterable[Any] | None) -> rpc.Status | None:
    for key, value in trailing or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            try:
                return rpc.Status.FromString(value)
            except DecodeError:
                return None  # a corrupt trailer must not hide the status code itself
    return None


def _first(status: rpc.Status | None, name: str, kind: type[M]) -> M | None:
    for detail in status.details if status is not None else ():
        if detail.type_url.rpartition("/")[2] == _TYPE_PREFIX + name:
            try:
                return kind.FromString(detail.value)
            except DecodeError:
                return None
    return None
