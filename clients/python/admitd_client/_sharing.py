"""Deduplication across processes in ``run``: a leader's result, shared with its followers.

With a ``dedup_key``, admitd lets one call lead and the identical calls in flight follow it
(anywhere: other processes, other replicas). ``run`` makes that transparent: the leader
runs ``call`` and shares ``share(result)`` at release; a follower never runs ``call`` and
returns ``unshare(shared_result)``. Both functions are the caller's, as only the caller
knows how its result travels as bytes (``json.dumps(...).encode()`` / ``json.loads``, a
pydantic model's ``model_dump_json`` / ``model_validate_json``, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ._lease import Lease, LeaseArgs
from ._outcome import DedupRole, Outcome

T = TypeVar("T")


def check(args: LeaseArgs, share: object, unshare: object) -> None:
    """``run``'s dedup arguments go together: a dedup_key needs share and unshare."""
    if (share is None) != (unshare is None):
        raise TypeError("run() takes share= and unshare= together")
    if args.get("dedup_key") and share is None:
        raise TypeError(
            "run(dedup_key=...) needs share= (result -> bytes) and unshare= (bytes -> result):"
            " the calls that join this one get the leader's result through admitd"
        )


def follows(lease: Lease) -> bool:
    """True for a dedup follower: its result is the leader's; no provider call."""
    return lease.role is DedupRole.FOLLOWER


def unshared(lease: Lease, unshare: Callable[[bytes], T] | None) -> T:
    """A follower's result: the leader's, decoded."""
    assert unshare is not None, "check() let a dedup_key through without unshare"
    return unshare(lease.shared_result or b"")


def offer(lease: Lease, result: T, share: Callable[[T], bytes] | None) -> None:
    """A leader's call returned ``result``: share it at release."""
    if share is None or lease.role is not DedupRole.LEADER:
        return
    if lease.outcome is None:
        # The provider call succeeded: if ``share`` raises, that is not the provider's
        # failure (the followers, without a result, retry and may lead).
        lease.outcome = Outcome.OK
    lease.share(share(result))
