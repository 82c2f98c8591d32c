"""The inference gateway: the one service every entry point calls.

`gateway_call(caller=..., route=..., body=...)` owns a call from admission to its usage record:

1. admission, in one thread hop: model resolution and the checks in the documented order, the
   parameters, and the token-quota reservation;
2. the concurrency slot and the request rate, on the event loop;
3. the upstream call;
4. one close path (`_Call.close`) that frees the slot, settles the quota and hands the usage record
   to the batch writer, exactly once, however the call ends: answered, refused, failed upstream,
   abandoned by its client, or broken by a lost Redis or an upstream answer of the wrong shape.

What an upstream reports it spent is held to what the call could have cost (`_Call.usage_of`): a
provider that reports negative or absurd counts can neither overcharge nor corrupt the records.

It returns an `Answer` or, for `stream: true`, a `Stream` of `Delta`s whose first piece has already
arrived (so a failure before any byte is still an ordinary `GatewayError`). The doors only translate:
the HTTP dialects (`chat/asgi.py`) render answers and pieces in their wire format, the playground
socket renders them as its messages. Model state is read from the database on every call, so an
enable/disable is in force on the next request in every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from django.conf import settings

from chat import limits
from chat.db import run_db
from chat.errors import Failure, GatewayError
from chat.quota import hold_window, quota_reserve
from chat.requests import (
    DEFAULT_MAX_TOKENS,
    check_name,
    estimate_tokens,
    parse_request,
    prompt_token_bound,
    request_text,
    reservation_size,
)
from chat.usage import Settlement
from chat.usage import writer as usage_writer
from console import metrics
from console.callers import Caller
from models_registry.models import Deployment, DeploymentState, LlmModel, Provider
from models_registry.providers import adapter_for
from models_registry.providers.base import Completion, InferenceRequest, Mode, StreamPiece, UpstreamError, Usage

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Where a call came in. Recorded with its usage, and it decides the few rules that differ by
# dialect (Pangu's n and role-less turns).
EntryPoint = Literal["openai", "cloudbase", "pangu", "playground"]
CallStatus = Literal["ok", "error", "cancelled"]


@dataclass(frozen=True)
class Route:
    """Where a call is addressed: a group (CloudBase), a deployment (Pangu), or neither (OpenAI and
    the playground, which name the model, optionally as "group/model")."""

    entry: EntryPoint
    mode: Mode
    group: str | None = None
    project_id: str | None = None
    deployment_id: str | None = None


@dataclass(frozen=True)
class Answer:
    """A whole (non-streamed) answer."""

    request_id: str
    model: str
    mode: Mode
    completion: Completion
    usage: Usage


@dataclass(frozen=True)
class Delta:
    """One streamed piece: text as it arrives, and the finish reason on the last one."""

    text: str
    finish_reason: str | None = None


def new_request_id() -> str:
    return uuid.uuid4().hex


# --- the call's ledger: everything its one close path needs -----------------------------------------
@dataclass
class _Call:
    caller: Caller
    route: Route
    request_id: str
    started: float
    provider: Provider | None = None
    model: LlmModel | None = None
    request: InferenceRequest | None = None
    reservation: tuple[int, int] | None = None  # (quota counter id, tokens reserved)
    window: int | None = None  # the hold window the reservation is journaled in
    slot: str | None = None
    upstream_called: bool = False  # the request went out: its prompt may be charged for
    closed: bool = field(default=False, repr=False)

    async def close(
        self,
        *,
        status: CallStatus,
        usage: Usage | None = None,
        estimated: bool = False,
        error: GatewayError | None = None,
        ttft_ms: float | None = None,
    ) -> None:
        """Free the slot, settle the quota and record the call. Idempotent: the first close wins,
        so a path that ends a call twice (a failure inside a cancellation) cannot charge twice."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.slot is not None and self.provider is not None:
                slot, self.slot = self.slot, None
                await limits.limiter().release_slot(self.provider.pk, slot)
        except limits.LimiterUnavailable as exc:
            # The lease is no longer renewed, so the slot frees itself within a lease.
            logger.warning("could not release a concurrency slot (its lease will end): %s", exc)
        finally:
            # Recorded even if releasing the slot failed or was cancelled: the quota must settle.
            self._record(status=status, usage=usage, estimated=estimated, error=error, ttft_ms=ttft_ms)

    def _record(
        self,
        *,
        status: CallStatus,
        usage: Usage | None,
        estimated: bool,
        error: GatewayError | None,
        ttft_ms: float | None,
    ) -> None:
        settle = None
        if self.reservation is not None:
            counter, size = self.reservation
            settle = Settlement(counter, size, usage.total_tokens if usage else 0, self.window)
        record = {
            "project_id": self.caller.project.pk,
            "api_key_id": self.caller.api_key_id,
            "user_id": self.caller.user_id,
            "provider_id": self.provider.pk if self.provider else None,
            "model_id": self.model.pk if self.model else None,
            "model_name": self.model.name if self.model else "",
            "dialect": self.route.entry,
            "mode": self.route.mode,
            "stream": bool(self.request and self.request.stream),
            "prompt_tokens": usage.prompt_tokens if usage else 0,
            "completion_tokens": usage.completion_tokens if usage else 0,
            "total_tokens": usage.total_tokens if usage else 0,
            "usage_estimated": estimated,
            "latency_ms": round((time.perf_counter() - self.started) * 1000, 2),
            "ttft_ms": ttft_ms,
            "status": status,
            # A stream's headers went out as 200 before any failure in it.
            "http_status": 200 if error is None or ttft_ms is not None else error.status,
            "error_code": error.failure.name if error else "",
            "request_id": self.request_id,
        }
        # Every call passes here once, after it has answered: /metrics counts it from its record.
        if metrics.COUNTING:
            metrics.observe_call(record)
        usage_writer().submit(record=record, settle=settle)

    def estimated_usage(self, completion_pieces: int) -> Usage:
        assert self.request is not None
        return Usage(prompt_tokens=estimate_tokens(request_text(self.request)), completion_tokens=completion_pieces)

    def usage_of(self, reported: Usage | None, completion_estimate: int) -> tuple[Usage, bool]:
        """The usage to charge and record, and whether it is the gateway's own count: the upstream's
        report when it has one, each count held to what the call could have cost. A count below zero
        is replaced by the gateway's estimate; one above the bound is cut to it (the prompt: every
        byte a token plus a few a message; the completion: max_tokens, else the context, per choice)."""
        estimate = self.estimated_usage(completion_estimate)
        if reported is None:
            return estimate, True
        assert self.request is not None and self.model is not None
        prompt_bound = prompt_token_bound(self.request)
        completion_bound = (self.request.max_tokens or self.model.context_length) * self.request.n
        bounded = Usage(
            prompt_tokens=_held(reported.prompt_tokens, estimate.prompt_tokens, prompt_bound),
            completion_tokens=_held(reported.completion_tokens, estimate.completion_tokens, completion_bound),
        )
        if bounded == reported:
            return reported, False
        logger.warning(
            "model group %s reported impossible usage (prompt %d, completion %d tokens) for call %s; "
            "recorded as prompt %d, completion %d",
            self.provider.slug if self.provider else "?",
            reported.prompt_tokens,
            reported.completion_tokens,
            self.request_id,
            bounded.prompt_tokens,
            bounded.completion_tokens,
        )
        return bounded, True

    def spent_so_far(self, completion_pieces: int = 0) -> Usage | None:
        """What a call that ends without the upstream's report is charged: nothing before the
        request went out, the estimate of its prompt and of the pieces seen after."""
        return self.estimated_usage(completion_pieces) if self.upstream_called else None


def _held(reported: int, estimate: int, bound: int) -> int:
    if reported < 0:
        return min(estimate, bound)
    return min(reported, bound)


# --- admission (one thread hop) ----------------------------------------------------------------------
def _resolve(caller: Caller, route: Route, body: dict[str, Any]) -> tuple[Provider, LlmModel]:
    project = caller.project
    if route.deployment_id is not None:
        if route.project_id != project.pk:
            raise GatewayError(Failure.GROUP_NOT_FOUND, "The requested resource does not exist: check project_id.")
        # A NUL is in no stored id, and PostgreSQL refuses the query that would look for one.
        deployment = (
            None
            if "\x00" in route.deployment_id
            else Deployment.objects.select_related("model__provider")
            .filter(project=project, pk=route.deployment_id)
            .first()
        )
        if deployment is None:
            # Deleted, or never created: the appendix's missing resource (PANGU.3254).
            raise GatewayError(
                Failure.GROUP_NOT_FOUND,
                f"The requested resource does not exist: no deployment {route.deployment_id!r} in this project "
                "(deleted, or never created); check project_id and deployment_id.",
            )
        if deployment.state != DeploymentState.RUNNING:
            # Present but stopped: the appendix's "not running" (PANGU.3259), told apart from a deleted one.
            raise GatewayError(
                Failure.MODEL_DISABLED,
                f"NLP service status is not running or have been deleted: deployment {deployment.pk!r} exists "
                f"but is {deployment.state}; start it on Models → Deployments.",
            )
        return deployment.model.provider, deployment.model
    provider = None
    if route.group is not None:
        no_nul = "\x00" not in route.group  # as for deployment ids
        provider = Provider.objects.filter(project=project, slug=route.group).first() if no_nul else None
        if provider is None:
            raise GatewayError(Failure.GROUP_NOT_FOUND, f"Model group {route.group!r} was not found.")
    name = body.get("model")
    if name is None or name == "":
        raise GatewayError(Failure.MODEL_REQUIRED, "The model parameter is required.", param="model")
    if not isinstance(name, str):
        raise GatewayError(Failure.PARAM_INVALID, "model must be a string.", param="model")
    check_name(name, "model")  # before the name reaches the database driver
    models = LlmModel.objects.select_related("provider").filter(provider__project=project)
    if provider is not None:
        models = models.filter(provider=provider)
    elif "/" in name and not models.filter(name=name).exists():
        # "group/model" picks a group when names collide.
        group, _, name = name.partition("/")
        models = models.filter(provider__slug=group)
    model = models.filter(name=name).order_by("provider__slug").first()
    if model is None:
        raise GatewayError(Failure.MODEL_NOT_SUPPORTED, f"Model {name!r} is not supported here.", param="model")
    return model.provider, model


def _check_model(provider: Provider, model: LlmModel, mode: Mode) -> None:
    if not model.enabled or not provider.enabled:
        raise GatewayError(
            Failure.MODEL_DISABLED, f"Model {model.name!r} is disabled. Enable it in the console.", param="model"
        )
    if not model.cap_infer:
        raise GatewayError(Failure.NO_INFERENCE, f"Model {model.name!r} does not offer inference.", param="model")
    if mode == "chat" and not model.supports_chat:
        raise GatewayError(
            Failure.NO_INFERENCE,
            f"Model {model.name!r} is a text-completion model without a chat template: call /completions.",
            param="model",
        )
    if mode == "text" and not model.supports_completions:
        raise GatewayError(
            Failure.NO_INFERENCE, f"Model {model.name!r} serves chat only: call /chat/completions.", param="model"
        )
    if not provider.is_configured:
        raise GatewayError(
            Failure.CONFIG_MISSING, f"Model group {provider.slug!r} lacks the API key or configuration it needs."
        )


def _admit(call: _Call, body: dict[str, Any]) -> None:
    """The checks in the documented order; fills in the call as each passes, so a refusal is
    recorded with as much as was known."""
    provider, model = _resolve(call.caller, call.route, body)
    call.provider, call.model = provider, model
    _check_model(provider, model, call.route.mode)
    request = parse_request(body=body, mode=call.route.mode, pangu=call.route.entry == "pangu", model=model)
    call.request = request
    if provider.token_quota is not None:
        size = reservation_size(request, model)
        if request.max_tokens is None:
            # Without a cap the upstream could spend past the reservation.
            request.max_tokens = min(DEFAULT_MAX_TOKENS, model.context_length)
        taken = quota_reserve(provider=provider, tokens=size)
        if taken is None:
            raise GatewayError(Failure.QUOTA_EXCEEDED, f"Model group {provider.slug!r} has used up its token quota.")
        call.reservation, call.window = (taken[0], size), hold_window()


# --- limits, on the event loop ---------------------------------------------------------------------
async def _take_limits(call: _Call) -> None:
    provider = call.provider
    assert provider is not None
    limiter = limits.limiter()
    try:
        await _take_slot_and_rate(call, provider, limiter)
    except limits.LimiterUnavailable as exc:
        # Neither a free slot nor the rate can be confirmed: refused, as at the limit, for a retry.
        logger.warning("refused a call to %s: %s", provider.slug, exc)
        raise GatewayError(
            Failure.CONCURRENCY_EXCEEDED,
            f"Model group {provider.slug!r}'s limits cannot be checked right now; retry in a moment.",
            retry_after=1,
        ) from None


async def _take_slot_and_rate(call: _Call, provider: Provider, limiter: limits.Limiter) -> None:
    if provider.max_concurrency is not None:
        slot = await limiter.acquire_slot(provider.pk, provider.max_concurrency, limits.LEASE_SECONDS)
        if slot is None:
            raise GatewayError(
                Failure.CONCURRENCY_EXCEEDED,
                f"Model group {provider.slug!r} is at its limit of {provider.max_concurrency} concurrent requests.",
                retry_after=1,
            )
        call.slot = slot
    if provider.rps is not None:
        wait = await limiter.take_rate(provider.pk, provider.rps)
        if wait > 0:
            raise GatewayError(
                Failure.RATE_EXCEEDED,
                f"Model group {provider.slug!r} allows {provider.rps:g} requests per second.",
                retry_after=max(1, math.ceil(wait)),
            )


def upstream_failure(exc: UpstreamError) -> GatewayError:
    if exc.kind == "timeout":
        return GatewayError(Failure.UPSTREAM_TIMEOUT, f"The model did not answer in time: {exc}.")
    if exc.kind == "rate_limited":
        return GatewayError(
            Failure.UPSTREAM_RATE_LIMITED,
            f"The model's provider is throttling: {exc}.",
            retry_after=exc.retry_after or 1,
        )
    if exc.kind == "unavailable" and exc.retry_after:
        # The upstream is on its way (the embedded model server loading its weights): a wait helps.
        return GatewayError(Failure.MODEL_STARTING, f"{exc}.", retry_after=exc.retry_after)
    return GatewayError(Failure.UPSTREAM_ERROR, f"The model's provider failed: {exc}.")


def _misshapen(call: _Call, exc: Exception) -> UpstreamError:
    """An adapter that broke on an answer it did not expect: the upstream's answer was of the wrong
    shape, which the caller sees as an upstream failure (never a 500)."""
    logger.error("adapter of %s failed on the upstream's answer", call.provider, exc_info=exc)
    return UpstreamError("bad_response", "upstream answered in a shape the gateway cannot read")


def _deadline_passed() -> UpstreamError:
    return UpstreamError(
        "timeout", f"the call reached the longest a call may last ({settings.GATEWAY_MAX_CALL_SECONDS:g} s)"
    )


class _Deadline:
    """The end of the longest a call may last: one timer for the whole call, which cancels the wait
    for the upstream under way when it fires. (`asyncio.timeout` around each streamed piece would
    arm and disarm a timer per piece, some 15 µs each.)"""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.passed = False
        self._waiter: asyncio.Task[Any] | None = None
        self._timer = loop.call_at(loop.time() + settings.GATEWAY_MAX_CALL_SECONDS, self._fire)

    def _fire(self) -> None:
        self.passed = True
        if self._waiter is not None:
            self._waiter.cancel()

    def cancel(self) -> None:
        self._timer.cancel()

    async def wait(self, awaitable: Awaitable[T]) -> T:
        """Await the upstream; raises TimeoutError once the deadline has passed."""
        if self.passed:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()  # never started: closed, not left to warn
            raise TimeoutError
        task = asyncio.current_task()
        self._waiter = task
        try:
            return await awaitable
        except asyncio.CancelledError:
            # Ours alone (no one else asked to cancel the task): the deadline, not a cancellation.
            if self.passed and task is not None and task.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            self._waiter = None


# --- the service -----------------------------------------------------------------------------------
async def gateway_call(
    *,
    caller: Caller,
    route: Route,
    body: dict[str, Any],
    request_id: str | None = None,
    started: float | None = None,
) -> Answer | Stream:
    """Run one call for an authenticated caller: the checks in order, limits, the upstream, and the
    usage record. Raises GatewayError for a refusal or an upstream failure before any answer (the
    call is then already closed and recorded). A returned Stream must be iterated to its end or
    closed with `aclose()`; either ends the call."""
    call = _Call(
        caller=caller,
        route=route,
        request_id=request_id or new_request_id(),
        started=time.perf_counter() if started is None else started,
    )
    try:
        if usage_writer().closing:
            # This process is shutting down: a call admitted now could outlive the last flush of
            # usage and quota. Another process, or this one restarted, takes the retry.
            raise GatewayError(
                Failure.CONCURRENCY_EXCEEDED, "The console is restarting; retry in a moment.", retry_after=1
            )
        # Shielded: a cancellation (the client left, shutdown) must not outrun the thread, which may
        # be reserving quota at this moment; the close below gives back only what it can see.
        admission = asyncio.ensure_future(run_db(_admit, call, body))
        try:
            await asyncio.shield(admission)
        except asyncio.CancelledError:
            await asyncio.wait([admission])
            raise
        finally:
            if call.reservation is not None and call.window is not None:
                # Journaled (in the writer's next batch) so that, should this process die before the
                # call settles, the reconcile finds the reservation.
                usage_writer().hold(counter=call.reservation[0], window=call.window, tokens=call.reservation[1])
        await _take_limits(call)
        assert call.request is not None and call.provider is not None and call.model is not None
        adapter = adapter_for(call.provider)
        deadline = _Deadline()
        call.upstream_called = True
        if call.request.stream:
            stream = Stream(call, adapter.stream(call.request), deadline)
            await stream.open()
            return stream
        try:
            completion = await deadline.wait(adapter.complete(call.request))
        except UpstreamError as exc:
            raise upstream_failure(exc) from None
        except TimeoutError:
            raise upstream_failure(_deadline_passed()) from None
        except Exception as exc:
            raise upstream_failure(_misshapen(call, exc)) from None
        finally:
            deadline.cancel()
        usage, estimated = call.usage_of(completion.usage, sum(estimate_tokens(t) for t in completion.texts))
        await call.close(status="ok", usage=usage, estimated=estimated)
        return Answer(
            request_id=call.request_id,
            model=call.model.name,
            mode=call.request.mode,
            completion=completion,
            usage=usage,
        )
    except GatewayError as error:
        await call.close(status="error", error=error)
        raise
    except asyncio.CancelledError:
        # The client left during admission, the limits or before the first piece: the slot and the
        # reservation are given back, and a prompt that went out is charged.
        await call.close(status="cancelled", usage=call.spent_so_far(), estimated=True)
        raise
    except BaseException as exc:
        # A bug: the slot and the reservation are still given back, and the call recorded.
        await call.close(status="error", error=GatewayError(Failure.INTERNAL, f"{type(exc).__name__}"))
        raise


class Stream:
    """A started upstream stream, iterated as `Delta`s the moment each arrives. After the last one,
    `usage` holds the call's usage; a failure mid-stream raises GatewayError from the iteration
    (the call is closed and recorded first)."""

    def __init__(self, call: _Call, pieces: AsyncIterator[StreamPiece], deadline: _Deadline) -> None:
        assert call.model is not None and call.request is not None
        self._call = call
        self._pieces = pieces
        self._deadline = deadline
        self._first: StreamPiece | None = None
        self.request_id = call.request_id
        self.model = call.model.name
        self.mode: Mode = call.request.mode
        self.ttft_ms: float | None = None
        self.usage: Usage | None = None
        self.completion_pieces = 0
        self._reported: Usage | None = None  # what the upstream said it spent, when it says
        self._in_flight = False  # counted in /metrics' streams in flight (from open to end)

    async def _next(self) -> StreamPiece | None:
        """The next piece, None at the end. Raises UpstreamError for every failure of the upstream,
        its answer's shape and the call's deadline included."""
        try:
            return await self._deadline.wait(anext(self._pieces))
        except StopAsyncIteration:
            return None
        except UpstreamError:
            raise
        except TimeoutError:
            raise _deadline_passed() from None
        except Exception as exc:
            raise _misshapen(self._call, exc) from None

    async def open(self) -> None:
        try:
            self._first = await self._next() or StreamPiece(finish_reason="stop")
        except UpstreamError as exc:
            await self._close_upstream()
            raise upstream_failure(exc) from None
        except BaseException:
            await self._close_upstream()  # cancelled: the upstream call ends with it
            raise
        self.ttft_ms = round((time.perf_counter() - self._call.started) * 1000, 2)
        if metrics.COUNTING:
            self._in_flight = True
            metrics.stream_opened()

    async def _close_upstream(self) -> None:
        self._deadline.cancel()
        with contextlib.suppress(Exception):
            await self._pieces.aclose()  # type: ignore[attr-defined]

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._relay()

    async def _relay(self) -> AsyncIterator[Delta]:
        piece = self._first
        self._first = None
        try:
            while piece is not None:
                if piece.usage is not None:
                    self._reported = piece.usage
                if piece.text or piece.finish_reason:
                    self.completion_pieces += 1 if piece.text else 0
                    yield Delta(text=piece.text, finish_reason=piece.finish_reason)
                piece = await self._next()
            # Closed before the door writes its end marker, so a client that saw the end also sees
            # its usage recorded.
            await self._end("ok", None)
        except UpstreamError as exc:
            error = upstream_failure(exc)
            await self._end("error", error)
            raise error from None
        finally:
            # However else the relay stops (its door closed it, or it was cancelled), the call ends.
            await self._end("cancelled", None)

    async def _end(self, status: CallStatus, error: GatewayError | None) -> None:
        if self._in_flight:
            self._in_flight = False
            metrics.stream_ended()
        if self._call.closed:
            return
        self.usage, estimated = self._call.usage_of(self._reported, self.completion_pieces)
        await self._close_upstream()
        await self._call.close(status=status, usage=self.usage, estimated=estimated, error=error, ttft_ms=self.ttft_ms)

    async def aclose(self) -> None:
        """End the call early (the client went away or pressed stop): the upstream call is closed
        at once, the slot freed, and the call recorded as cancelled with what it had spent."""
        if self._call.closed:
            return
        await self._end("cancelled", None)
