"""The shared vocabulary of admitd: limits, tickets, leases, denials and the results of
backend operations, and the constants every backend keeps alike.

Everything here is plain data (frozen dataclasses and enums) with no behaviour beyond small
derived values, so every layer may import it: the engine and the policy build and read it,
each backend (``_backends/``) stores and returns it, and the Redis backend's codec
(``_backends/redis/codec.py``) is its one translation to and from the Lua scripts.
"""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass, field
from typing import Literal

from ._records import record
from ._usage import PRICE_SLACK as PRICE_SLACK  # shared with Lua (codec.SHARED_CONSTANTS)
from ._usage import Prices, Unreported, Usage


class Kind(enum.StrEnum):
    GAUGE = "gauge"  # in use now, e.g. concurrency; freed on release
    BUCKET = "bucket"  # continuous token bucket: capacity, refill per second
    DAILY = "daily"  # used per UTC day
    GATE = "gate"  # a pool's gate (pause, circuit breaker): only ever in a Denial


class Unit(enum.StrEnum):
    """What a limit counts, and so how much a call takes of it."""

    SLOT = "slot"  # one per call, given back on release
    REQUEST = "request"  # one per call, never given back
    TOKEN = "token"  # the reservation; settled to actual usage on release
    NANO_USD = "nano_usd"  # price of the reservation in 1e-9 USD; settled likewise


class Scope(enum.StrEnum):
    POOL = "pool"
    TENANT = "tenant"
    GLOBAL = "global"


# The members compared for every limit of every call, as module constants. Python 3.11 (the
# image's) looks an enum member up (``Kind.GAUGE``) through ``EnumType.__getattr__``'s slot
# hook, ~200 ns where a module global takes ~15: the memory backend's counters, a ticket's
# amounts and ``Policy.never_fits`` made 54 such lookups a pair, ~12% of the instructions
# of an Acquire+Release pair through the engine.
GAUGE, BUCKET, DAILY = Kind.GAUGE, Kind.BUCKET, Kind.DAILY
SLOT, TOKEN, NANO_USD = Unit.SLOT, Unit.TOKEN, Unit.NANO_USD
POOL_SCOPE = Scope.POOL


@dataclass(frozen=True, slots=True)
class Limit:
    """One counter a call must fit, and its key in the store."""

    key: str
    kind: Kind
    unit: Unit
    scope: Scope
    name: str  # config field, e.g. "tokens_per_minute"
    owner: str  # pool or tenant name; "" for global
    capacity: float
    rate: float = 0.0  # refill per second (buckets only)
    shadow: bool = False  # checked and counted, never refusing (shadow mode)


def limit_key(scope: Scope, owner: str, name: str) -> str:
    """A limit's key in the store: ``pool:<pool>:<field>``, ``tenant:<tenant>:<field>``,
    ``global:<field>``."""
    return f"{scope.value}:{owner}:{name}" if owner else f"{scope.value}:{name}"


GATE_LIMIT_NAME = "availability"  # the stand-in limit of a pool's gate (a Denial names it)


def gate_limit(pool: str) -> Limit:
    """The stand-in limit a pool gate's refusal names (reason POOL_UNAVAILABLE)."""
    key = limit_key(Scope.POOL, pool, GATE_LIMIT_NAME)
    return Limit(key, Kind.GATE, Unit.REQUEST, Scope.POOL, GATE_LIMIT_NAME, pool, 0.0)


# Seconds an RPC's replica has to claim a grant made for it elsewhere; past it, the grant
# goes back (that replica died).
CLAIM_TIMEOUT = 10.0
# Priority classes: 0 = CRITICAL, 1 = HIGH, 2 = NORMAL, 3 = LOW.
PRIORITY_CLASSES = 4


@record
class Ticket:
    """A validated, priced request: what a backend needs to queue, check and grant it."""

    lease_id: str  # also identifies the waiter while queued
    tenant: str
    pool: str
    input_tokens: int
    max_output_tokens: int
    nano_usd: int  # price of the reservation: prices().reservation(...)
    price_in: float  # nano-USD per input token, to settle actual usage
    price_out: float  # nano-USD per output token
    price_cached: float  # nano-USD per input token read from the provider's cache
    price_write: float  # nano-USD per input token written to it
    priority: int  # 0 = CRITICAL .. 3 = LOW
    cost: float  # virtual-time cost in the fair queue: reservation / tenant weight
    limits: tuple[Limit, ...]
    ttl: float
    wait: float = 0.0  # how long the caller waits in the queue; a waiter past it is dropped
    claim_timeout: float = CLAIM_TIMEOUT
    deferred: bool = False  # Enqueue: no RPC waits for it; a look claims its grant
    dedup_key: str = ""  # identical calls in flight (same tenant) join one leader
    idempotency_key: str = ""
    fingerprint: str = ""  # what an idempotent retry must repeat
    max_queued_tenant: int = 0
    max_queued_total: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.max_output_tokens

    def prices(self) -> Prices:
        return Prices(self.price_in, self.price_out, self.price_cached, self.price_write)

    def settle(self, charge: Usage | Unreported) -> tuple[Usage, int]:
        """The usage a release charges, and its price: reported usage as it is, else what
        the policy's rule says (the full reservation at its own price)."""
        if isinstance(charge, Usage):
            return charge, self.prices().of(charge)
        if charge is Unreported.RESERVATION:
            return Usage(self.input_tokens, self.max_output_tokens), self.nano_usd
        used = Usage(self.input_tokens if charge is Unreported.INPUT else 0, 0)
        return used, self.prices().of(used)

    def credit(self, refunded_tokens: int) -> float:
        """The fair queue's measure of ``refunded_tokens`` of this reservation given back:
        tokens over the tenant's weight, as ``cost`` is (``cost / tokens`` is 1 / weight;
        ``_lib5_queue.lua`` ``credit`` computes it alike)."""
        return self.cost * refunded_tokens / self.tokens if refunded_tokens > 0 else 0.0

    def lease(
        self,
        expires_in: float,
        queued_for: float = 0.0,
        held_for: float = 0.0,
        shadowed: str = "",
        *,
        lease_id: str | None = None,
    ) -> LeaseRecord:
        """This ticket's lease as a grant, a release or an expiry reports it (``lease_id``:
        another id to report it under)."""
        return LeaseRecord(
            lease_id=self.lease_id if lease_id is None else lease_id,
            tenant=self.tenant,
            pool=self.pool,
            input_tokens=self.input_tokens,
            max_output_tokens=self.max_output_tokens,
            nano_usd=self.nano_usd,
            expires_in=expires_in,
            queued_for=queued_for,
            held_for=held_for,
            shadowed=shadowed,
        )

    def amount(self, unit: Unit) -> float:
        if unit is TOKEN:
            return float(self.tokens)
        if unit is NANO_USD:
            return float(self.nano_usd)
        return 1.0


@record
class LeaseRecord:
    lease_id: str
    tenant: str
    pool: str
    input_tokens: int
    max_output_tokens: int
    nano_usd: int
    expires_in: float  # seconds left at the time of the operation
    queued_for: float  # seconds spent queued before the grant
    held_for: float = 0.0  # seconds since the grant (set on release/expiry)
    shadowed: str = ""  # key of a shadow-mode limit the call did not fit ("" if none)
    dedup_leader: str = ""  # the leader's lease id: its own (a leader), or another's
    shared_result: bytes | None = None  # a follower's: what its leader released with

    @property
    def reserved_tokens(self) -> int:
        return self.input_tokens + self.max_output_tokens


@dataclass(frozen=True, slots=True)
class Denial:
    """The limit a ticket did not fit, and the state of it at that moment. A refused
    caller's own denial lists the other limits it did not fit in ``also``, so that its
    retry delay can be the time after which it fits them all."""

    limit: Limit
    level: float  # GAUGE: in use; BUCKET: left; DAILY: used today; GATE: seconds it stays shut
    amount: float  # what the ticket needed of it
    cause: str = ""  # GATE: "paused", "open" or "probing"
    also: tuple[Denial, ...] = ()  # the other limits it did not fit at that moment
    # GAUGE: seconds until the holders of the slots it needs are expected to end, soonest
    # first (a holder at its grant time plus the gauge's typical hold, else at its expiry).
    ends: tuple[float, ...] = ()


FullScope = Literal["global", "tenant"]  # which queue bound a newcomer would break


@dataclass(frozen=True, slots=True)
class QueueFull:
    scope: FullScope
    depth: int  # waiters counted against the limit
    limit: int
    pool_depth: int = 0  # waiters in the pool's queue (a newcomer's position)
    grants_per_second: float | None = None  # the pool's recent grant rate


MAX_PAUSE = 600.0  # seconds: a retry-after beyond this is taken as this
Circuit = Literal["closed", "open", "half_open"]
Cause = Literal["paused", "open", "probing"]  # why a pool's gate is shut


class Outcome(enum.IntEnum):
    """How the provider call behind a lease ended (the wire's ``admitd.v1.Outcome``)."""

    OK = 1
    PROVIDER_RATE_LIMITED = 2
    PROVIDER_ERROR = 3
    TIMEOUT = 4
    CANCELLED = 5


@dataclass(frozen=True, slots=True)
class Aimd:
    decrease: float
    increase: float
    floor: float
    cooldown: float


@dataclass(frozen=True, slots=True)
class Breaker:
    failure_rate: float
    min_calls: int
    window: float
    open_for: float
    probes: int


@dataclass(frozen=True, slots=True)
class Gate:
    """A pool's gate as configured (a pause needs no configuration)."""

    pool: str
    aimd: Aimd | None = None
    breaker: Breaker | None = None


@dataclass(frozen=True, slots=True)
class GateView:
    """A pool's gate now, for GetStatus and metrics."""

    factor: float  # the AIMD factor on its concurrency and rates
    circuit: Circuit
    paused_for: float  # seconds


# Grant rates are counted over windows of this many seconds (a sliding window of two).
RATE_WINDOW = 30.0
# A gauge's typical hold is an average of how long its leases were held (released ones,
# not expired ones), each new hold weighing this much.
HOLD_WEIGHT = 0.2
# A look walks the fair order this far for an exact position; beyond, it approximates.
MAX_EXACT_POSITION = 100
# A dispatch pass looks at most this many waiters per pool, so that one tenant with a long
# queue blocked by its own limits cannot make every release slow.
MAX_EXAMINED = 1024


@dataclass(frozen=True, slots=True)
class QueueSpot:
    """Where a waiter stands in its pool's queue."""

    tenant: str
    pool: str
    position: int  # waiters served before it; exact up to MAX_EXACT_POSITION, then approximate
    depth: int  # waiters in the pool's queue
    grants_per_second: float | None  # the pool's recent grant rate; None before any grant
    wait_left: float  # seconds until it leaves the queue unserved


EndKind = Literal["timeout", "rejected", "unclaimed", "cancelled"]
# Backend.subscribe's ``waiting`` names the end of a dedup leader as this prefix + its id.
END_PREFIX = "end:"


@dataclass(frozen=True, slots=True)
class TicketEnd:
    """Why a deferred ticket left the queue without a lease for its caller."""

    kind: EndKind
    tenant: str
    denial: Denial | None = None  # "rejected": the daily limit it can never fit today


@dataclass(frozen=True, slots=True)
class Look:
    """A waiter or ticket now: exactly one of queued, lease (granted) or ended; none of
    them when it is unknown."""

    queued: QueueSpot | None = None
    lease: LeaseRecord | None = None
    claimed: bool = False  # with lease: it had already been claimed before this look
    ended: TicketEnd | None = None


@dataclass(slots=True)
class Progress:
    """What a dispatch pass did: grants to hand out, waiters that can never fit, the limit
    blocking the head of each pool's queue, and the tenant limits that made it pass waiters
    over (both for refill wake-ups and estimates); and dedup leaders whose call ended."""

    grants: list[LeaseRecord] = field(default_factory=list)
    rejections: list[tuple[str, Denial]] = field(default_factory=list)
    blocked: dict[str, Denial] = field(default_factory=dict)
    passed_over: list[Denial] = field(default_factory=list)
    finished: list[DedupEnd] = field(default_factory=list)


# Seconds a finished dedup leader's end is kept for followers that look late.
DEDUP_KEEP = 60.0


@dataclass(frozen=True, slots=True)
class DedupEnd:
    """A dedup leader's call ended: with its shared result, or without one (failed,
    cancelled, expired, or released without a result: its followers must retry)."""

    leader: str  # the leader's lease id
    result: bytes | None


@dataclass(slots=True)
class AcquireResult:
    """Exactly one of: granted (``lease``), ``queued``, or refused (``denial``)."""

    lease: LeaseRecord | None = None
    queued: bool = False
    denial: Denial | QueueFull | None = None
    replayed: bool = False  # an idempotent retry of an earlier Acquire
    waiting_on: str = ""  # lease id of the waiter to wait for (an earlier one when replayed)
    follows: str = ""  # a dedup follower: the leader's lease id; nothing was reserved
    progress: Progress = field(default_factory=Progress)


@record
class Settlement:
    lease: LeaseRecord
    charged_tokens: int
    refunded_tokens: int
    charged_nano_usd: int
    already_released: bool


@dataclass(slots=True)
class ReleaseResult:
    settlement: Settlement
    progress: Progress = field(default_factory=Progress)


@dataclass(slots=True)
class ExpireResult:
    expired: list[LeaseRecord]
    progress: Progress = field(default_factory=Progress)
    next_expiry_in: float | None = None  # seconds to the earliest remaining expiry


@dataclass(slots=True)
class Beat:
    """A replica's heartbeat: what it dispatched (grants given back from dead replicas'
    waiters freed capacity), and whether this replica had itself missed its promise, so
    that other replicas may have dropped its waiters."""

    progress: Progress = field(default_factory=Progress)
    lapsed: bool = False


# Days the cost ledger keeps (a year of reports, and a month more).
LEDGER_DAYS = 400
DAY_SECONDS = 86_400


EPOCH = datetime.date(1970, 1, 1)  # day number 0


def day_number(wall: float) -> int:
    """The UTC day of Unix time ``wall``, as days since 1970-01-01 (the ledger's day key)."""
    return int(wall // DAY_SECONDS)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """What one tenant was charged on one pool on one UTC day (released and expired leases)."""

    day: int  # day_number
    tenant: str
    pool: str
    calls: int
    input_tokens: int
    output_tokens: int
    nano_usd: int
    cached_input_tokens: int = 0  # parts of input_tokens: read from the provider's cache
    cache_write_input_tokens: int = 0  # ...and written to it


@dataclass(slots=True)
class Snapshot:
    """Levels of the given limits (same meaning as :attr:`Denial.level`), and occupancy."""

    levels: dict[str, float]
    in_flight_by_pool: dict[str, int]
    in_flight_by_tenant: dict[str, int]
    queued_by_pool: dict[str, list[int]]  # per priority class
    queued_by_tenant: dict[str, int]
    gates: dict[str, GateView] = field(default_factory=dict)  # pools whose gate is not open
