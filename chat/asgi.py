"""The inference API as a lean ASGI endpoint in front of Django.

Gateway paths skip Django's request cycle (middleware, request signals, a thread per request):
each call parses its body, runs the gateway and writes JSON or SSE itself, which is most of why
the console adds little latency. Every other path, and any path here that does not match, goes
to Django. Thin, like a view: parse, call the gateway, render.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from chat import gateway, selectors
from chat.auth import Caller, RequestFacts, authenticate_request, iam_token_issue
from chat.db import run_db
from chat.dialects import CLOUDBASE, OPENAI, PANGU, Dialect
from chat.errors import Failure, GatewayError
from console.lib.asgi import BodyTooLarge, ClientGone, read_body, send_json
from models_registry.providers.base import Mode

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Endpoint:
    kind: str  # "call" | "models" | "iam_tokens" | "iam_projects"
    dialect: Dialect
    mode: Mode = "chat"
    method: str = "POST"


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
    (re.compile(r"^/v3/auth/tokens$"), Endpoint("iam_tokens", PANGU)),
    (re.compile(r"^/v3/projects$"), Endpoint("iam_projects", PANGU, method="GET")),
]


def match(path: str) -> tuple[Endpoint, dict[str, str]] | None:
    for pattern, endpoint in ROUTES:
        if found := pattern.match(path):
            return endpoint, found.groupdict()
    return None


# --- wire helpers ----------------------------------------------------------------------------------
async def _read_body(receive: Receive) -> bytes:
    try:
        return await read_body(receive, limit=MAX_BODY_BYTES)
    except BodyTooLarge as exc:
        raise GatewayError(Failure.PARAM_INVALID, str(exc)) from None


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def send_error(send: Send, dialect: Dialect, error: GatewayError, request_id: str) -> None:
    extra = {"X-Request-Id": request_id}
    if error.retry_after:
        extra["Retry-After"] = str(error.retry_after)
    await send_json(send, error.status, dialect.error_body(error, request_id), extra)


async def send_stream(send: Send, receive: Receive, chunks: AsyncIterator[bytes], request_id: str) -> None:
    """Relay each chunk at once; if the client disconnects, cancel the relay (which closes the
    upstream call and frees the slot in its `finally`)."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),
                (b"x-request-id", request_id.encode()),
            ],
        }
    )

    async def pump() -> None:
        try:
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    relay, watcher = asyncio.ensure_future(pump()), asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({relay, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if relay in done:
            relay.result()
            return
        relay.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await relay
    finally:
        watcher.cancel()
        relay.cancel()


# --- endpoints -------------------------------------------------------------------------------------
def _body_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise GatewayError(Failure.PARAM_INVALID, "The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise GatewayError(Failure.PARAM_INVALID, "The body must be a JSON object.")
    return body


async def _call(scope: Scope, receive: Receive, send: Send, endpoint: Endpoint, params: dict[str, str]) -> None:
    request_id = gateway.new_request_id()
    started = time.perf_counter()
    dialect = endpoint.dialect
    route = gateway.Route(dialect=dialect, mode=endpoint.mode, **params)
    admitted: gateway.Admitted | None = None
    try:
        raw = await _read_body(receive)
        facts = RequestFacts(
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=_headers(scope),
            body=raw,
        )
        body = _body_json(raw)
        admitted = await run_db(gateway.admit, facts, route, body, request_id, started)
        admitted.meta["dialect"] = dialect
        options = body.get("stream_options")
        admitted.meta["include_usage"] = isinstance(options, dict) and options.get("include_usage") is True
        await gateway.take_limits(admitted)
        if admitted.request.stream:
            stream = gateway.Stream(admitted, route)
            await stream.open()
            await send_stream(send, receive, stream.relay(), request_id)
            return
        answer, usage, estimated = await gateway.run_unary(admitted)
        await gateway.release(admitted)
        await send_json(send, 200, answer, {"X-Request-Id": request_id})
        gateway.record(
            admitted=admitted,
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
    except GatewayError as error:
        caller: Caller | None = getattr(error, "caller", None)
        if admitted is not None:
            await gateway.release(admitted)
        await send_error(send, dialect, error, request_id)
        if admitted is not None or caller is not None:
            gateway.record(
                admitted=admitted,
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
    except BaseException:
        if admitted is not None:
            await gateway.release(admitted)  # never leak a concurrency slot, whatever happened
        raise


async def _models(scope: Scope, receive: Receive, send: Send, endpoint: Endpoint, params: dict[str, str]) -> None:
    request_id = gateway.new_request_id()
    facts = RequestFacts(method="GET", path=scope["path"], query="", headers=_headers(scope), body=b"")
    try:
        caller = await run_db(authenticate_request, facts)
        data = await run_db(selectors.models_listing, project=caller.project, group=params.get("group"))
    except GatewayError as error:
        await send_error(send, endpoint.dialect, error, request_id)
        return
    await send_json(send, 200, {"object": "list", "data": data}, {"X-Request-Id": request_id})


def _iso(value: Any) -> str:
    return str(value.isoformat()).replace("+00:00", "Z")


async def _iam_tokens(scope: Scope, receive: Receive, send: Send, endpoint: Endpoint, params: dict[str, str]) -> None:
    """POST /v3/auth/tokens: Huawei IAM's token call; the token comes back in X-Subject-Token."""
    request_id = gateway.new_request_id()
    try:
        issued = await run_db(iam_token_issue, _body_json(await _read_body(receive)))
    except GatewayError as error:
        await send_error(send, PANGU, error, request_id)
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
    headers = _headers(scope)
    host = headers.get("host") or "{}:{}".format(*scope.get("server", ("localhost", 80)))
    return f"{scope.get('scheme', 'http')}://{host}"


async def _iam_projects(scope: Scope, receive: Receive, send: Send, endpoint: Endpoint, params: dict[str, str]) -> None:
    """GET /v3/projects: the caller's projects in IAM's shape."""
    request_id = gateway.new_request_id()
    facts = RequestFacts(method="GET", path=scope["path"], query="", headers=_headers(scope), body=b"")
    base = _base_url(scope) + "/v3/projects"
    try:
        caller = await run_db(authenticate_request, facts, allow_operator=True)
        projects = await run_db(selectors.projects_listing, user_id=caller.user_id, base=base)
    except GatewayError as error:
        await send_error(send, PANGU, error, request_id)
        return
    await send_json(send, 200, {"projects": projects, "links": {"next": None, "previous": None, "self": base}})


HANDLERS = {"call": _call, "models": _models, "iam_tokens": _iam_tokens, "iam_projects": _iam_projects}


class GatewayRouter:
    """Serve the gateway's paths; hand everything else to the Django application."""

    def __init__(self, fallback: ASGIApp) -> None:
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = match(scope["path"]) if scope["type"] == "http" else None
        if found is None:
            await self.fallback(scope, receive, send)
            return
        endpoint, params = found
        if scope["method"] != endpoint.method:
            error = GatewayError(Failure.NOT_FOUND, f"Use {endpoint.method} for this path.")
            await send_error(send, endpoint.dialect, error, gateway.new_request_id())
            return
        try:
            await HANDLERS[endpoint.kind](scope, receive, send, endpoint, params)
        except ClientGone:
            return  # the client left: nobody to answer
        except Exception:
            # A bug or a lost database still answers in the caller's dialect, not with a bare 500.
            request_id = gateway.new_request_id()
            logger.exception("gateway request %s failed", request_id)
            error = GatewayError(Failure.INTERNAL, f"Internal error; quote request id {request_id}.")
            with contextlib.suppress(Exception):
                await send_error(send, endpoint.dialect, error, request_id)
