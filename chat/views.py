"""The inference API in three dialects, and IAM compatibility. Thin: parse, call the gateway, render."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from chat import gateway, selectors
from chat.auth import Caller, RequestFacts, authenticate_request, iam_token_issue
from chat.dialects import CLOUDBASE, OPENAI, PANGU, Dialect
from chat.errors import Failure, GatewayError
from models_registry.providers.base import Mode

logger = logging.getLogger(__name__)


def _facts(request: HttpRequest) -> RequestFacts:
    return RequestFacts(
        method=request.method or "GET",
        path=request.path,
        query=request.META.get("QUERY_STRING", ""),
        headers={k: v for k, v in request.headers.items()},
        body=request.body,
    )


def error_response(dialect: Dialect, error: GatewayError, request_id: str) -> JsonResponse:
    headers = {"X-Request-Id": request_id}
    if error.retry_after:
        headers["Retry-After"] = str(error.retry_after)
    return JsonResponse(
        dialect.error_body(error, request_id),
        status=error.status,
        headers=headers,
        json_dumps_params={"ensure_ascii": False},
    )


def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise GatewayError(Failure.PARAM_INVALID, "The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise GatewayError(Failure.PARAM_INVALID, "The body must be a JSON object.")
    return body


async def _serve(request: HttpRequest, route: gateway.Route) -> HttpResponse:
    request_id = gateway.new_request_id()
    started = time.perf_counter()
    dialect = route.dialect
    if request.method != "POST":
        return error_response(dialect, GatewayError(Failure.NOT_FOUND, "Use POST for this path."), request_id)
    facts = _facts(request)
    admitted: gateway.Admitted | None = None
    try:
        body = _body(request)
        admitted = await sync_to_async(gateway.admit)(facts, route, body, request_id, started)
        admitted.meta["dialect"] = dialect
        options = body.get("stream_options")
        admitted.meta["include_usage"] = isinstance(options, dict) and options.get("include_usage") is True
        await gateway.take_limits(admitted)
        if admitted.request.stream:
            stream = gateway.Stream(admitted, route)
            await stream.open()
            response = StreamingHttpResponse(stream.relay(), content_type="text/event-stream; charset=utf-8")
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
            response["X-Request-Id"] = request_id
            return response
        answer, usage, estimated = await gateway.run_unary(admitted)
        await gateway.release(admitted)
        await gateway.record(
            admitted=admitted,
            facts_project=None,
            route=route,
            usage=usage,
            estimated=estimated,
            status="ok",
            http_status=200,
            error=None,
            ttft_ms=None,
            request_id=request_id,
            started=started,
            caller=None,
        )
        return JsonResponse(answer, headers={"X-Request-Id": request_id}, json_dumps_params={"ensure_ascii": False})
    except GatewayError as error:
        caller: Caller | None = getattr(error, "caller", None)
        if admitted is not None:
            await gateway.release(admitted)
        if admitted is not None or caller is not None:
            await gateway.record(
                admitted=admitted,
                facts_project=None,
                route=route,
                usage=None,
                estimated=False,
                status="error",
                http_status=error.status,
                error=error,
                ttft_ms=None,
                request_id=request_id,
                started=started,
                caller=caller,
            )
        return error_response(dialect, error, request_id)
    except Exception:
        # A bug or a lost database must still answer in the caller's dialect, not with an HTML page.
        logger.exception("gateway request %s failed", request_id)
        if admitted is not None:
            await gateway.release(admitted)
        return error_response(
            dialect, GatewayError(Failure.INTERNAL, f"Internal error; quote request id {request_id}."), request_id
        )


def _endpoint(dialect: Dialect, mode: Mode):  # type: ignore[no-untyped-def]
    @csrf_exempt
    async def view(
        request: HttpRequest, group: str | None = None, project_id: str | None = None, deployment_id: str | None = None
    ) -> HttpResponse:
        route = gateway.Route(
            dialect=dialect, mode=mode, group=group, project_id=project_id, deployment_id=deployment_id
        )
        return await _serve(request, route)

    return view


openai_chat = _endpoint(OPENAI, "chat")
openai_completions = _endpoint(OPENAI, "text")
cloudbase_chat = _endpoint(CLOUDBASE, "chat")
cloudbase_completions = _endpoint(CLOUDBASE, "text")
pangu_chat = _endpoint(PANGU, "chat")
pangu_text = _endpoint(PANGU, "text")


async def _models(request: HttpRequest, dialect: Dialect, group: str | None) -> HttpResponse:
    request_id = gateway.new_request_id()
    try:
        caller = await sync_to_async(authenticate_request)(_facts(request))
        data = await sync_to_async(selectors.models_listing)(project=caller.project, group=group)
    except GatewayError as error:
        return error_response(dialect, error, request_id)
    return JsonResponse({"object": "list", "data": data}, json_dumps_params={"ensure_ascii": False})


async def openai_models(request: HttpRequest) -> HttpResponse:
    return await _models(request, OPENAI, None)


async def cloudbase_models(request: HttpRequest, group: str) -> HttpResponse:
    return await _models(request, CLOUDBASE, group)


@csrf_exempt
async def iam_tokens(request: HttpRequest) -> HttpResponse:
    """POST /v3/auth/tokens: Huawei IAM's token call; the token comes back in X-Subject-Token."""
    request_id = gateway.new_request_id()
    if request.method != "POST":
        return error_response(PANGU, GatewayError(Failure.NOT_FOUND, "Use POST for this path."), request_id)
    try:
        issued = await sync_to_async(iam_token_issue)(_body(request))
    except GatewayError as error:
        return error_response(PANGU, error, request_id)
    body = {
        "token": {
            "methods": ["password"],
            "issued_at": issued.issued_at.isoformat().replace("+00:00", "Z"),
            "expires_at": issued.expires_at.isoformat().replace("+00:00", "Z"),
            "user": {
                "id": str(issued.user.pk),
                "name": issued.user.get_username(),
                "domain": {"id": issued.project.pk, "name": issued.project.name},
            },
            "project": {
                "id": issued.project.pk,
                "name": issued.project.name,
                "domain": {"id": issued.project.pk, "name": issued.project.name},
            },
        }
    }
    return JsonResponse(body, status=201, headers={"X-Subject-Token": issued.token, "X-Request-Id": request_id})


async def iam_projects(request: HttpRequest) -> HttpResponse:
    """GET /v3/projects: the caller's projects in IAM's shape."""
    request_id = gateway.new_request_id()
    try:
        caller = await sync_to_async(authenticate_request)(_facts(request), allow_operator=True)
        projects = await sync_to_async(selectors.projects_listing)(
            user_id=caller.user_id, base=request.build_absolute_uri("/v3/projects")
        )
    except GatewayError as error:
        return error_response(PANGU, error, request_id)
    return JsonResponse(
        {
            "projects": projects,
            "links": {"next": None, "previous": None, "self": request.build_absolute_uri("/v3/projects")},
        }
    )
