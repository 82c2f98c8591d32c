"""The inference gateway: the one service every entry point calls.

`gateway_call(caller=..., route=..., body=...)` owns a call from admission to its usage record:

1. admission, in one thread hop: model resolution and the checks in the documented order, the
   parameters, and the token-quota reservation;
2. the concurrency slot and the request rate, on the event loop;
3. the upstream call;
4. one close path (`_Call.close`) that frees the slot, settles the quota and hands the usage record
   to the batch writer, exactly once, however the call ends: answered, refused, failed upstream,
   or abandoned by its client.

It returns an `Answer` or, for `stream: true`, a `Stream` of `Delta`s whose first piece has already
arrived (so a failure before any byte is still an ordinary `GatewayError`). The doors only translate:
the HTTP dialects (`chat/asgi.py`) render answers and pieces in their wire format, the playground
socket renders them as its messages. Model state is read from the database on every call, so an
enable/disable is in force on the next request in every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from chat import limits
from chat.db import run_db
from chat.errors import Failure, GatewayError
from chat.quota import quota_reserve
from chat.requests import DEFAULT_MAX_TOKENS, estimate_tokens, parse_request, request_text, reservation_size
from chat.usage import writer as usage_writer
from console.callers import Caller
from models_registry.models import Deployment, DeploymentState, LlmModel, Provider
from models_registry.providers import adapter_for
from models_registry.providers.base import Completion, InferenceRequest, Mode, StreamPiece, UpstreamError, Usage

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
    slot: str | None = None
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
        finally:
            # Recorded even if releasing the slot failed (a lost Redis): the quota must settle.
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
            settle = (counter, size, usage.total_tokens if usage else 0)
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
        usage_writer().submit(record=record, settle=settle)

    def estimated_usage(self, completion_pieces: int) -> Usage:
        assert self.request is not None
        return Usage(prompt_tokens=estimate_tokens(request_text(self.request)), completion_tokens=completion_pieces)


# --- admission (one thread hop) ----------------------------------------------------------------------
def _resolve(caller: Caller, route: Route, body: dict[str, Any]) -> tuple[Provider, LlmModel]:
    project = caller.project
    if route.deployment_id is not None:
        if route.project_id != project.pk:
            raise GatewayError(Failure.GROUP_NOT_FOUND, "The requested resource does not exist: check project_id.")
        deployment = (
            Deployment.objects.select_related("model__provider").filter(project=project, pk=route.deployment_id).first()
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
        provider = Provider.objects.filter(project=project, slug=route.group).first()
        if provider is None:
            raise GatewayError(Failure.GROUP_NOT_FOUND, f"Model group {route.group!r} was not found.")
    name = body.get("model")
    if name is None or name == "":
        raise GatewayError(Failure.MODEL_REQUIRED, "The model parameter is required.", param="model")
    if not isinstance(name, str):
        raise GatewayError(Failure.PARAM_INVALID, "model must be a string.", param="model")
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
        call.reservation = (taken[0], size)


# --- limits, on the event loop ---------------------------------------------------------------------
async def _take_limits(call: _Call) -> None:
    provider = call.provider
    assert provider is not None
    limiter = limits.limiter()
    if provider.max_concurrency is not None:
        slot = await limiter.acquire_slot(provider.pk, provider.max_concurrency, provider.timeout_seconds * 2 + 60)
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
        await _take_limits(call)
        assert call.request is not None and call.provider is not None and call.model is not None
        adapter = adapter_for(call.provider)
        if call.request.stream:
            stream = Stream(call, adapter.stream(call.request))
            await stream.open()
            return stream
        try:
            completion = await adapter.complete(call.request)
        except UpstreamError as exc:
            raise upstream_failure(exc) from None
        estimated = completion.usage is None
        usage = completion.usage or call.estimated_usage(sum(estimate_tokens(t) for t in completion.texts))
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
    except BaseException:
        # Cancelled (the client left during admission or the upstream call) or a bug: the slot and
        # the reservation are still given back.
        await call.close(status="cancelled")
        raise


class Stream:
    """A started upstream stream, iterated as `Delta`s the moment each arrives. After the last one,
    `usage` holds the call's usage; a failure mid-stream raises GatewayError from the iteration
    (the call is closed and recorded first)."""

    def __init__(self, call: _Call, pieces: AsyncIterator[StreamPiece]) -> None:
        assert call.model is not None and call.request is not None
        self._call = call
        self._pieces = pieces
        self._first: StreamPiece | None = None
        self.request_id = call.request_id
        self.model = call.model.name
        self.mode: Mode = call.request.mode
        self.ttft_ms: float | None = None
        self.usage: Usage | None = None
        self.completion_pieces = 0
        self._reported: Usage | None = None  # what the upstream said it spent, when it says

    async def open(self) -> None:
        try:
            self._first = await anext(self._pieces)
        except StopAsyncIteration:
            self._first = StreamPiece(finish_reason="stop")
        except UpstreamError as exc:
            await self._close_upstream()
            raise upstream_failure(exc) from None
        self.ttft_ms = round((time.perf_counter() - self._call.started) * 1000, 2)

    async def _close_upstream(self) -> None:
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
                try:
                    piece = await anext(self._pieces)
                except StopAsyncIteration:
                    piece = None
        except UpstreamError as exc:
            error = upstream_failure(exc)
            await self._end("error", error)
            raise error from None
        # Closed before the door writes its end marker, so a client that saw the end also sees
        # its usage recorded.
        await self._end("ok", None)

    async def _end(self, status: CallStatus, error: GatewayError | None) -> None:
        self.usage = self._reported or self._call.estimated_usage(self.completion_pieces)
        await self._close_upstream()
        await self._call.close(
            status=status, usage=self.usage, estimated=self._reported is None, error=error, ttft_ms=self.ttft_ms
        )

    async def aclose(self) -> None:
        """End the call early (the client went away or pressed stop): the upstream call is closed
        at once, the slot freed, and the call recorded as cancelled with what it had spent."""
        if self._call.closed:
            return
        await self._end("cancelled", None)
