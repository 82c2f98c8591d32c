"""Database work of the gateway, on a small pool of long-lived threads.

Django's own async path runs each request's ORM calls in a thread made for that request, which
opens (and at the end closes) a database connection per call: most of a gateway call's cost.
These threads keep theirs (SQLite: CONN_MAX_AGE; PostgreSQL: returned to the pool after each
call, so a thread never pins one).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from django.conf import settings
from django.db import close_old_connections

P = ParamSpec("P")
T = TypeVar("T")

_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=settings.GATEWAY_DB_THREADS, thread_name_prefix="gateway-db")
    return _executor


def _call(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    try:
        return fn(*args, **kwargs)
    finally:
        # Closes only what is broken or past CONN_MAX_AGE (0 with the PostgreSQL pool: back to it).
        close_old_connections()


async def run_db(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_pool(), functools.partial(_call, fn, *args, **kwargs))


# --- password checks -------------------------------------------------------------------------------
# Hashing a password costs a CPU core for a good fraction of a second by design. On the pool above it
# would queue admission and usage writes behind a login flood (a valid call went from 50 ms to 4 s), so
# IAM password checks get their own few threads, and no more than IAM_PASSWORD_QUEUE may wait for them.
class PasswordPoolFull(Exception):
    """More password checks are running or waiting than the bound allows; retry in a moment."""


PASSWORD_THREAD_NICENESS = 19
_password_executor: ThreadPoolExecutor | None = None
_password_pending = 0
_password_lock = threading.Lock()


def _lower_priority() -> None:
    # On Linux a nice value belongs to a thread: a flood of hashes then takes only the CPU that the
    # event loop and the gateway's threads leave. Elsewhere (or when refused) the thread runs as is.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PASSWORD_THREAD_NICENESS)


def _password_pool() -> ThreadPoolExecutor:
    global _password_executor
    if _password_executor is None:
        _password_executor = ThreadPoolExecutor(
            max_workers=settings.IAM_PASSWORD_THREADS,
            thread_name_prefix="password-check",
            initializer=_lower_priority,
        )
    return _password_executor


def _password_done(_: Future[Any]) -> None:
    global _password_pending
    with _password_lock:
        _password_pending -= 1


async def run_password_check(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `fn` (which hashes a password, and may query) on the password threads; raise
    PasswordPoolFull at once when IAM_PASSWORD_THREADS + IAM_PASSWORD_QUEUE checks are pending.
    A check whose client leaves still finishes, and counts until it does."""
    global _password_pending
    with _password_lock:
        if _password_pending >= settings.IAM_PASSWORD_THREADS + settings.IAM_PASSWORD_QUEUE:
            raise PasswordPoolFull("Too many password checks are waiting; retry in a moment.")
        _password_pending += 1
    try:
        future = _password_pool().submit(functools.partial(_call, fn, *args, **kwargs))
    except BaseException:
        _password_done(Future())
        raise
    future.add_done_callback(_password_done)
    return await asyncio.wrap_future(future)
