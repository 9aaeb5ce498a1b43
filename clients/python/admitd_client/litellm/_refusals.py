"""admitd's answers as the exceptions LiteLLM's router and proxy already know how to treat.

```
litellm.RateLimitError (429)
├── DeploymentUnavailable   the deployment's pool is paused or its circuit open: the router
│                           may retry on another deployment (the callback steers it away)
└── AdmissionRefused        any other refusal: final for this request (no retry inside
                            the router, no cooldown of a shared deployment; a configured
                            fallback model group still applies)
litellm.ServiceUnavailableError (503)
└── AdmitdFailed            admitd cannot be reached (and on_unavailable is fail_closed),
                            or refused the request itself (e.g. an unknown pool)
```

Each 429 carries ``headers = {"retry-after": N}`` (whole seconds, rounded up), which the
proxy puts on its answer, and ``litellm_response_headers`` with the same, which the router
reads when it decides how long to wait before a retry.
"""

from __future__ import annotations

import math
from typing import Any

import litellm

from .._errors import AdmitdError, Reason, Rejected, Unavailable

# A refusal scoped to one caller: routers must not cool the shared deployment down for it
# (LiteLLM's own class for such 429s, where this LiteLLM version has it).
_CallerScoped: Any = getattr(litellm, "CallerCredentialRateLimitError", litellm.RateLimitError)


class DeploymentUnavailable(litellm.RateLimitError):
    """admitd refused the call because the deployment's pool is paused or its circuit open."""


class AdmissionRefused(_CallerScoped):
    """admitd refused the call (a limit, a quota, the queue, or the wait ran out)."""


class AdmitdFailed(litellm.ServiceUnavailableError):
    """admitd could not be reached (calls fail closed), or refused the request itself."""


def refusal(rejected: Rejected, *, model: str, provider: str) -> Exception:
    """The exception for a refusal, with its retry-after."""
    seconds = rejected.retry_after
    headers = {"retry-after": str(max(1, math.ceil(seconds)))} if seconds is not None else {}
    pool = rejected.metadata.get("pool") or rejected.metadata.get("tenant") or ""
    message = f"admitd refused the call ({rejected.reason.value}"
    message += f", {pool}): {rejected.message}" if pool else f"): {rejected.message}"
    if rejected.reason is Reason.POOL_UNAVAILABLE:
        kind: Any = DeploymentUnavailable
    else:
        kind = AdmissionRefused
    error = kind(
        message, llm_provider=provider, model=model, headers=headers, category="litellm_rate_limit"
    )
    error.litellm_response_headers = headers
    if kind is AdmissionRefused:
        error.num_retries = 0  # waiting again here would only add to the wait just done
    return error  # type: ignore[no-any-return]


def failed(error: AdmitdError, *, model: str, provider: str) -> Exception:
    """The exception for an admitd that did not answer, or answered with an error."""
    if isinstance(error, Unavailable):
        message = f"admitd could not be reached, so the call was not made: {error.message}"
    else:  # a deployment mapped to a pool admitd does not have, say: the operator's to fix
        message = f"admitd did not admit the call: {error.code.name}: {error.message}"
    refused = AdmitdFailed(message, llm_provider=provider, model=model)
    refused.num_retries = 0
    return refused
