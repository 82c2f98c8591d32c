"""Readiness checks. Shallow: the web process answers. Deep: database, broker and a worker round trip."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypedDict

from asgiref.sync import sync_to_async
from celery.exceptions import TimeoutError as CeleryTimeout
from django.conf import settings
from django.db import connection

from console.celery import app
from console.tasks import ping

WORKER_TIMEOUT_SECONDS = 5.0


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
    result = ping.apply_async(expires=WORKER_TIMEOUT_SECONDS * 2)
    try:
        answer = result.get(timeout=WORKER_TIMEOUT_SECONDS, propagate=True, interval=0.05)
    except CeleryTimeout:
        result.forget()
        raise RuntimeError(f"no worker answered within {WORKER_TIMEOUT_SECONDS:.0f} s") from None
    result.forget()
    return str(answer.get("worker", ""))


def runtime_name() -> str:
    return "scaled" if settings.DATABASE_URL or settings.REDIS_URL else "embedded"


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
    ok = all(c["ok"] for c in checks.values())
    return {"status": "ok" if ok else "unavailable", "runtime": runtime_name(), "checks": checks}
