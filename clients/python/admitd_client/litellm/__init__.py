"""admitd for LiteLLM: a callback that admits every provider call a LiteLLM proxy makes.

```yaml
litellm_settings:
  callbacks: ["admitd_client.litellm.handler"]
callback_settings:
  admitd: {target: "admitd:50051"}      # every key optional; see Settings
```

Before each provider call, after LiteLLM's router has picked the deployment, the callback
acquires a lease from admitd: the deployment's pool (by default its
``litellm_params.model``), the caller's tenant (its LiteLLM team, or key), priority from
the request's ``metadata.priority``, and a reservation derived from the request (input
tokens as the provider counts them, plus ``max_tokens``). It waits in admitd's queue, at
most ``max_wait`` and within the request's timeout. After the call it releases with the
provider's usage, the outcome and the provider's retry-after; a streamed answer holds its
lease until the stream ends or the client goes away. A refusal reaches the caller as
LiteLLM's own 429 with ``Retry-After``; a deployment admitd calls paused or open is left
for the router's next one.

Needs ``litellm`` (``pip install "admitd-client[litellm]"``), which ``admitd_client``
itself never imports. ``AdmitdCallback(settings)`` is the same callback for
``litellm.callbacks`` in your own code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._settings import Settings, load

if TYPE_CHECKING:
    from ._callback import AdmitdCallback

__all__ = ["AdmitdCallback", "Settings", "handler", "load"]

_handler: Any = None


def __getattr__(name: str) -> Any:
    # Lazily, so that importing this package needs no litellm until the callback is used,
    # and so that ``handler`` reads the proxy's callback_settings as they are when the proxy
    # loads it (LiteLLM sets them before it loads callbacks).
    global _handler
    if name == "AdmitdCallback":
        from ._callback import AdmitdCallback

        return AdmitdCallback
    if name == "handler":
        if _handler is None:
            from ._callback import AdmitdCallback

            _handler = AdmitdCallback()
        return _handler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
