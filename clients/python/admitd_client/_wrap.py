"""Drop-in admission for the official ``openai`` and ``anthropic`` SDK clients.

``wrap(sdk_client, admitd)`` returns an object that behaves as the SDK client, except that
every ``chat.completions.create``/``parse``/``stream`` and ``responses.create``/``parse``
(OpenAI) or ``messages.create``/``parse``/``stream`` (Anthropic) runs through admitd: the
reservation is derived from the call's arguments (``_reserve``), the pool from its model,
and the call is retried outside the lease (``_provider``). Everything else is the SDK
client's own, untouched; the ways to call a model that are not admitted
(``with_raw_response``, ``with_streaming_response``, ``responses.stream``, ``beta``) log a
warning once when used. Neither SDK is imported: clients are recognised by their class's
module.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from ._async import AsyncAdmissionClient
from ._models import Api
from ._outcome import Priority
from ._provider import CallPolicy, provider_call
from ._streams import AsyncStream, SyncStream
from ._sync import AdmissionClient
from ._usage import finished_call

S = TypeVar("S")
log = logging.getLogger("admitd_client")
# The wrapped calls: (resource path, method, api). ``stream`` is a helper returning a
# stream manager; ``create`` streams when called with stream=True; ``parse`` is ``create``
# with the reply parsed into the caller's type (structured outputs).
_CALLS: dict[str, tuple[tuple[str, str, Api], ...]] = {
    "openai": (
        ("chat.completions", "create", "openai.chat"),
        ("chat.completions", "parse", "openai.chat"),
        ("chat.completions", "stream", "openai.chat"),
        ("responses", "create", "openai.responses"),
        ("responses", "parse", "openai.responses"),
    ),
    "anthropic": (
        ("messages", "create", "anthropic.messages"),
        ("messages", "parse", "anthropic.messages"),
        ("messages", "stream", "anthropic.messages"),
    ),
}
# Ways to call a model that the wrapper does not admit: using one logs a warning (once per
# name), since its calls bypass admitd's limits.
_UNADMITTED = frozenset({"with_raw_response", "with_streaming_response", "stream", "beta"})
_warned: set[str] = set()


def wrap(
    sdk_client: S,
    admitd: AdmissionClient | AsyncAdmissionClient,
    *,
    wait_timeout: float = 30.0,
    model_pools: Mapping[str, str] | None = None,
    tenant: str | None = None,
    priority: Priority | None = None,
    labels: Mapping[str, str] | None = None,
) -> S:
    """An SDK client whose calls are admitted by admitd; otherwise the same client.

    ```python
    openai = wrap(OpenAI(), AdmissionClient("localhost:50051", tenant="search"))
    reply = openai.chat.completions.create(model="gpt-4o", messages=msgs, max_tokens=512)
    ```

    Each call acquires a lease for what its arguments may use, calls the provider once,
    and releases with the usage it reports (streams: when the stream ends; an OpenAI chat
    stream gets ``include_usage`` turned on, its extra chunk hidden from ``create``'s
    stream). ``parse`` is admitted as ``create``, the ``stream`` helpers from entering
    their block to leaving it. A 429, 529, 5xx or
    timeout is released with its outcome and retry-after (admitd pauses the pool for
    everyone), then retried through admitd up to the SDK client's ``max_retries``; the
    SDK never sleeps while holding a slot. ``with_options`` returns a wrapped client too.

    Args:
        sdk_client: ``OpenAI``/``AzureOpenAI`` or ``Anthropic`` (with an
            ``AdmissionClient``), or their ``Async`` twins (with an ``AsyncAdmissionClient``).
        admitd: The admitd client.
        wait_timeout: Seconds a call may wait for admission in all, across its retries:
            in admitd's queue and for retry-after hints. Past it, ``Rejected`` is raised
            (or, after a provider failure, that failure).
        model_pools: The pool of each model (default: the admitd client's
            ``model_pools``, else ``<provider>/<model>``).
        tenant: The tenant the calls are made for (default: the admitd client's).
        priority: Queue priority of the calls.
        labels: Labels kept with each lease.

    Raises:
        TypeError: Not an OpenAI or Anthropic client, or a sync SDK client with an async
            admitd client (or the reverse).
    """
    provider = type(sdk_client).__module__.partition(".")[0]
    if provider not in _CALLS:
        raise TypeError(f"wrap() takes an openai or anthropic client, not {type(sdk_client)!r}")
    is_async = type(sdk_client).__name__.startswith("Async")
    if is_async != isinstance(admitd, AsyncAdmissionClient):
        kind = "an AsyncAdmissionClient" if is_async else "an AdmissionClient"
        raise TypeError(f"wrap() needs {kind} for a {type(sdk_client).__name__}")
    settings = dict(wait_timeout=wait_timeout, model_pools=model_pools, tenant=tenant)
    settings.update(priority=priority, labels=labels)
    return _Wrapped(sdk_client, admitd, provider, settings)  # type: ignore[return-value]


class _Proxy:
    """Everything of ``target``, but the names in ``overrides``."""

    def __init__(self, target: Any, overrides: Mapping[str, Any]) -> None:
        self._target = target
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        if name in self._overrides:
            return self._overrides[name]
        if name in _UNADMITTED:
            where = f"{type(self._target).__name__}.{name}"
            if where not in _warned:
                _warned.add(where)
                log.warning(
                    "%s is not admitted by admitd_client.wrap(): its calls bypass admitd's "
                    "limits and are not charged",
                    where,
                )
        return getattr(self._target, name)

    def __repr__(self) -> str:
        return f"<admitted {self._target!r}>"


class _Wrapped(_Proxy):
    def __init__(self, sdk: Any, admitd: Any, provider: str, settings: dict[str, Any]) -> None:
        once = sdk.with_options(max_retries=0)  # retries happen outside the lease
        overrides: dict[str, Any] = {
            "with_options": functools.partial(self._rewrap, sdk, admitd, settings),
            "copy": functools.partial(self._rewrap, sdk, admitd, settings),
        }
        for path, method, api in _CALLS[provider]:
            make = _stream_manager if method == "stream" else _create
            call = make(sdk, once, admitd, api, path, method, settings)
            overrides = _override(sdk, overrides, path.split("."), method, call)
        super().__init__(sdk, overrides)

    def __enter__(self) -> Any:
        self._target.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._target.__exit__(*exc_info)

    async def __aenter__(self) -> Any:
        await self._target.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._target.__aexit__(*exc_info)

    @staticmethod
    def _rewrap(sdk: Any, admitd: Any, settings: dict[str, Any], **options: Any) -> Any:
        return wrap(sdk.with_options(**options), admitd, **settings)


def _override(
    target: Any, overrides: dict[str, Any], path: list[str], method: str, call: Any
) -> dict[str, Any]:
    """``overrides`` with ``call`` put at ``path``.``method`` (proxies along the way)."""
    head, rest = path[0], path[1:]
    inner = getattr(target, head)
    existing = overrides.get(head)
    nested = dict(existing._overrides) if isinstance(existing, _Proxy) else {}
    if rest:
        nested = _override(inner, nested, rest, method, call)
    else:
        nested[method] = call
    return {**overrides, head: _Proxy(inner, nested)}


def _policy(
    sdk: Any, api: Api, request: Mapping[str, Any], settings: Mapping[str, Any]
) -> CallPolicy:
    args: dict[str, Any] = {}
    pools = settings["model_pools"]
    if pools and request.get("model") in pools:
        args["pool"] = pools[request["model"]]
    for name in ("tenant", "priority", "labels"):
        if settings[name] is not None:
            args[name] = settings[name]
    return CallPolicy(int(sdk.max_retries), float(settings["wait_timeout"]), args)


def _resource(client: Any, path: str) -> Any:
    for name in path.split("."):
        client = getattr(client, name)
    return client


def _prepare(api: Api, request: dict[str, Any]) -> bool:
    """Turn on usage in an OpenAI chat stream; True when the caller did not ask for it (its
    usage-only chunk is then hidden)."""
    if api != "openai.chat" or not request.get("stream"):
        return False
    options = dict(request.get("stream_options") or {})
    if options.get("include_usage"):
        return False
    request["stream_options"] = {**options, "include_usage": True}
    return True


def _strict(method: Any, kwargs: Mapping[str, Any]) -> None:
    """Raise the SDK's own ``TypeError`` for arguments it does not take (a typo such as
    ``max_tokns=``), before anything is reserved: the SDK would raise it only once called,
    inside the lease."""
    inspect.signature(method).bind(**kwargs)


def _create(
    sdk: Any, once: Any, admitd: Any, api: Api, path: str, method: str, settings: Any
) -> Callable[..., Any]:
    def start(kwargs: dict[str, Any]) -> tuple[Any, bool, bool]:
        _strict(getattr(_resource(once, path), method), kwargs)
        request = dict(kwargs)
        hide = _prepare(api, request)
        stream = bool(request.get("stream"))
        call = functools.partial(getattr(_resource(once, path), method), **request)
        policy = _policy(sdk, api, kwargs, settings)
        return provider_call(admitd._core, kwargs, api, policy, call, stream), stream, hide

    if isinstance(admitd, AsyncAdmissionClient):

        def create_async(**kwargs: Any) -> Coroutine[Any, Any, Any]:
            # Not itself async: a bad argument raises at the call, as the SDK's own does.
            return run(*start(kwargs))

        async def run(plan: Any, stream: bool, hide: bool) -> Any:
            lease, result = await admitd._drive(plan)
            if not stream:
                return result
            return await AsyncStream(result, lease, admitd.hold(lease), hide).start()

        return create_async

    def create(**kwargs: Any) -> Any:
        plan, stream, hide = start(kwargs)
        lease, result = admitd._drive(plan)
        return SyncStream(result, lease, admitd.hold(lease), hide) if stream else result

    return create


def _stream_manager(
    sdk: Any, once: Any, admitd: Any, api: Api, path: str, method: str, settings: Any
) -> Callable[..., Any]:
    """Anthropic's ``messages.stream(...)`` or OpenAI's ``chat.completions.stream(...)``: a
    context manager giving the SDK's stream helper, admitted on entry and released on exit
    with the usage of its snapshot (the final message or completion)."""

    def plan_for(kwargs: dict[str, Any], enter: Callable[[Any], Any]) -> Any:
        policy = _policy(sdk, api, kwargs, settings)
        request = {**kwargs, "stream": True}
        _prepare(api, request)  # OpenAI's helper: usage on, its snapshot then has it
        del request["stream"]

        def call() -> Any:
            return enter(getattr(_resource(once, path), method)(**request))

        return provider_call(admitd._core, kwargs, api, policy, call, True)

    def stream(**kwargs: Any) -> _Manager:
        _strict(getattr(_resource(once, path), method), kwargs)
        return _Manager(admitd, plan_for, **kwargs)

    return stream


class _Manager:
    def __init__(self, admitd: Any, plan_for: Any, **kwargs: Any) -> None:
        self._admitd, self._plan_for, self._kwargs = admitd, plan_for, kwargs
        self._stream: Any = None
        self._wrapped: Any = None  # a SyncStream or AsyncStream holding the lease

    def __enter__(self) -> Any:
        lease, self._stream = self._admitd._drive(self._plan_for(self._kwargs, _enter))
        self._wrapped = SyncStream(self._stream, lease, self._admitd.hold(lease), False)
        return self._stream

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self._stream.close()
        finally:
            self._wrapped._seen.finished_normally = exc_info[1] is None and _ended(self._stream)
            self._wrapped._release(exc_info[1], self._stream)

    async def __aenter__(self) -> Any:
        plan = self._plan_for(self._kwargs, _aenter)
        lease, self._stream = await self._admitd._drive(plan)
        self._wrapped = AsyncStream(self._stream, lease, self._admitd.hold(lease), False)
        await self._wrapped.start()
        return self._stream

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await self._stream.close()
        finally:
            self._wrapped._seen.finished_normally = exc_info[1] is None and _ended(self._stream)
            await self._wrapped._release(exc_info[1], self._stream)


def _ended(stream: Any) -> bool:
    """Whether a stream helper read its call to the end (its snapshot says why it stopped);
    a block left before then is released CANCELLED."""
    snapshot = finished_call(stream)
    if getattr(snapshot, "stop_reason", None):  # Anthropic
        return True
    choices = getattr(snapshot, "choices", None) or ()
    return bool(choices) and all(getattr(choice, "finish_reason", None) for choice in choices)


def _enter(manager: Any) -> Any:
    return manager.__enter__()


async def _aenter(manager: Any) -> Any:
    return await manager.__aenter__()
