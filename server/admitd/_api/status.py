"""Domain errors -> gRPC status, in one place.

Rejections become RESOURCE_EXHAUSTED with ``google.rpc.Status`` details in
``grpc-status-details-bin``: an ``ErrorInfo`` (reason, domain "admitd", metadata) and, when a
retry can succeed, a ``RetryInfo`` with the computed delay. A NOT_FOUND that says what
became of a lease (``LEASE_EXPIRED``, ``LEASE_LOST``) carries an ``ErrorInfo`` with that
reason and its metadata too (``field``, and what an expired lease stands charged).
"""

from __future__ import annotations

import functools

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from .._errors import (
    Aborted,
    AdmitdError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Rejected,
    Unauthenticated,
    Unavailable,
)

DOMAIN = "admitd"

_CODES: list[tuple[type[AdmitdError], int]] = [
    (InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (NotFound, code_pb2.NOT_FOUND),
    (Unauthenticated, code_pb2.UNAUTHENTICATED),
    (PermissionDenied, code_pb2.PERMISSION_DENIED),
    (Unavailable, code_pb2.UNAVAILABLE),
    (Aborted, code_pb2.ABORTED),
    (Rejected, code_pb2.RESOURCE_EXHAUSTED),
    (Internal, code_pb2.INTERNAL),
]


def to_status(error: AdmitdError) -> grpc.Status:
    code = next(c for kind, c in _CODES if isinstance(error, kind))
    if isinstance(error, Rejected):
        metadata = tuple(error.metadata.items())
        return _rejection(code, error.message, error.reason.value, metadata, error.retry_after)
    status = status_pb2.Status(code=code, message=error.message)
    if isinstance(error, NotFound) and error.reason is not None:
        info = error_details_pb2.ErrorInfo(
            reason=error.reason.value,
            domain=DOMAIN,
            metadata={"field": error.field, **error.metadata},
        )
        status.details.append(_pack(info))
    elif isinstance(error, InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=error.message
        )
        status.details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    return rpc_status.to_status(status)


@functools.lru_cache(maxsize=256)
def _rejection(
    code: int,
    message: str,
    reason: str,
    metadata: tuple[tuple[str, str], ...],
    retry_after: float | None,
) -> grpc.Status:
    """A refusal's status, kept by its content: past capacity a replica answers thousands of
    identical SERVER_OVERLOADED refusals a second (the delay they state changes with each
    overload probe), and building the details was a tenth of what refusing costs."""
    status = status_pb2.Status(code=code, message=message)
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=dict(metadata))
    status.details.append(_pack(info))
    if retry_after is not None:
        delay = error_details_pb2.RetryInfo(retry_delay=seconds_to_duration(retry_after))
        status.details.append(_pack(delay))
    return rpc_status.to_status(status)


def seconds_to_duration(seconds: float) -> duration_pb2.Duration:
    # Rounded to whole nanoseconds first: 11.9999999999 is 12 s, not 11 s and 1e9 ns
    # wrapped to 0 (a Redis-computed retry delay comes with such float noise).
    whole, nanos = divmod(round(seconds * 1e9), 1_000_000_000)
    return duration_pb2.Duration(seconds=whole, nanos=nanos)


def _pack(
    message: error_details_pb2.ErrorInfo
    | error_details_pb2.RetryInfo
    | error_details_pb2.BadRequest,
) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(message)
    return detail
