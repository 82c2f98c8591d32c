"""Readiness checks. Shallow: the web process answers. Deep: database, broker, a worker round trip, and
the embedded model server when it is on (LOCAL_LLM): right after start it is still loading its models,
and until it is ready the console cannot answer a call to a local model."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypedDict

from asgiref.sync import sync_to_async
from celery.exceptions import TimeoutError as CeleryTimeout
from django.conf import settings
from django.db import connection

from console.celery import app
from console.tasks import ping
from models_registry.providers.local import local_server_problem

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser


class Check(TypedDict, total=False):
    ok: bool
    latency_ms: float
    error: str
    worker: str


class Report(TypedDict, total=False):
    status: str
    runtime: str
    checks: dict[str, Check]


def _timed(fn: Callable[[], object]) -> Check:
    started = time.perf_counter()
    try:
        extra = fn()
    except Exception as exc:  # report every failure as data: this endpoint must never 500
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    check: Check = {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
    if isinstance(extra, str):
        check["worker"] = extra
    return check


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _broker() -> None:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=3)


def _worker() -> str:
    timeout = settings.HEALTH_WORKER_TIMEOUT
    # An unanswered probe expires rather than piling up for the next worker that starts.
    result = ping.apply_async(queue=settings.CELERY_TASK_DEFAULT_QUEUE, expires=timeout * 2)
    try:
        answer = result.get(timeout=timeout, propagate=True, interval=0.05)
    except CeleryTimeout:
        raise RuntimeError(f"no worker answered within {timeout:g} s") from None
    finally:
        # The filesystem result store raises when there is nothing to forget.
        with contextlib.suppress(OSError):
            result.forget()
    return str(answer.get("worker", ""))


async def _local_llm() -> Check:
    started = time.perf_counter()
    try:
        problem = await local_server_problem(base_url=settings.LOCAL_LLM_URL)
    except Exception as exc:  # as _timed: a failure is data, never a 500
        problem = f"{type(exc).__name__}: {exc}"[:300]
    if problem:
        return {"ok": False, "error": problem}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}


def runtime_name() -> str:
    return "scaled" if settings.DATABASE_URL or settings.REDIS_URL else "embedded"


def deep_allowed(*, client_ip: str, user: AbstractBaseUser | AnonymousUser | None) -> bool:
    """Whether a caller may run the deep checks: they enqueue a task and report the database's and
    broker's own error text, so only the machine itself (its monitoring, `make run`, the scale-out
    probes) or signed-in staff get them. `client_ip` comes from the TrustedProxies rule: a forged
    X-Forwarded-For does not make a caller local. Everyone else gets the shallow answer."""
    try:
        if ipaddress.ip_address(client_ip).is_loopback:
            return True
    except ValueError:
        pass
    return user is not None and bool(user.is_authenticated and user.is_active and getattr(user, "is_staff", False))


async def check(*, deep: bool) -> Report:
    """Never raises. The blocking broker and worker probes run off the event loop."""
    checks: dict[str, Check] = {}
    if deep:
        checks["database"] = await sync_to_async(_timed)(_database)
        checks["broker"] = await asyncio.to_thread(_timed, _broker)
        if checks["broker"]["ok"]:
            checks["worker"] = await asyncio.to_thread(_timed, _worker)
        else:
            checks["worker"] = {"ok": False, "error": "broker unreachable"}
        if settings.LOCAL_LLM == "on":
            checks["local_llm"] = await _local_llm()
    ok = all(c["ok"] for c in checks.values())
    return {"status": "ok" if ok else "unavailable", "runtime": runtime_name(), "checks": checks}
