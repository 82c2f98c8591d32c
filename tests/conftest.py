from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse, urlunparse

import pytest
from django.contrib.auth.models import User

from console.models import Project, Role
from tests.factories import add_member, make_project, make_user

if TYPE_CHECKING:
    from tests.upstreams.base import SimulatorServer

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=3):
            return True
    except OSError:
        return False


def pytest_sessionstart(session: pytest.Session) -> None:
    # A configured service that is down is a failure, never a silent fallback to the embedded runtime.
    for var, port in (("DATABASE_URL", 5432), ("REDIS_URL", 6379)):
        url = os.environ.get(var)
        if url and not _reachable(url, port):
            pytest.exit(f"{var}={url} is set but unreachable", returncode=3)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    # Under CI=true a whole module skipped at import (an optional dependency such as llama_cpp missing,
    # via importorskip) fails the run: CI installs every dependency, so a silent skip hides lost tests.
    # Per-test skips (scale-out tests without DATABASE_URL and REDIS_URL) are left alone.
    outcome = yield
    report: pytest.CollectReport = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") == "true" and isinstance(collector, pytest.Module) and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{collector.nodeid} was skipped at import under CI=true (fails rather than skips): {reason}"


def _flush_past_audit_guard() -> None:
    """Tests that run in real transactions (live_server, transactional_db) end with Django's `flush`,
    which on SQLite is DELETE FROM each table: the audit log's triggers (console.audit) refuse that
    for console_auditevent. The flush drops them, empties the tables and puts them back in the same
    transaction. (PostgreSQL's flush is TRUNCATE, which row triggers do not see.)"""
    # The backend's module first: importing its operations module alone is a circular import.
    from django.db.backends.sqlite3 import base  # noqa: F401
    from django.db.backends.sqlite3.operations import DatabaseOperations

    from console import audit

    original = DatabaseOperations.sql_flush
    if getattr(original, "_audit_guarded", False):
        return

    def sql_flush(self: DatabaseOperations, style: Any, tables: Any, **kwargs: Any) -> list[str]:
        statements = list(original(self, style, tables, **kwargs))
        if audit.TABLE not in tables or not statements:
            return statements
        return audit.SQLITE_DROP + statements + audit.SQLITE_CREATE

    sql_flush._audit_guarded = True  # type: ignore[attr-defined]
    DatabaseOperations.sql_flush = sql_flush  # type: ignore[method-assign, assignment]


_flush_past_audit_guard()


def services_configured() -> bool:
    return bool(os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"))


@pytest.fixture(autouse=True)
def _test_settings(settings: object) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # type: ignore[attr-defined]
    # Tests render templates without running collectstatic first.
    settings.STORAGES = {  # type: ignore[attr-defined]
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture(autouse=True)
def _fresh_caller_cache() -> Iterator[None]:
    # Verified tokens are remembered for a second per process: no test may see another's callers.
    # Nor another's password-throttle counters or remembered AK/SK signatures (the Django cache).
    from django.core.cache import cache

    from console import callers

    callers._token_cache.clear()
    cache.clear()
    yield
    callers._token_cache.clear()
    cache.clear()


@dataclass
class Persona:
    user: User
    project: Project


@pytest.fixture
def alice(db: None) -> Persona:
    user = make_user("alice")
    return Persona(user=user, project=make_project(name="alice-project", owner=user))


@pytest.fixture
def bob(db: None) -> Persona:
    user = make_user("bob")
    return Persona(user=user, project=make_project(name="bob-project", owner=user))


@pytest.fixture
def carol(alice: Persona) -> Persona:
    user = make_user("carol")
    add_member(project=alice.project, user=user, role=Role.OPERATOR)
    return Persona(user=user, project=alice.project)


@pytest.fixture
def dave(alice: Persona) -> Persona:
    """A plain member of alice's project."""
    user = make_user("dave")
    add_member(project=alice.project, user=user, role=Role.MEMBER)
    return Persona(user=user, project=alice.project)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], T], *, timeout: float, every: float = 0.02) -> T:
    """Poll `condition` until it is truthy or `timeout` seconds pass; its last value either way (the
    caller asserts on it). For steps that must come after something another thread or process does:
    a fixed sleep is what made tests flaky on a loaded CI machine."""
    deadline = time.monotonic() + timeout
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(every)
    return value


def wait_for_http(url: str, *, timeout: float = 30.0, status: int = 200) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == status:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer {status} within {timeout}s: {last}")


def manage(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=check
    )


def embedded_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """An environment for a child process of the embedded runtime, whatever this run uses."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}}
    env.update({"DATA_DIR": str(data_dir), "PATH": f"{VENV_BIN}:{env.get('PATH', '')}"}, **extra)
    return env


class ProcessGroup:
    """Child processes started for a test, each in its own session so the whole tree can be stopped."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        fh = log.open("wb")
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        import signal

        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def processes() -> Iterator[ProcessGroup]:
    group = ProcessGroup()
    yield group
    group.stop()


@pytest.fixture
def scaled_database() -> Iterator[str]:
    """A database of its own, so the processes never touch pytest-django's test database."""
    import psycopg

    base = urlparse(os.environ["DATABASE_URL"])
    name = f"console_scaleout_{secrets.token_hex(4)}"
    admin_url = urlunparse(base._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunparse(base._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def serve_in_thread(app: Callable[..., Any], *, start_timeout: float = 60.0) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread of the test process (sharing its database)."""
    import threading

    import uvicorn

    port = free_port()
    # A task still running 5 s after the stop is cancelled, so no handler outlives the fixture in a
    # thread the join below gave up on.
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def weather(alice: Persona, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Alice's project with the built-in engine, the demo bucket and its ERA5 input; the Celery runs a
    submission would queue are recorded instead of sent."""
    from forecasts import tasks
    from forecasts.catalogue import bucket_register, forecast_catalogue_load
    from forecasts.samples import DEMO_BUCKET, install_demo
    from forecasts.storage import default_store

    queued: list[tuple[int, int]] = []
    monkeypatch.setattr(tasks, "enqueue_run", lambda run_id, attempt: queued.append((run_id, attempt)))
    forecast_catalogue_load(project=alice.project)
    bucket_register(project=alice.project, name=DEMO_BUCKET)
    install_demo(default_store())
    return queued


@contextlib.contextmanager
def local_model_server(directory: Path) -> Iterator[str]:
    """The embedded model server (SmolLM2 and Gemma 3 from their packages, prepared in `directory`) in
    a thread: one instance, a small context, models loaded before the first call."""
    from dataclasses import replace

    from local_llm.config import LocalLlmConfig
    from local_llm.server import create_app

    config = replace(
        LocalLlmConfig.load(),
        threads=2,
        instance_threads=1,
        instances=1,
        queue=4,
        preload=True,
        models_dir=directory,
        n_ctx=2048,
    )
    app = create_app(config, prepare=False)
    try:
        with serve_in_thread(app) as url:
            yield url
    finally:
        app.pool.close()


T = TypeVar("T")


def run_adapter(coro: Coroutine[Any, Any, T]) -> T:
    """Run adapter code in an event loop of its own, as each gateway worker has, and close the shared
    HTTP client with it (its pooled connections belong to that loop)."""
    from console.lib.http import async_client

    async def main() -> T:
        try:
            return await coro
        finally:
            await async_client().aclose()

    return asyncio.run(main())


@pytest.fixture
def servers() -> Iterator[list[SimulatorServer]]:
    """Upstream simulators a test starts (possibly late, from a timer); all stopped at its end."""
    started: list[SimulatorServer] = []
    yield started
    for server in started:
        server.stop()
