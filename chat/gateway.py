"""The inference gateway: one path for every dialect.

Per call: one thread hop for admission (auth, model resolution, parameter checks, quota
reservation: the checks run in the documented order), the concurrency slot and rate check
on the event loop, the upstream call, and one hop to settle the quota and record usage.
Model state is read from the database on every call, so an enable/disable is in force on
the next request in every process.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from chat import limits
from chat.auth import Caller, RequestFacts, authenticate_request
from chat.dialects import Dialect
from chat.errors import Failure, GatewayError
from chat.quota import quota_reserve
from chat.usage import writer as usage_writer
from console.models import Project
from models_registry.models import Deployment, DeploymentState, LlmModel, Provider
from models_registry.providers import adapter_for
from models_registry.providers.base import InferenceRequest, Mode, StreamPiece, UpstreamError, Usage

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 1024
MAX_N = 4


@dataclass(frozen=True)
class Route:
    """Where a call is addressed: a group (CloudBase), a deployment (Pangu), or neither (OpenAI)."""

    dialect: Dialect
    mode: Mode
    group: str | None = None
    project_id: str | None = None
    deployment_id: str | None = None


@dataclass
class Admitted:
    caller: Caller
    provider: Provider
    model: LlmModel
    request: InferenceRequest
    reservation: tuple[int, int] | None  # (counter id, tokens)
    started: float
    request_id: str
    slot: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def new_request_id() -> str:
    return uuid.uuid4().hex


# --- parameter checks (pure) -----------------------------------------------------------------------
def _estimate_tokens(text: str) -> int:
    """An upper-leaning estimate: one token per CJK character, one per 4 other characters."""
    cjk = sum(1 for ch in text if "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff")
    return cjk + math.ceil((len(text) - cjk) / 4)


def _bool(value: Any, name: str) -> bool:
    if value in (True, "true", "True", 1):
        return True
    if value in (None, False, "false", "False", 0):
        return False
    raise GatewayError(Failure.PARAM_INVALID, f"{name} must be true or false.", param=name)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise GatewayError(Failure.PARAM_INVALID, f"{name} must be a number between {low:g} and {high:g}.", param=name)
    return float(value)


def _messages(raw: Any, *, pangu: bool) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise GatewayError(Failure.PARAM_INVALID, "messages must be a non-empty list.", param="messages")
    messages: list[dict[str, str]] = []
    turn = "user"
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("content"), str):
            raise GatewayError(
                Failure.PARAM_INVALID, f"messages[{i}] must be an object with a string content.", param="messages"
            )
        role = item.get("role")
        if role is None and pangu:
            # Pangu: role-less turns alternate user/assistant.
            role, turn = turn, ("assistant" if turn == "user" else "user")
        if role not in {"system", "user", "assistant", "tool"}:
            raise GatewayError(
                Failure.PARAM_INVALID, f"messages[{i}].role must be system, user or assistant.", param="messages"
            )
        messages.append({"role": str(role), "content": item["content"]})
    return messages


def parse_request(*, body: dict[str, Any], route: Route, model: LlmModel) -> InferenceRequest:
    pangu = route.dialect.name == "pangu"
    stream = _bool(body.get("stream"), "stream")
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int):
        raise GatewayError(Failure.PARAM_INVALID, "n must be an integer.", param="n")
    if stream and n != 1:
        raise GatewayError(
            Failure.N_STREAM_INVALID, "The parameter [n] can only be 1 when calling streaming.", param="n"
        )
    if not stream and not 1 <= n <= (2 if pangu else MAX_N):
        failure = Failure.N_UNARY_INVALID if pangu else Failure.PARAM_INVALID
        high = 2 if pangu else MAX_N
        raise GatewayError(failure, f"The parameter [n] can only be 1 to {high} when calling non-streaming.", param="n")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= model.context_length
    ):
        raise GatewayError(
            Failure.MAX_TOKENS_INVALID,
            f"max_tokens must be an integer from 1 to the model's context length ({model.context_length}).",
            param="max_tokens",
        )
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop)):
        raise GatewayError(Failure.PARAM_INVALID, "stop must be a string or a list of up to 4 strings.", param="stop")
    request = InferenceRequest(
        mode=route.mode,
        model=model.name,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0, 2),
        top_p=_number(body, "top_p", 0, 1),
        stop=stop,
        n=n,
        stream=stream,
    )
    if route.mode == "chat":
        request.messages = _messages(body.get("messages"), pangu=pangu)
        text = "".join(m["content"] for m in request.messages)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise GatewayError(Failure.PARAM_INVALID, "prompt must be a non-empty string.", param="prompt")
        request.prompt = prompt
        text = prompt
    if _estimate_tokens(text) + (max_tokens or 0) > model.context_length:
        raise GatewayError(
            Failure.CONTENT_TOO_LONG,
            f"The content and max_tokens exceed the model's context length ({model.context_length} tokens).",
            param="messages" if route.mode == "chat" else "prompt",
        )
    return request


def _reservation_size(request: InferenceRequest, model: LlmModel) -> int:
    # An upper bound of what the call can spend: every prompt byte a token, plus the completion cap.
    text = "".join(m["content"] for m in request.messages) if request.mode == "chat" else request.prompt
    prompt_bound = len(text.encode()) + 8 * max(1, len(request.messages))
    return prompt_bound + (request.max_tokens or min(DEFAULT_MAX_TOKENS, model.context_length)) * request.n


# --- admission (one thread hop) --------------------------------------------------------------------
def _resolve(caller: Caller, route: Route, body: dict[str, Any]) -> tuple[Provider, LlmModel]:
    project: Project = caller.project
    if route.deployment_id is not None:
        if route.project_id != project.pk:
            raise GatewayError(Failure.GROUP_NOT_FOUND, "The requested resource does not exist: check project_id.")
        deployment = (
            Deployment.objects.select_related("model__provider").filter(project=project, pk=route.deployment_id).first()
        )
        if deployment is None:
            raise GatewayError(Failure.GROUP_NOT_FOUND, "The requested resource does not exist: check deployment_id.")
        model = deployment.model
        if deployment.state != DeploymentState.RUNNING:
            raise GatewayError(Failure.MODEL_DISABLED, "The deployment is not running.")
        return model.provider, model
    if route.group is not None:
        provider = Provider.objects.filter(project=project, slug=route.group).first()
        if provider is None:
            raise GatewayError(Failure.GROUP_NOT_FOUND, f"Model group {route.group!r} was not found.")
    else:
        provider = None
    name = body.get("model")
    if name is None or name == "":
        raise GatewayError(Failure.MODEL_REQUIRED, "The model parameter is required.", param="model")
    if not isinstance(name, str):
        raise GatewayError(Failure.PARAM_INVALID, "model must be a string.", param="model")
    models = LlmModel.objects.select_related("provider").filter(provider__project=project)
    if provider is not None:
        models = models.filter(provider=provider)
    elif "/" in name and not models.filter(name=name).exists():
        # OpenAI dialect: "group/model" picks a group when names collide.
        group, _, name = name.partition("/")
        models = models.filter(provider__slug=group)
    model = models.filter(name=name).order_by("provider__slug").first()
    if model is None:
        raise GatewayError(Failure.MODEL_NOT_SUPPORTED, f"Model {name!r} is not supported here.", param="model")
    return model.provider, model


def admit(facts: RequestFacts, route: Route, body: dict[str, Any], request_id: str, started: float) -> Admitted:
    """Run the checks in order. A GatewayError raised after authentication carries `.caller`,
    so the refusal is still recorded against the caller's project."""
    caller = authenticate_request(facts)
    try:
        return _admit(caller, route, body, request_id, started)
    except GatewayError as error:
        error.caller = caller  # type: ignore[attr-defined]
        raise


def _admit(caller: Caller, route: Route, body: dict[str, Any], request_id: str, started: float) -> Admitted:
    provider, model = _resolve(caller, route, body)
    if not model.enabled or not provider.enabled:
        raise GatewayError(
            Failure.MODEL_DISABLED, f"Model {model.name!r} is disabled. Enable it in the console.", param="model"
        )
    if not model.cap_infer:
        raise GatewayError(Failure.NO_INFERENCE, f"Model {model.name!r} does not offer inference.", param="model")
    if route.mode == "chat" and not model.supports_chat:
        raise GatewayError(
            Failure.NO_INFERENCE,
            f"Model {model.name!r} is a text-completion model without a chat template: call /completions.",
            param="model",
        )
    if route.mode == "text" and not model.supports_completions:
        raise GatewayError(
            Failure.NO_INFERENCE, f"Model {model.name!r} serves chat only: call /chat/completions.", param="model"
        )
    if not provider.is_configured:
        raise GatewayError(
            Failure.CONFIG_MISSING, f"Model group {provider.slug!r} lacks the API key or configuration it needs."
        )
    request = parse_request(body=body, route=route, model=model)
    reservation = None
    if provider.token_quota is not None:
        size = _reservation_size(request, model)
        if request.max_tokens is None:
            # Without a cap the upstream could spend past the reservation.
            request.max_tokens = min(DEFAULT_MAX_TOKENS, model.context_length)
        taken = quota_reserve(provider=provider, tokens=size)
        if taken is None:
            raise GatewayError(Failure.QUOTA_EXCEEDED, f"Model group {provider.slug!r} has used up its token quota.")
        reservation = (taken[0], size)
    return Admitted(
        caller=caller,
        provider=provider,
        model=model,
        request=request,
        reservation=reservation,
        started=started,
        request_id=request_id,
    )


# --- limits on the event loop ----------------------------------------------------------------------
async def take_limits(admitted: Admitted) -> None:
    provider = admitted.provider
    limiter = limits.limiter()
    if provider.max_concurrency is not None:
        slot = await limiter.acquire_slot(provider.pk, provider.max_concurrency, provider.timeout_seconds * 2 + 60)
        if slot is None:
            raise GatewayError(
                Failure.CONCURRENCY_EXCEEDED,
                f"Model group {provider.slug!r} is at its limit of {provider.max_concurrency} concurrent requests.",
                retry_after=1,
            )
        admitted.slot = slot
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
    return GatewayError(Failure.UPSTREAM_ERROR, f"The model's provider failed: {exc}.")


# --- settlement (batched, off the request path) -----------------------------------------------
def record(
    *,
    admitted: Admitted | None,
    route: Route,
    usage: Usage | None,
    estimated: bool,
    status: str,
    http_status: int,
    error: GatewayError | None,
    ttft_ms: float | None,
    request_id: str,
    started: float,
    caller: Caller | None,
) -> None:
    """Hand the call's usage record and quota settlement to the batch writer. Never blocks."""
    settle = None
    if admitted is not None and admitted.reservation is not None:
        counter, size = admitted.reservation
        settle = (counter, size, usage.total_tokens if usage else 0)
        admitted.reservation = None  # settled once, whatever path ends the call
    who = admitted.caller if admitted else caller
    fields = None
    if who is not None:
        fields = {
            "project_id": who.project.pk,
            "api_key_id": who.api_key_id,
            "user_id": who.user_id,
            "provider_id": admitted.provider.pk if admitted else None,
            "model_id": admitted.model.pk if admitted else None,
            "model_name": admitted.model.name if admitted else "",
            "dialect": route.dialect.name,
            "mode": route.mode,
            "stream": bool(admitted and admitted.request.stream),
            "prompt_tokens": usage.prompt_tokens if usage else 0,
            "completion_tokens": usage.completion_tokens if usage else 0,
            "total_tokens": usage.total_tokens if usage else 0,
            "usage_estimated": estimated,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "ttft_ms": ttft_ms,
            "status": status,
            "http_status": http_status,
            "error_code": error.failure.name if error else "",
            "request_id": request_id,
        }
    usage_writer().submit(record=fields, settle=settle)


async def release(admitted: Admitted) -> None:
    if admitted.slot is not None:
        slot, admitted.slot = admitted.slot, None
        await limits.limiter().release_slot(admitted.provider.pk, slot)


# --- the two call shapes ---------------------------------------------------------------------------
def _estimated_usage(request: InferenceRequest, completion_pieces: int) -> Usage:
    text = "".join(m["content"] for m in request.messages) if request.mode == "chat" else request.prompt
    return Usage(prompt_tokens=_estimate_tokens(text), completion_tokens=completion_pieces)


async def run_unary(admitted: Admitted) -> tuple[dict[str, Any], Usage, bool]:
    """Call the upstream once; returns the dialect's answer body, the usage and whether it was estimated."""
    adapter = adapter_for(admitted.provider)
    try:
        completion = await adapter.complete(admitted.request)
    except UpstreamError as exc:
        raise upstream_failure(exc) from None
    estimated = completion.usage is None
    usage = completion.usage or _estimated_usage(admitted.request, sum(_estimate_tokens(t) for t in completion.texts))
    return completion_body(admitted, completion, usage), usage, estimated


def completion_body(admitted: Admitted, completion: Any, usage: Usage) -> dict[str, Any]:
    return admitted.meta["dialect"].answer(
        mode=admitted.request.mode,
        completion=completion,
        usage=usage,
        model=admitted.model.name,
        request_id=admitted.request_id,
    )


class Stream:
    """A started upstream stream. `open()` waits for the first piece, so a failure before any byte
    still becomes a proper error response; `relay()` then sends each piece the moment it arrives."""

    def __init__(self, admitted: Admitted, route: Route) -> None:
        self.admitted = admitted
        self.route = route
        self.pieces: AsyncIterator[StreamPiece] = adapter_for(admitted.provider).stream(admitted.request)
        self.first: StreamPiece | None = None
        self.ttft_ms: float | None = None

    async def open(self) -> None:
        try:
            self.first = await anext(self.pieces)
        except StopAsyncIteration:
            self.first = StreamPiece(finish_reason="stop")
        except UpstreamError as exc:
            await self._close_upstream()
            raise upstream_failure(exc) from None
        self.ttft_ms = round((time.perf_counter() - self.admitted.started) * 1000, 2)

    async def _close_upstream(self) -> None:
        with contextlib.suppress(Exception):
            await self.pieces.aclose()  # type: ignore[attr-defined]

    async def _finish(self, *, status: str, usage: Usage | None, count: int, error: GatewayError | None) -> None:
        await self._close_upstream()
        await release(self.admitted)
        final = usage or _estimated_usage(self.admitted.request, count)
        record(
            admitted=self.admitted,
            route=self.route,
            usage=final,
            estimated=usage is None,
            status=status,
            http_status=200,  # the headers went out as 200 before any failure
            error=error,
            ttft_ms=self.ttft_ms,
            request_id=self.admitted.request_id,
            started=self.admitted.started,
            caller=None,
        )

    async def relay(self) -> AsyncIterator[bytes]:
        admitted, dialect = self.admitted, self.route.dialect
        model, rid, mode = admitted.model.name, admitted.request_id, admitted.request.mode
        count, usage, finished = 0, None, False
        try:
            piece: StreamPiece | None = self.first
            first = True
            while piece is not None:
                if piece.usage is not None:
                    usage = piece.usage
                if piece.text or piece.finish_reason:
                    count += 1 if piece.text else 0
                    yield dialect.chunk(
                        mode=mode,
                        text=piece.text,
                        finish_reason=piece.finish_reason,
                        first=first,
                        model=model,
                        request_id=rid,
                    )
                    first = False
                try:
                    piece = await anext(self.pieces)
                except StopAsyncIteration:
                    piece = None
            final_usage = usage or _estimated_usage(admitted.request, count)
            if admitted.meta.get("include_usage") and (
                extra := dialect.usage_chunk(usage=final_usage, model=model, request_id=rid)
            ):
                yield extra
            # Settled before [DONE], so a client that saw the end also sees its usage recorded.
            await self._finish(status="ok", usage=usage, count=count, error=None)
            finished = True
            yield dialect.done
        except UpstreamError as exc:
            error = upstream_failure(exc)
            await self._finish(status="error", usage=usage, count=count, error=error)
            finished = True
            yield dialect.stream_error(error, rid)
        finally:
            if not finished:
                # The client went away (this task was cancelled): close the upstream and free the
                # slot now, and record the call as cancelled.
                await self._close_upstream()
                await release(admitted)
                record(
                    admitted=admitted,
                    route=self.route,
                    usage=usage or _estimated_usage(admitted.request, count),
                    estimated=usage is None,
                    status="cancelled",
                    http_status=200,
                    error=None,
                    ttft_ms=self.ttft_ms,
                    request_id=rid,
                    started=admitted.started,
                    caller=None,
                )
