"""The forecast task API in the seed's shape, served at the gateway's door (chat/asgi.py routes it):

    POST   /v1/{project_id}/deployments/{deployment_id}/tasks             create
    GET    /v1/{project_id}/deployments/{deployment_id}/tasks             list
    GET    /v1/{project_id}/deployments/{deployment_id}/tasks/{task_id}   get
    DELETE /v1/{project_id}/deployments/{deployment_id}/tasks/{task_id}   cancel

Callers authenticate as every Pangu call does (console.callers: `X-Auth-Token` with an API key or an
IAM token, or an AK/SK signature); operators may. Errors are Pangu's: an invalid body is 400
`PANGU.0010` naming the field. Thin: parse, call services and selectors in a database thread, render.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from chat.db import run_db
from chat.errors import Failure, GatewayError
from console.audit import USER_AGENT_LENGTH, AuditOrigin, origin_scope
from console.callers import Caller
from console.lib.asgi import Receive, Scope, Send, client_ip, header_map, send_json
from forecasts import selectors, services
from forecasts.config import ConfigError, parse_task
from models_registry.models import Deployment, DeploymentState


def _deployment(caller: Caller, project_id: str, deployment_id: str) -> Deployment:
    if project_id != caller.project.pk:
        raise GatewayError(Failure.GROUP_NOT_FOUND, "The requested resource does not exist: check project_id.")
    found = (
        None
        if "\x00" in deployment_id
        else Deployment.objects.select_related("model").filter(project=caller.project, pk=deployment_id).first()
    )
    if found is None:
        raise GatewayError(
            Failure.GROUP_NOT_FOUND,
            f"The requested resource does not exist: no deployment {deployment_id!r} in this project.",
        )
    return found


def _create(caller: Caller, params: dict[str, str], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    deployment = _deployment(caller, params["project_id"], params["deployment_id"])
    if deployment.state != DeploymentState.RUNNING:
        raise GatewayError(
            Failure.MODEL_DISABLED,
            f"NLP service status is not running or have been deleted: deployment {deployment.pk!r} is "
            f"{deployment.state}; start it on Models → Deployments.",
        )
    try:
        spec = parse_task(body)
        job = services.job_submit(project=caller.project, deployment=deployment, user=caller.user, spec=spec)
    except ConfigError as exc:
        raise GatewayError(Failure.PARAM_INVALID, f"{exc.field}: {exc.message}", param=exc.field) from None
    except services.JobRefused as exc:
        raise GatewayError(Failure.PARAM_INVALID, exc.message) from None
    return 200, selectors.job_json(job)


def _list(caller: Caller, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
    deployment = _deployment(caller, params["project_id"], params["deployment_id"])
    jobs = selectors.jobs_visible(project=caller.project).filter(deployment=deployment)
    data = [selectors.job_json(j) for j in jobs.order_by("-created_at")[:500]]
    return 200, {"tasks": data, "total": len(data)}


def _job(caller: Caller, params: dict[str, str]) -> Any:
    deployment = _deployment(caller, params["project_id"], params["deployment_id"])
    job = selectors.job_visible(project=caller.project, job_id=params["task_id"])
    if job is None or job.deployment_id != deployment.pk:
        # Another project's job, or none: the same answer.
        raise GatewayError(
            Failure.GROUP_NOT_FOUND, f"The requested resource does not exist: no task {params['task_id']!r}."
        )
    return job


def _get(caller: Caller, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
    return 200, selectors.job_json(_job(caller, params))


def _cancel(caller: Caller, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
    job = _job(caller, params)
    if not selectors.may_cancel(job=job, user_id=caller.user_id, role=caller.role):
        raise GatewayError(Failure.FORBIDDEN, "Only the task's submitter or a project admin can cancel it.")
    job = services.job_cancel(job=job, by=caller.user)
    return 200, selectors.job_json(job)


T = TypeVar("T")


def _from(origin: AuditOrigin, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn` with `origin` as its audit entries' "from where" (on the database thread: the context
    of the event loop does not travel there)."""
    with origin_scope(origin):
        return fn(*args)


def _origin(scope: Scope, caller: Caller) -> AuditOrigin:
    via = f"{caller.via} {caller.api_key_id}" if caller.api_key_id else caller.via
    agent = header_map(scope).get("user-agent", "")[:USER_AGENT_LENGTH]
    return AuditOrigin(ip=client_ip(scope), user_agent=agent, via=via)


async def handle(
    scope: Scope,
    receive: Receive,
    send: Send,
    params: dict[str, str],
    *,
    caller: Caller,
    body: dict[str, Any] | None,
    request_id: str,
) -> None:
    method = scope["method"]
    if "task_id" in params:
        if method == "GET":
            outcome = await run_db(_get, caller, params)
        else:
            outcome = await run_db(_from, _origin(scope, caller), _cancel, caller, params)
    elif method == "POST":
        assert body is not None
        outcome = await run_db(_from, _origin(scope, caller), _create, caller, params, body)
    else:
        outcome = await run_db(_list, caller, params)
    status, payload = outcome
    await send_json(send, status, payload, {"X-Request-Id": request_id})
