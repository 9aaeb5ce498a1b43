"""A small reference model of admission, written from README.md ("How admission
works"), for the state-machine test (``test_state_machine.py``). Pure Python; it imports
nothing from admitd.

What it models: limits of three kinds (gauges: concurrency; continuous token buckets holding
one minute of capacity; daily quotas), checked and reserved all-or-nothing in a fixed order
that decides the reason of a rejection; leases that end exactly once (released, or expired
and reaped lazily by the next operation, leaving a tombstone for one TTL that a late Release
settles: LEASE_EXPIRED); release settling actual usage (refunds never above
a bucket's capacity, overuse into debt); and one pool's queue: strict priority classes with
aging, weighted fair queueing on token cost within a class (virtual finish tags, no banked
credit, FIFO per tenant), a waiter held back by its own tenant's limit passed over, one held
back by the pool blocking the rest, and a call that can never fit today rejected.

Time is whatever base the backend under test uses (monotonic seconds for memory, Unix
seconds for Redis) so that bucket arithmetic is done on the same floats. Bucket comparisons
within ``EPS`` of the boundary are *unsure*: the model then follows what the server did (an
observation) instead of predicting, and says so.

The modules, each on one concern:

- ``limits``: the limits a configuration declares, a call's ticket, prices and retry hints.
- ``ledger``: the limits' levels and the leases holding them; what a refused call is told;
  the invariants over the levels.
- ``queue``: one pool's fair queue (priority classes with aging, virtual finish tags).
- ``admission``: ``Model``, the operations the server answers, on a ledger and a queue.
"""

from support.model.admission import Model, Pass
from support.model.ledger import Event, Grave, Lease, Ledger, Refusal, Settled
from support.model.limits import EPS, Limit, Ticket
from support.model.queue import FairQueue, Waiter

__all__ = [
    "EPS",
    "Event",
    "FairQueue",
    "Grave",
    "Lease",
    "Ledger",
    "Limit",
    "Model",
    "Pass",
    "Refusal",
    "Settled",
    "Ticket",
    "Waiter",
]
