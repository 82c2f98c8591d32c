"""The inference API as a lean ASGI endpoint in front of Django: the gateway's HTTP door.

Gateway paths skip Django's request cycle (middleware, request signals, a thread per request):
each call checks its Host against ALLOWED_HOSTS as Django would, authenticates through `console.callers`
(before reading the body, unless an AK/SK signature needs it), reads a body no larger than
GATEWAY_MAX_BODY_BYTES, calls the gateway service
(`chat.gateway.gateway_call`) and writes JSON or SSE in its dialect, which is most of why the console
adds little latency. Every other path, and any path here that does not match, goes to Django. Thin,
like a view: parse, call the service, render.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from django.conf import settings
from django.http.request import split_domain_port, validate_host

from chat import selectors
from chat.db import PasswordPoolFull, run_db, run_password_check
from chat.dialects import CLOUDBASE, OPENAI, PANGU, Dialect
from chat.errors import Failure, GatewayError, rejected
from chat.gateway import Answer, Route, Stream, gateway_call, new_request_id
from console.callers import (
    Caller,
    CallerRejected,
    RequestFacts,
    caller_authenticate,
    caller_from_cache,
    credentials_need_body,
)
from console.iam import IamRequestInvalid, iam_request_checks_password, iam_token_issue
from console.lib.asgi import (
    SSE_HEADERS,
    BodyTooLarge,
    ClientGone,
    Receive,
    Scope,
    Send,
    client_ip,
    declared_length,
    header_map,
    read_body,
    run_until_disconnect,
    send_json,
)
from console.throttle import PasswordThrottled
from models_registry.providers.base import Mode

logger = logging.getLogger(__name__)

# Bodies larger than this are parsed in a thread: json.loads of a few megabytes holds the event loop
# for tens of milliseconds, and every other call on it with it.
PARSE_OFF_LOOP_BYTES = 64 * 1024


@dataclass(frozen=True)
class Endpoint:
    kind: str  # "call" | "models" | "iam_tokens" | "iam_projects" | "tasks"
    dialect: Dialect
    mode: Mode = "chat"
    method: str = "POST"
    also: tuple[str, ...] = ()  # further methods the path serves (the task API: GET beside POST)

    @property
    def methods(self) -> tuple[str, ...]:
        return (self.method, *self.also)


_SEGMENT = r"[^/]+"
ROUTES: list[tuple[re.Pattern[str], Endpoint]] = [
    (re.compile(r"^/v1/chat/completions$"), Endpoint("call", OPENAI, "chat")),
    (re.compile(r"^/v1/completions$"), Endpoint("call", OPENAI, "text")),
    (re.compile(r"^/v1/models$"), Endpoint("models", OPENAI, method="GET")),
    (re.compile(rf"^/v1/ai/(?P<group>{_SEGMENT})/v1/chat/completions$"), Endpoint("call", CLOUDBASE, "chat")),
    (re.compile(rf"^/v1/ai/(?P<group>{_SEGMENT})/v1/completions$"), Endpoint("call", CLOUDBASE, "text")),
    (re.compile(rf"^/v1/ai/(?P<group>{_SEGMENT})/v1/models$"), Endpoint("models", CLOUDBASE, method="GET")),
    (
        re.compile(rf"^/v1/(?P<project_id>{_SEGMENT})/deployments/(?P<deployment_id>{_SEGMENT})/chat/completions$"),
        Endpoint("call", PANGU, "chat"),
    ),
    (
        re.compile(rf"^/v1/(?P<project_id>{_SEGMENT})/deployments/(?P<deployment_id>{_SEGMENT})/text/completions$"),
        Endpoint("call", PANGU, "text"),
    ),
    # The forecast task API (forecasts/api.py).
    (
        re.compile(rf"^/v1/(?P<project_id>{_SEGMENT})/deployments/(?P<deployment_id>{_SEGMENT})/tasks$"),
        Endpoint("tasks", PANGU, method="POST", also=("GET",)),
    ),
    (
        re.compile(
            rf"^/v1/(?P<project_id>{_SEGMENT})/deployments/(?P<deployment_id>{_SEGMENT})/tasks/(?P<task_id>{_SEGMENT})$"
        ),
        Endpoint("tasks", PANGU, method="GET", also=("DELETE",)),
    ),
    (re.compile(r"^/v3/auth/tokens$"), Endpoint("iam_tokens", PANGU)),
    (re.compile(r"^/v3/projects$"), Endpoint("iam_projects", PANGU, method="GET")),
]


def match(path: str) -> tuple[Endpoint, dict[str, str]] | None:
    for pattern, endpoint in ROUTES:
        if found := pattern.match(path):
            return endpoint, found.groupdict()
    return None


# --- wire helpers ----------------------------------------------------------------------------------
def _host_error(scope: Scope) -> GatewayError | None:
    """Django's ALLOWED_HOSTS rule (HttpRequest.get_host), for the paths that never reach Django."""
    headers = header_map(scope)
    host = headers.get("host") or "{}:{}".format(*scope.get("server", ("", "")))
    domain, _ = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    if domain and validate_host(domain, allowed):
        return None
    shown = host[:100]
    return GatewayError(Failure.PARAM_INVALID, f"Invalid Host header {shown!r}: it is not in ALLOWED_HOSTS.")


def _check_declared_length(scope: Scope) -> None:
    """A body announced larger than the limit is refused before a byte of it is read."""
    limit = settings.GATEWAY_MAX_BODY_BYTES
    declared = declared_length(scope)
    if declared is not None and declared > limit:
        raise GatewayError(Failure.BODY_TOO_LARGE, f"The request body is larger than {limit} bytes.")


async def _read_body(scope: Scope, receive: Receive) -> bytes:
    """The body, refused (413) by its Content-Length or, when chunked, once the bytes read pass the limit."""
    _check_declared_length(scope)
    try:
        return await read_body(receive, limit=settings.GATEWAY_MAX_BODY_BYTES)
    except BodyTooLarge as exc:
        raise GatewayError(Failure.BODY_TOO_LARGE, str(exc)) from None


def _check_content_type(scope: Scope, raw: bytes) -> None:
    """A body sent as something other than JSON is refused by name, not parsed as JSON anyway."""
    content_type = header_map(scope).get("content-type", "")
    if not raw or not content_type:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise GatewayError(
            Failure.UNSUPPORTED_MEDIA_TYPE, f"Content-Type {media!r} is not supported: send application/json."
        )


def _facts(scope: Scope, body: bytes = b"") -> RequestFacts:
    return RequestFacts(
        method=scope["method"],
        path=scope["path"],
        query=scope.get("query_string", b"").decode("latin-1"),
        headers=header_map(scope),
        body=body,
    )


async def _authenticate(facts: RequestFacts, dialect: Dialect, *, allow_operator: bool = False) -> Caller:
    """A recently verified token costs no thread hop; anything else is checked in a database thread."""
    try:
        caller = caller_from_cache(facts, allow_operator=allow_operator)
        if caller is None:
            caller = await run_db(caller_authenticate, facts, allow_operator=allow_operator)
    except CallerRejected as exc:
        raise rejected(exc, pangu=dialect is PANGU) from None
    return caller


def _body_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise GatewayError(Failure.PARAM_INVALID, "The body is not valid JSON.") from None
    except RecursionError:
        # json raises this, not a ValueError, for arrays or objects nested thousands deep.
        raise GatewayError(Failure.PARAM_INVALID, "The body's JSON is nested too deeply.") from None
    if not isinstance(body, dict):
        raise GatewayError(Failure.PARAM_INVALID, "The body must be a JSON object.")
    return body


async def _parse_body(raw: bytes) -> dict[str, Any]:
    if len(raw) > PARSE_OFF_LOOP_BYTES:
        return await asyncio.to_thread(_body_json, raw)
    return _body_json(raw)


def _body_unread(scope: Scope) -> bool:
    """Whether the request carries a body: said of one the door answers without reading it."""
    declared = declared_length(scope)
    if declared is not None:
        return declared > 0
    return "chunked" in header_map(scope).get("transfer-encoding", "").lower()


async def send_error(
    send: Send, dialect: Dialect, error: GatewayError, request_id: str, *, close: bool = False
) -> None:
    """`close`: the answer comes before the body was read, so the connection ends with it; otherwise
    the server would go on receiving and discarding the rest (megabytes an attacker chose to send)."""
    extra = {"X-Request-Id": request_id}
    if error.retry_after:
        extra["Retry-After"] = str(error.retry_after)
    if close:
        extra["Connection"] = "close"
    await send_json(send, error.status, dialect.error_body(error, request_id), extra)


async def send_stream(send: Send, receive: Receive, dialect: Dialect, stream: Stream, *, include_usage: bool) -> None:
    """Relay each piece the moment it arrives, in the dialect's framing. A client that disconnects
    cancels the relay; the stream is closed either way, which ends the upstream call and frees
    its slot."""
    rid, model, mode = stream.request_id, stream.model, stream.mode

    async def pump() -> None:
        first = True
        try:
            async for delta in stream:
                chunk = dialect.chunk(
                    mode=mode,
                    text=delta.text,
                    finish_reason=delta.finish_reason,
                    first=first,
                    model=model,
                    request_id=rid,
                )
                if chunk is not None:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    first = False
            if include_usage and stream.usage is not None:
                if extra := dialect.usage_chunk(usage=stream.usage, model=model, request_id=rid):
                    await send({"type": "http.response.body", "body": extra, "more_body": True})
            end = dialect.done
        except GatewayError as error:
            # The status went out as 200 with the first piece: the failure is the stream's last event.
            end = dialect.stream_error(error, rid)
        await send({"type": "http.response.body", "body": end, "more_body": False})

    try:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, (b"x-request-id", rid.encode())]}
        )
        await run_until_disconnect(receive, pump())
    finally:
        await stream.aclose()


# --- endpoints -------------------------------------------------------------------------------------
async def _call(scope: Scope, receive: Receive, send: Send, endpoint: Endpoint, params: dict[str, str]) -> None:
    request_id = new_request_id()
    dialect = endpoint.dialect
    body_read = False
    try:
        _check_declared_length(scope)
        facts = _facts(scope)
        if credentials_need_body(facts.headers):
            raw = await _read_body(scope, receive)
            body_read = True
            caller = await _authenticate(_facts(scope, raw), dialect)
        else:
            # Refused credentials cost no read of the body, however large it claims to be.
            caller = await _authenticate(facts, dialect)
            raw = await _read_body(scope, receive)
            body_read = True
        _check_content_type(scope, raw)
        body = await _parse_body(raw)
        route = Route(entry=dialect.name, mode=endpoint.mode, **params)
        outcome: list[Answer | Stream] = []

        async def admit_and_call() -> None:
            outcome.append(await gateway_call(caller=caller, route=route, body=body, request_id=request_id))

        # Watched like a stream: a client that leaves while waiting for the answer or the first piece
        # cancels the call, which frees its slot and records it cancelled.
        if not await run_until_disconnect(receive, admit_and_call()):
            if outcome and isinstance(outcome[0], Stream):
                await outcome[0].aclose()
            return
        result = outcome[0]
    except GatewayError as error:
        await send_error(send, dialect, error, request_id, close=not body_read and _body_unread(scope))
        return
    if isinstance(result, Answer):
        answer = dialect.answer(
            mode=result.mode,
            completion=result.completion,
            usage=result.usage,
            model=result.model,
            request_id=request_id,
        )
        await send_json(send, 200, answer, {"X-Request-Id": request_id})
        return
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    await send_stream(send, receive, dialect, result, include_usage=include_usage)


async def _models(scope: Scope, receive: Receive, send: Send, endpoint: Endpoint, params: dict[str, str]) -> None:
    request_id = new_request_id()
    try:
        caller = await _authenticate(_facts(scope), endpoint.dialect)
        data = await run_db(selectors.models_listing, project=caller.project, group=params.get("group"))
    except GatewayError as error:
        await send_error(send, endpoint.dialect, error, request_id)
        return
    await send_json(send, 200, {"object": "list", "data": data}, {"X-Request-Id": request_id})


def _iso(value: Any) -> str:
    return str(value.isoformat()).replace("+00:00", "Z")


# The appendix's APIG.0308 message; why follows it.
THROTTLED_MESSAGE = "The throttling threshold has been reached: "


async def _iam_tokens(scope: Scope, receive: Receive, send: Send, endpoint: Endpoint, params: dict[str, str]) -> None:
    """POST /v3/auth/tokens: Huawei IAM's token call; the token comes back in X-Subject-Token."""
    request_id = new_request_id()
    body_read = False
    try:
        raw = await _read_body(scope, receive)
        body_read = True
        _check_content_type(scope, raw)
        body = await _parse_body(raw)
        # Password hashing runs on its own bounded threads, never the gateway's (chat.db).
        run = run_password_check if iam_request_checks_password(body) else run_db
        try:
            issued = await run(
                iam_token_issue,
                body=body,
                client_ip=client_ip(scope),
                user_agent=header_map(scope).get("user-agent", ""),
            )
        except CallerRejected as exc:
            raise rejected(exc, pangu=True) from None
        except IamRequestInvalid as exc:
            raise GatewayError(Failure.PARAM_INVALID, exc.message, param=exc.param) from None
        except PasswordThrottled as exc:
            raise GatewayError(
                Failure.AUTH_THROTTLED, THROTTLED_MESSAGE + str(exc), retry_after=exc.retry_after
            ) from None
        except PasswordPoolFull as exc:
            raise GatewayError(Failure.AUTH_THROTTLED, THROTTLED_MESSAGE + str(exc), retry_after=1) from None
    except GatewayError as error:
        await send_error(send, PANGU, error, request_id, close=not body_read and _body_unread(scope))
        return
    project = {"id": issued.project.pk, "name": issued.project.name}
    body = {
        "token": {
            "methods": ["password"],
            "issued_at": _iso(issued.issued_at),
            "expires_at": _iso(issued.expires_at),
            "user": {"id": str(issued.user.pk), "name": issued.user.get_username(), "domain": project},
            "project": {**project, "domain": project},
        }
    }
    await send_json(send, 201, body, {"X-Subject-Token": issued.token, "X-Request-Id": request_id})


def _base_url(scope: Scope) -> str:
    headers = header_map(scope)
    host = headers.get("host") or "{}:{}".format(*scope.get("server", ("localhost", 80)))
    return f"{scope.get('scheme', 'http')}://{host}"


async def _iam_projects(scope: Scope, receive: Receive, send: Send, endpoint: Endpoint, params: dict[str, str]) -> None:
    """GET /v3/projects: the caller's projects in IAM's shape."""
    request_id = new_request_id()
    base = _base_url(scope) + "/v3/projects"
    try:
        caller = await _authenticate(_facts(scope), PANGU, allow_operator=True)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        name = query["name"][0] if "name" in query else None
        projects = await run_db(selectors.projects_listing, user_id=caller.user_id, base=base, name=name)
    except GatewayError as error:
        await send_error(send, PANGU, error, request_id)
        return
    links = {"next": None, "previous": None, "self": base}
    await send_json(send, 200, {"projects": projects, "links": links}, {"X-Request-Id": request_id})


# Resources of OpenAI's API: a /v1/<one of these>... path that matches no route is an OpenAI client's.
_OPENAI_RESOURCES = frozenset(
    {
        "chat",
        "completions",
        "models",
        "embeddings",
        "images",
        "audio",
        "files",
        "fine_tuning",
        "moderations",
        "assistants",
        "threads",
        "batches",
        "responses",
        "uploads",
        "vector_stores",
    }
)
# The appendix's message for APIG.0101, with its advice.
_NO_SUCH_API = (
    "The API does not exist or has not been published in the environment. Check the URL (for example, "
    "whether project_id is missing from it) and the HTTP method (POST, GET, ...)."
)


def _unrouted_dialect(path: str) -> Dialect | None:
    """The dialect a client calling an unserved gateway path speaks, or None when the path is Django's.
    Nothing of Django's lives under /v1/ or /v3/ (console/urls.py)."""
    parts = path.split("/")
    if len(parts) < 2 or parts[1] not in {"v1", "v3"}:
        return None
    if parts[1] == "v1" and len(parts) > 2:
        if parts[2] == "ai":
            return CLOUDBASE
        if parts[2] in _OPENAI_RESOURCES:
            return OPENAI
    return PANGU


def _not_found(dialect: Dialect, method: str, path: str, allowed: str | None = None) -> GatewayError:
    if dialect is PANGU:
        return GatewayError(Failure.NOT_FOUND, _NO_SUCH_API)
    if allowed is not None:
        return GatewayError(Failure.NOT_FOUND, f"{method} is not served here: use {allowed} for {path}.")
    return GatewayError(Failure.NOT_FOUND, f"No such API: {method} {path}.")


async def _tasks(scope: Scope, receive: Receive, send: Send, endpoint: Endpoint, params: dict[str, str]) -> None:
    """The forecast task API: authenticated like a Pangu call (operators too), then forecasts.api."""
    from forecasts import api

    request_id = new_request_id()
    body_read = False
    try:
        _check_declared_length(scope)
        facts = _facts(scope)
        if credentials_need_body(facts.headers):  # an AK/SK signature covers the body
            raw = await _read_body(scope, receive)
            body_read = True
            caller = await _authenticate(_facts(scope, raw), PANGU, allow_operator=True)
        else:
            caller = await _authenticate(facts, PANGU, allow_operator=True)
            raw = b""
            if scope["method"] == "POST":
                raw = await _read_body(scope, receive)
                body_read = True
        body = None
        if scope["method"] == "POST":
            _check_content_type(scope, raw)
            body = await _parse_body(raw)
        await api.handle(scope, receive, send, params, caller=caller, body=body, request_id=request_id)
    except GatewayError as error:
        await send_error(send, PANGU, error, request_id, close=not body_read and _body_unread(scope))


HANDLERS = {
    "call": _call,
    "models": _models,
    "iam_tokens": _iam_tokens,
    "iam_projects": _iam_projects,
    "tasks": _tasks,
}


class GatewayRouter:
    """Serve the gateway's paths; hand everything else to the Django application."""

    def __init__(self, fallback: Callable[..., Awaitable[None]]) -> None:
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.fallback(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        found = match(path)
        dialect = found[0].dialect if found is not None else _unrouted_dialect(path)
        if dialect is None:
            await self.fallback(scope, receive, send)  # Django checks the host itself
            return
        # Answered before any body is read: see send_error's `close`.
        close = _body_unread(scope)
        if (host_error := _host_error(scope)) is not None:
            await send_error(send, dialect, host_error, new_request_id(), close=close)
            return
        if found is None:
            await send_error(send, dialect, _not_found(dialect, method, path), new_request_id(), close=close)
            return
        endpoint, params = found
        if method not in endpoint.methods:
            error = _not_found(endpoint.dialect, method, path, allowed=" or ".join(endpoint.methods))
            await send_error(send, endpoint.dialect, error, new_request_id(), close=close)
            return
        try:
            await HANDLERS[endpoint.kind](scope, receive, send, endpoint, params)
        except ClientGone:
            return  # the client left: nobody to answer
        except Exception:
            # A bug or a lost database still answers in the caller's dialect, not with a bare 500.
            request_id = new_request_id()
            logger.exception("gateway request %s failed", request_id)
            error = GatewayError(Failure.INTERNAL, f"Internal error; quote request id {request_id}.")
            with contextlib.suppress(Exception):
                await send_error(send, endpoint.dialect, error, request_id)
