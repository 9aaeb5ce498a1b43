"""``AdmitdCallback``: admitd's admission around every provider call a LiteLLM router makes.

The hooks, in the order a call meets them (``litellm.integrations.custom_logger``):

- ``async_filter_deployments`` (router, before it picks): leaves out the deployments whose
  pool admitd has just refused as paused or open, unless that would leave none.
- ``async_pre_call_deployment_hook`` (once per attempt, after the pick, before the provider
  call): acquires, for the deployment picked (its pool) and the caller (its tenant). A
  refusal raises one of ``_refusals``' errors instead of calling the provider.
- ``async_post_call_success_deployment_hook`` / ``async_post_call_failure_deployment_hook``
  (the same attempt, after the provider answered): releases with the usage, or with the
  outcome and the provider's retry-after.
- ``async_post_call_streaming_iterator_hook`` (proxy, around the stream sent to the
  client): a streamed answer's lease lasts until the stream ends, is broken off, or the
  client goes away; usage comes from its last chunk.
- ``async_post_call_failure_hook`` (proxy, once per request that failed) and
  ``async_log_success_event`` (once per request that succeeded): release whatever the
  request still holds, e.g. a stream that failed before it was sent, or one read through
  the SDK rather than the proxy. A task cancelled while holding a lease releases it too.

Leases are kept by LiteLLM's call id (``_held``); each is taken out once, by the hook that
releases it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any, cast

from litellm.integrations.custom_logger import CustomLogger

from .._async import AsyncAdmissionClient
from .._calls import OnUnavailable
from .._errors import AdmitdError, Reason, Rejected
from .._models import encoding_for_model
from .._outcome import _status_code
from .._reserve import reserve
from .._retry_after import parse_retry_after
from .._tokens import count_tokens
from . import _request
from ._held import Held, Leases, UnavailablePools
from ._refusals import failed, refusal
from ._settings import Settings, load

log = logging.getLogger("admitd_client.litellm")

_HINTED = {429, 503, 529}  # statuses whose retry-after pauses the pool (as the client reads)
# Refusals that waiting in the queue cannot cure.
_FINAL = {Reason.POOL_UNAVAILABLE, Reason.QUEUE_FULL, Reason.DEDUP_IN_FLIGHT}


class AdmitdCallback(CustomLogger):
    """Admits every provider call of a LiteLLM proxy (or ``Router``) through admitd.

    The proxy loads the module-level instance, ``admitd_client.litellm.handler``, from
    ``litellm_settings.callbacks``; its settings come from ``callback_settings.admitd``
    (see ``Settings``). In your own code: ``litellm.callbacks = [AdmitdCallback(...)]``.

    Args:
        settings: The settings; default: ``litellm.callback_settings["admitd"]`` and the
            environment, read now (a bad entry raises ``ValueError`` at start-up).
        client: The admitd client to use (default: one made from the settings, in the
            event loop of the first call).
    """

    def __init__(
        self, settings: Settings | None = None, *, client: AsyncAdmissionClient | None = None
    ) -> None:
        super().__init__()
        if settings is None:
            import litellm

            settings = load((getattr(litellm, "callback_settings", None) or {}).get("admitd"))
        self.settings = settings
        self.leases = Leases()
        """The leases held now, by LiteLLM call id."""
        self.unavailable = UnavailablePools()
        self._client = client
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def client(self) -> AsyncAdmissionClient:
        if self._client is None:
            key = self.settings.api_key
            self._client = AsyncAdmissionClient(
                self.settings.target,
                metadata=[("authorization", f"Bearer {key}")] if key else [],
                timeout=self.settings.timeout,
                on_unavailable=cast("OnUnavailable", self.settings.on_unavailable),
            )
        return self._client

    # -- routing -------------------------------------------------------------------------

    async def async_filter_deployments(
        self,
        model: str,
        healthy_deployments: list[Any],
        messages: Any = None,
        request_kwargs: Any = None,
        parent_otel_span: Any = None,
    ) -> list[Any]:
        if not self.settings.admits(model):
            return healthy_deployments
        usable = [
            d
            for d in healthy_deployments
            if not self.unavailable.blocked(_request.pool_of_deployment(d, self.settings))
        ]
        return usable or healthy_deployments  # none left: admitd answers for them

    # -- acquire -------------------------------------------------------------------------

    async def async_pre_call_deployment_hook(
        self, kwargs: dict[str, Any], call_type: Any
    ) -> dict[str, Any] | None:
        api = _request.APIS.get(str(getattr(call_type, "value", call_type)))
        call_id = kwargs.get("litellm_call_id")
        if api is None or not isinstance(call_id, str):
            return None
        if not self.settings.admits(_request.model_group(kwargs)):
            return None
        held = await self._acquire(kwargs, api)
        displaced = self.leases.put(call_id, held)
        if displaced is not None:  # an earlier attempt that no hook saw end
            await self._settle(displaced, asyncio.CancelledError())
        task = asyncio.current_task()
        if task is not None and held.lease.admitted:
            done = functools.partial(self._task_done, call_id, held)
            task.add_done_callback(done)
            held.owner = (task, done)
        return None

    async def _acquire(self, kwargs: Mapping[str, Any], api: Any) -> Held:
        settings, client = self.settings, self.client
        pool = _request.pool_of_call(kwargs, settings)
        request = _request.provider_request(kwargs)
        reservation = await asyncio.to_thread(reserve, api, request)  # tiktoken: off the loop
        args: dict[str, Any] = dict(
            pool=pool,
            input_tokens=reservation.input_tokens,
            max_output_tokens=reservation.max_output_tokens,
            tenant=_request.tenant(kwargs, settings),
            priority=_request.priority(kwargs),
            labels=_request.labels(kwargs),
        )
        wait = _request.wait_timeout(kwargs, settings, time.time())
        model, provider = str(kwargs.get("model", "")), str(kwargs.get("custom_llm_provider", ""))
        try:
            try:
                # Fail fast first: a paused pool would make a waiting call wait out the pause,
                # where the router can rather try another deployment.
                lease = await client.acquire(**args)
            except Rejected as refused:
                if wait <= 0 or refused.retry_after is None or refused.reason in _FINAL:
                    raise
                lease = await client.acquire(**args, wait_timeout=wait)
        except Rejected as refused:
            if refused.reason is Reason.POOL_UNAVAILABLE:
                self.unavailable.mark(pool, refused.retry_after)
            raise refusal(refused, model=model, provider=provider) from refused
        except AdmitdError as error:  # Unavailable under fail_closed, or a bad request
            raise failed(error, model=model, provider=provider) from error
        hold = client.hold(lease)
        await hold.__aenter__()
        return Held(lease, hold, stream=bool(kwargs.get("stream")), model=request["model"])

    # -- release -------------------------------------------------------------------------

    async def async_post_call_success_deployment_hook(
        self, request_data: dict[str, Any], response: Any, call_type: Any
    ) -> Any:
        held = self.leases.peek(request_data.get("litellm_call_id"))
        if held is None or held.stream or hasattr(response, "__aiter__"):
            return None  # a stream's lease lasts until the stream ends
        self.leases.take(request_data.get("litellm_call_id"))
        held.lease.record(response)
        await self._settle(held, None)
        return None

    async def async_post_call_failure_deployment_hook(
        self,
        request_data: Mapping[str, Any],
        exception: Exception,
        call_type: Any,
        fallback_depth: int | None = None,
    ) -> None:
        await self._release(request_data.get("litellm_call_id"), exception)

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict[str, Any]
    ) -> AsyncGenerator[Any, None]:
        held = self.leases.take(request_data.get("litellm_call_id"))
        if held is None:
            async for item in response:
                yield item
            return
        failure: BaseException | None = None
        try:
            async for item in response:
                _read_chunk(held, item)
                yield item
        except BaseException as error:  # the client went away (GeneratorExit), or a failure
            failure = error
            raise
        finally:
            release = self._spawn(self._settle(held, failure))
            if failure is None:
                await release  # released before the proxy ends the response

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> Any:
        await self._release(request_data.get("litellm_call_id"), original_exception)
        return None

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        # A stream read without the proxy: LiteLLM's answer, assembled from the stream.
        await self._release(kwargs.get("litellm_call_id"), None, response_obj)

    async def _release(
        self, call_id: object, error: BaseException | None, answer: Any = None
    ) -> None:
        """Release what the call still holds, if anything (with ``answer``'s usage)."""
        held = self.leases.take(call_id)
        if held is not None:
            if answer is not None:
                held.lease.record(answer)
            await self._settle(held, error)

    def _task_done(self, call_id: str, held: Held, task: asyncio.Task[Any]) -> None:
        """The task that acquired ended; if it was cancelled mid-call, no hook will say so."""
        if task.cancelled() and self.leases.peek(call_id) is held:
            self.leases.take(call_id)
            self._spawn(self._settle(held, asyncio.CancelledError()))

    async def _settle(self, held: Held, error: BaseException | None) -> None:
        """Release: usage recorded, or the outcome and retry-after ``error`` implies."""
        lease = held.lease
        if held.owner is not None:
            held.owner[0].remove_done_callback(held.owner[1])
            held.owner = None
        if error is not None:
            lease.record_error(error)
            if getattr(error, "litellm_response_headers", None):  # the provider answered:
                lease.record(input_tokens=0, output_tokens=0)  # an error response bills nothing
            hint = provider_retry_after(error)
            if hint is not None:
                lease.provider_retry_after = hint
                self.unavailable.mark(lease.pool, hint)
        if held.stream and lease.usage is None and held.streamed:
            # No usage in the stream (it was cut short, or the provider sends none): the
            # reserved input and the text streamed so far, counted.
            text = "".join(held.streamed)
            encoding = encoding_for_model(held.model)
            output = await asyncio.to_thread(count_tokens, prompt=text, encoding=encoding)
            lease.record(input_tokens=lease.input_tokens, output_tokens=output)
        await held.hold.__aexit__(None, None, None)

    def _spawn(self, work: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)  # a strong reference until it is done
        task.add_done_callback(self._tasks.discard)
        return task


def provider_retry_after(error: BaseException) -> float | None:
    """The provider's retry-after on a LiteLLM exception: LiteLLM keeps the provider's
    headers in ``litellm_response_headers`` (its ``response`` is one of its own)."""
    if _status_code(error) not in _HINTED:
        return None
    for headers in (getattr(error, "litellm_response_headers", None), _headers(error)):
        if isinstance(headers, Mapping):
            hint = parse_retry_after(headers, time.time())
            if hint is not None:
                return hint
    return None


def _headers(error: BaseException) -> Any:
    return getattr(getattr(error, "response", None), "headers", None)


def _read_chunk(held: Held, chunk: Any) -> None:
    if getattr(chunk, "usage", None) is not None:
        held.lease.record(chunk)
        return
    for choice in getattr(chunk, "choices", None) or ():
        text = getattr(getattr(choice, "delta", None), "content", None)
        if isinstance(text, str) and text:
            held.streamed.append(text)
