"""Reading what the server answered: a failed RPC's status with its rich details
(``google.rpc.Status``) decoded, the check that a refusal of bad input names its field, and
fields of a reply looked up by name."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

DETAILS_KEY = "grpc-status-details-bin"


@dataclass
class Failure:
    """A failed RPC with its rich status details decoded."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    retry_after: float | None = None
    field_violations: list[str] = field(default_factory=list)


def decode(error: grpc.aio.AioRpcError) -> Failure:
    failure = Failure(error.code(), error.details() or "")
    for key, value in error.trailing_metadata() or ():
        if key != DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        assert status.code == error.code().value[0]
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            retry = error_details_pb2.RetryInfo()
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(info):
                failure.reason, failure.domain = info.reason, info.domain
                failure.metadata = dict(info.metadata)
            elif detail.Unpack(retry):
                failure.retry_after = retry.retry_delay.ToTimedelta().total_seconds()
            elif detail.Unpack(bad):
                failure.field_violations = [v.field for v in bad.field_violations]
    return failure


def assert_names_field(failure: Failure, code: grpc.StatusCode, field: str) -> None:
    """Bad input's answer: ``code`` with a message naming ``field`` (for INVALID_ARGUMENT, a
    FieldViolation for it alone), and nothing of a rejection (no reason, no retry delay)."""
    assert failure.code == code, failure
    assert field in failure.message, failure
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert failure.field_violations == [field], failure
    assert failure.reason == "", failure  # not dressed up as a rejection
    assert failure.retry_after is None, failure


def has_field(message: Message, name: str) -> bool:
    """``message.HasField(name)`` for a name computed at run time (mypy-protobuf types each
    message's ``HasField`` to take only its own field names, as literals)."""
    return message.HasField(name)
