"""Database work of the gateway, on a small pool of long-lived threads.

Django's own async path runs each request's ORM calls in a thread made for that request, which
opens (and at the end closes) a database connection per call: most of a gateway call's cost.
These threads keep theirs (SQLite: CONN_MAX_AGE; PostgreSQL: returned to the pool after each
call, so a thread never pins one).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

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
