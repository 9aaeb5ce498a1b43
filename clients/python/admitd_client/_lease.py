"""A granted lease as the caller sees it, and the arguments that ask for one."""

from __future__ import annotations

import difflib
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict

from ._models import Api
from ._outcome import DedupRole, Outcome, Priority
from ._proto import admission_pb2 as pb
from ._usage import Reading, finished_call, read_usage, recognised

log = logging.getLogger("admitd_client")


class LeaseArgs(TypedDict, total=False):
    """What a lease asks for; the keyword arguments of ``lease``, ``acquire`` and ``run``.

    Input tokens come from exactly one of ``request``, ``messages``, ``prompt`` or
    ``input_tokens`` (none: 0). The reservation is input tokens + ``max_output_tokens``.
    Unknown keys raise ``TypeError`` at once (``max_tokens`` is the provider's name: pass
    ``max_output_tokens``, or the whole provider request as ``request``).

    ``request`` is the provider call as it stands: the keyword arguments given to OpenAI's
    ``chat.completions.create`` / ``responses.create`` or Anthropic's ``messages.create``.
    The reservation is derived from it (see ``_reserve``: messages, system, tools and
    images as each provider counts them; output from ``max_tokens``,
    ``max_completion_tokens`` or ``max_output_tokens``), and ``pool`` defaults to the
    client's ``model_pools[model]``, else ``<provider>/<model>``.

    With ``fallback_pools``, admitd takes one input-token count for every candidate, so
    ``messages`` or ``prompt`` is counted in the encoding of each candidate (see
    ``encoding_name``; ``encoding``/``model`` name one for all) and the largest count is
    sent: a reservation errs high, and release charges what the provider reported.

    Keys:
        pool: The pool (provider deployment) the call goes to, e.g. ``"openai/gpt-4o"``;
            required unless ``request`` names the model.
        request: The provider request (keyword arguments of the SDK's create call).
        api: Which call ``request`` is for: ``"openai.chat"``, ``"openai.responses"`` or
            ``"anthropic.messages"``; default: guessed from its shape (``input``:
            Responses; ``system`` or a Claude model: Anthropic; else chat).
        fallback_pools: Pools to fall back on, in order, when ``pool`` cannot admit the
            call now (or its circuit is open); ``Lease.pool`` says which one granted.
        dedup_key: Deduplicate identical calls in flight (this tenant, any process): a call
            with the key of one in flight joins it instead of reserving (``Lease.role``
            FOLLOWER, the leader's ``shared_result``). A follower waits for the leader at
            most ``wait_timeout``: with 0 it is refused at once (``DEDUP_IN_FLIGHT``).
            Make the key name everything the answer depends on (model, prompt, parameters).
        messages: Chat messages, counted with tiktoken (see ``count_tokens``).
        prompt: Plain text, counted with tiktoken.
        input_tokens: The input tokens, when the caller knows them.
        max_output_tokens: Most output tokens the call may produce (the provider's
            ``max_tokens``); reserved in full until release.
        wait_timeout: Seconds to wait in admitd's fair queue; 0 (default) rejects at once
            when the call does not fit now.
        priority: Queue priority class (default NORMAL).
        labels: Free-form labels kept with the lease for logs and traces.
        idempotency_key: Makes retried Acquires return the same lease. Default: a fresh
            random key per call, so the client's own transport retries never reserve twice.
        encoding: tiktoken encoding to count with; overrides ``model``.
        model: Count with the encoding tiktoken knows for this model.
        tenant: Acquire for this tenant instead of the client's.
        timeout: Deadline in seconds of each RPC attempt (default: the client's); Acquire
            gets ``wait_timeout`` on top.
    """

    pool: str
    request: Mapping[str, Any] | None
    api: Api | None
    fallback_pools: Sequence[str]
    dedup_key: str | None
    messages: Sequence[Mapping[str, Any]] | None
    prompt: str | None
    input_tokens: int | None
    max_output_tokens: int
    wait_timeout: float
    priority: Priority
    labels: Mapping[str, str]
    idempotency_key: str | None
    encoding: str | None
    model: str | None
    tenant: str | None
    timeout: float | None


LEASE_ARGS = frozenset(LeaseArgs.__optional_keys__ | LeaseArgs.__required_keys__)
# The provider's names for lease arguments, and arguments of the provider call itself.
_RENAMED = {"max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens"}
_INPUTS = ("request", "messages", "prompt", "input_tokens")
_PROVIDER_ARGS = {"tools", "functions", "system", "input", "instructions", "stream", "n"}


def check_lease_args(args: Mapping[str, Any], where: str = "lease") -> None:
    """Refuse what a lease cannot take, before anything is sent.

    Raises:
        TypeError: An unknown key (with the name meant, when one is close), neither
            ``pool`` nor ``request``, or more than one source of input tokens.
    """
    for name in sorted(set(args) - LEASE_ARGS):
        if name in _RENAMED:
            hint = f"; admitd calls it {_RENAMED[name]!r} (or pass the provider request: request=)"
        elif name in _PROVIDER_ARGS:
            hint = "; pass the whole provider request as request= to reserve for it"
        else:
            close = difflib.get_close_matches(name, LEASE_ARGS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"{where}() got an unexpected keyword argument {name!r}{hint}")
    if not args.get("pool") and args.get("request") is None:
        raise TypeError(f"{where}() needs pool= (or request= naming the model)")
    given = [name for name in _INPUTS if args.get(name) is not None]
    if len(given) > 1:
        raise TypeError(f"{where}() takes one of {', '.join(_INPUTS)}; got {', '.join(given)}")


@dataclass(frozen=True)
class Usage:
    """Tokens a call actually used, as reported by the provider.

    Attributes:
        input_tokens: All input tokens, cached ones included.
        output_tokens: Output tokens (thinking included).
        cached_input_tokens: The part of ``input_tokens`` read from the provider's prompt
            cache (OpenAI ``cached_tokens``, Anthropic ``cache_read_input_tokens``).
        cache_write_input_tokens: The part of ``input_tokens`` written to the prompt cache
            (Anthropic ``cache_creation_input_tokens``).
    """

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0


@dataclass(frozen=True)
class Settlement:
    """What admitd charged at release (``ReleaseResponse``)."""

    charged_tokens: int
    refunded_tokens: int
    already_released: bool
    charged_usd: float


class Lease:
    """A reservation admitted by admitd: tokens plus one concurrency slot, until released.

    Under ``on_unavailable="fail_open"`` a lease can also be *unadmitted*: admitd could not
    be reached, the call runs anyway, ``admitted`` is False, ``lease_id`` is empty, and
    releasing it does nothing (no RPC); nothing was reserved, so nothing is refunded.

    With a ``dedup_key``, the lease either leads (``role`` LEADER: an ordinary lease whose
    holder makes the call and ``share``s its result) or follows (``role`` FOLLOWER): an
    identical call was in flight and has ended; its result is ``shared_result``, there is
    no ``lease_id``, nothing to renew or release, and the provider must not be called.

    Attributes:
        lease_id: admitd's id of the lease ("" when unadmitted, or for a dedup follower).
        tenant: The tenant that owns the lease.
        pool: The pool it was granted on (with ``fallback_pools``: the candidate that
            admitted it).
        reserved_tokens: Input tokens + max output tokens held until release.
        input_tokens: The input tokens reserved (counted or given).
        max_output_tokens: The output tokens reserved.
        model: The model of a lease asked for with ``request``; else None.
        api: The provider call of a lease asked for with ``request``; else None.
        reserved_usd: Price of the reservation (pool price table; 0 when unadmitted).
        queued_for: Seconds spent in admitd's queue before the grant.
        admitted: False for an unadmitted (fail-open) lease.
        outcome: Set it to report an outcome other than the one the ``lease`` block's
            exit implies (e.g. a provider error returned rather than raised); after
            release, the outcome that was reported.
        provider_retry_after: Seconds the provider asked callers to wait (its
            ``retry-after``), reported at release: admitd pauses the pool that long for
            everyone. Read from a provider 429 the ``lease`` block raises (or
            ``record_error`` records); set it yourself for other cases. After release:
            what was reported (None: nothing).
        role: ``DedupRole.LEADER`` or ``FOLLOWER`` with a ``dedup_key``; else None.
        shared_result: A follower's: the bytes its leader shared. None otherwise.
        dedup_leader_id: With a ``dedup_key``: the leader's lease id (a leader's own).
        settlement: What admitd charged, once released; None before, or when unadmitted,
            or when the release failed (the lease then expires on its own). For a lease
            that had expired (``expired``): what its release after the expiry settled it to.
        renewals: How many times the lease was renewed in the background.
        lost: True when a renewal found the lease gone (it had expired).
        expired: True when admitd said the lease had expired (LEASE_EXPIRED, at a renewal
            or at release): its full reservation was charged then, and its slot freed; a
            release after that records the usage all the same (``settlement``).
        proto: The ``admitd.v1.Lease`` message (None when unadmitted).
    """

    def __init__(
        self,
        *,
        tenant: str,
        pool: str,
        input_tokens: int,
        max_output_tokens: int,
        proto: pb.Lease | None,
        request_tenant: str,
    ) -> None:
        self.proto = proto
        self.admitted = proto is not None
        self.lease_id = proto.lease_id if proto else ""
        self.tenant = proto.tenant if proto else tenant
        self.pool = proto.pool if proto else pool
        self.input_tokens = input_tokens
        self.max_output_tokens = max_output_tokens
        self.model: str | None = None
        self.api: Api | None = None
        self.reserved_tokens = proto.reserved_tokens if proto else input_tokens + max_output_tokens
        self.reserved_usd = proto.reserved_usd if proto else 0.0
        self.queued_for = proto.queued_for.ToTimedelta().total_seconds() if proto else 0.0
        self.outcome: Outcome | None = None
        self.provider_retry_after: float | None = None
        self.role = DedupRole(proto.dedup_role) if proto and proto.dedup_role else None
        follower = self.role is DedupRole.FOLLOWER
        self.shared_result: bytes | None = proto.shared_result if proto and follower else None
        self.dedup_leader_id = proto.dedup_leader_id if proto else ""
        self.settlement: Settlement | None = None
        self.renewals = 0
        self.lost = False
        self.expired = False
        # Release and Renew name the tenant the caller asked for, which admitd resolves
        # the same way as at Acquire (an unknown tenant may map to the default one).
        self.request_tenant = request_tenant
        self._lock = threading.Lock()  # record() may run in another thread than renewal
        self._reading = Reading(None, None)
        self._error: BaseException | None = None
        self._shared: bytes | None = None

    @property
    def expires_at(self) -> datetime | None:
        """When admitd reclaims the lease unless it is renewed (None when unadmitted)."""
        if self.proto is None:
            return None
        return self.proto.expires_at.ToDatetime(tzinfo=UTC)

    @property
    def usage(self) -> Usage | None:
        """The usage recorded so far, or None if nothing was (admitd then charges the full
        reservation).

        A half that was never recorded is taken from the reservation (``input_tokens``,
        ``max_output_tokens``), as admitd does for absent usage: a caller that records only
        ``output_tokens`` is not charged as if the input had been free.
        """
        with self._lock:
            got = self._reading
        inputs = got.input_tokens
        if inputs is None and got.uncached_input is not None:  # Anthropic's parts
            inputs = got.uncached_input + (got.cache_read or 0) + (got.cache_write or 0)
        if inputs is None and got.output_tokens is None:
            return None
        return Usage(
            self.input_tokens if inputs is None else inputs,
            self.max_output_tokens if got.output_tokens is None else got.output_tokens,
            got.cache_read or 0,
            got.cache_write or 0,
        )

    def record(
        self,
        response: Any = None,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> bool:
        """Record the tokens the call used; release reports them and admitd refunds the rest.

        Pass a provider response (OpenAI chat completion or Responses object, Anthropic
        message, their dicts, or a stream chunk/event; a consumed Anthropic
        ``MessageStream`` or OpenAI ``ChatCompletionStream``; a ``with_raw_response``
        object), or the counts themselves. Counts are totals: a later reading replaces an
        earlier one, so recording every stream event leaves the final usage. Stream events
        without usage are ignored; any other object without usage (an unconsumed stream, a
        shape this client does not know) is logged as a warning naming its type, as admitd
        then charges the reservation.

        Args:
            response: A provider response or stream event.
            input_tokens: Input tokens used (all of them); overrides the response's.
            output_tokens: Output tokens used; overrides the response's.

        Returns:
            True when some usage was found and recorded.

        Raises:
            TypeError: Neither a response nor a count was given.
            ValueError: A count is negative.
        """
        if response is None and input_tokens is None and output_tokens is None:
            raise TypeError("record() needs a response, input_tokens or output_tokens")
        for name, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens)):
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")
        reading = Reading(None, None)
        if response is not None:
            reading = self._read(response) or reading
        if input_tokens is not None:
            reading = reading._replace(input_tokens=input_tokens)
        if output_tokens is not None:
            reading = reading._replace(output_tokens=output_tokens)
        found = {k: v for k, v in reading._asdict().items() if v is not None}
        with self._lock:
            self._reading = self._reading._replace(**found)
        return any(
            value is not None
            for value in (reading.input_tokens, reading.uncached_input, reading.output_tokens)
        )

    def _read(self, response: Any) -> Reading | None:
        reading = read_usage(response)
        if reading is None and not recognised(response):
            finished = finished_call(response)
            reading = read_usage(finished) if finished is not None else None
            if reading is None:
                kind = type(response)
                log.warning(
                    "lease %s: record() found no usage in a %s.%s, so nothing was recorded "
                    "from it; unless usage is recorded, admitd charges the whole reservation "
                    "(%d tokens). Record the final response or each stream event (OpenAI "
                    "chat streams need stream_options={'include_usage': True}), or use "
                    "admitd_client.wrap().",
                    self.lease_id or "(unadmitted)",
                    kind.__module__,
                    kind.__qualname__,
                    self.reserved_tokens,
                )
        return reading

    def record_error(self, error: BaseException) -> None:
        """Report a provider call that failed with ``error`` although the block ends well.

        For an error the code catches (e.g. to answer from a cache): release then reports
        the outcome it implies (a 429 -> PROVIDER_RATE_LIMITED, ...) and the provider's
        retry-after it carries, as if the ``lease`` block had raised it. An explicit
        ``outcome`` or ``provider_retry_after`` still wins.
        """
        self._error = error

    def share(self, result: bytes) -> None:
        """Give a dedup leader's result to the calls that joined it, at release.

        Sent only by a leader (``role`` LEADER) whose call ends with outcome OK; ignored
        otherwise, so code may call it whatever the role. At most admitd's
        ``lease.max_shared_result`` bytes (64 KiB by default): a result admitd refuses is
        dropped with a warning and the lease released without it (the followers then
        retry). An empty result shares nothing.

        Raises:
            TypeError: ``result`` is not bytes.
        """
        if not isinstance(result, bytes | bytearray | memoryview):
            raise TypeError(f"share() takes bytes, not {type(result).__name__}")
        self._shared = bytes(result)

    def _renewed(self, proto: pb.Lease) -> None:
        self.proto = proto
        self.renewals += 1

    def __repr__(self) -> str:
        state = f"id={self.lease_id}" if self.admitted else "unadmitted"
        if self.role is DedupRole.FOLLOWER:
            state = f"following={self.dedup_leader_id}"
        tokens = self.reserved_tokens
        return f"<Lease {state} tenant={self.tenant} pool={self.pool} tokens={tokens}>"
