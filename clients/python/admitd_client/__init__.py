"""admitd_client: ask admitd before calling an LLM provider.

```python
from admitd_client import AsyncAdmissionClient

async with AsyncAdmissionClient("localhost:50051", tenant="search") as admitd:
    async with admitd.lease(
        pool="openai/gpt-4o", messages=msgs, max_output_tokens=512
    ) as lease:
        lease.record(await openai.chat.completions.create(...))
```

``AdmissionClient`` is the same for blocking code. A wait in admitd's queue can be
watched (``acquire_stream``, ``lease(on_queue_update=...)``) or deferred (``enqueue`` a
``Ticket``, poll it with ``get_ticket`` / ``wait_ticket``). A lease may name
``fallback_pools``, and identical calls in flight can share one provider call
(``dedup_key``; ``run(..., share=, unshare=)``). ``usage`` reads the cost ledger
(``UsageRow``). Everything importable from here is the public API; ``_module`` files are
private and may change.
"""

from ._async import AsyncAdmissionClient
from ._calls import ClientOptions, RetryPolicy
from ._errors import AdmitdError, LeaseEnded, Reason, Rejected, Unavailable
from ._lease import Lease, LeaseArgs, Settlement, Usage
from ._ledger import UsageRow
from ._outcome import DedupRole, Outcome, Priority
from ._queue import QueueUpdate, Ticket, TicketState
from ._sync import AdmissionClient
from ._tokens import DEFAULT_ENCODING, count_tokens
from ._version import __version__
from ._wrap import wrap

__all__ = [
    "DEFAULT_ENCODING",
    "AdmissionClient",
    "AdmitdError",
    "AsyncAdmissionClient",
    "ClientOptions",
    "DedupRole",
    "Lease",
    "LeaseArgs",
    "LeaseEnded",
    "Outcome",
    "Priority",
    "QueueUpdate",
    "Reason",
    "Rejected",
    "RetryPolicy",
    "Settlement",
    "Ticket",
    "TicketState",
    "Unavailable",
    "Usage",
    "UsageRow",
    "__version__",
    "count_tokens",
    "wrap",
]
