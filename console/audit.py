"""The audit log's plumbing: where a change came from, and the database's refusal to rewrite history.

Services record entries with `console.services.audit_record`; this module supplies the "from where".
A console page or the registry API (Django) gets it from `AuditOriginMiddleware`, which puts the
request in a context variable for the duration of the view; the gateway's doors (the IAM token call,
the forecast task API) run their database work on their own threads, where that variable is not
carried, so they pass an `AuditOrigin` explicitly.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from console.lib.asgi import request_client_ip

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

USER_AGENT_LENGTH = 255

# Every action the log records, in the words its page shows (the summary is "<who> <words> <target>").
ACTIONS: dict[str, str] = {
    "auth.login": "signed in",
    "auth.login_failed": "failed to sign in as",
    "auth.password_throttled": "was throttled signing in as",
    "iam.token_issue": "was issued an IAM token for",
    "api_key.create": "created API key",
    "api_key.revoke": "revoked API key",
    "access_key.create": "created access key",
    "access_key.revoke": "revoked access key",
    "provider.create": "created provider",
    "provider.update": "changed provider",
    "provider.enable": "enabled provider",
    "provider.disable": "disabled provider",
    "provider.delete": "deleted provider",
    "model.create": "created model",
    "model.update": "changed model",
    "model.enable": "enabled model",
    "model.disable": "disabled model",
    "model.delete": "deleted model",
    "deployment.create": "created deployment",
    "deployment.update": "changed deployment",
    "deployment.delete": "deleted deployment",
    "job.submit": "submitted forecast job",
    "job.cancel": "cancelled forecast job",
    "usage.export": "downloaded the usage records of project",
}


def summary_for(*, who: str, action: str, target: str) -> str:
    return f"{who or 'The system'} {ACTIONS.get(action, action)} {target}".strip()


def plain_ip(text: str) -> str | None:
    """The address as the database stores it, or None when there is none (a Unix socket's path, a
    test client's made-up name): an inet column refuses anything else."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return None


@dataclass(frozen=True)
class AuditOrigin:
    """Where a change came from: the client's address (by the TrustedProxies rule), its User-Agent,
    and the credential it used ("session", "api_key 12", "iam_token", "aksk", "password")."""

    ip: str = ""
    user_agent: str = ""
    via: str = ""


_request: contextvars.ContextVar[HttpRequest | None] = contextvars.ContextVar("audit_request", default=None)
_origin: contextvars.ContextVar[AuditOrigin | None] = contextvars.ContextVar("audit_origin", default=None)


@contextlib.contextmanager
def origin_scope(origin: AuditOrigin) -> Iterator[None]:
    """Entries recorded inside come from `origin`: for work outside a Django request (the gateway's
    doors run theirs on the gateway's database threads) and for signals that carry no request, such
    as the failed password check of an IAM token call."""
    token = _origin.set(origin)
    try:
        yield
    finally:
        _origin.reset(token)


def _via_of(request: HttpRequest) -> str:
    # The registry API (django-ninja) leaves the authenticated console.callers.Caller in request.auth.
    caller = getattr(request, "auth", None)
    via = getattr(caller, "via", None)
    if isinstance(via, str):
        key_id = getattr(caller, "api_key_id", None)
        return f"{via} {key_id}" if key_id else via
    user = getattr(request, "user", None)
    return "session" if user is not None and user.is_authenticated else ""


def origin_of_request(request: HttpRequest) -> AuditOrigin:
    return AuditOrigin(
        ip=request_client_ip(request),
        user_agent=str(request.META.get("HTTP_USER_AGENT", ""))[:USER_AGENT_LENGTH],
        via=_via_of(request),
    )


def current_origin() -> AuditOrigin:
    """The origin set by `origin_scope`, else that of the Django request being served on this context,
    else an empty one (a command, a worker, bootstrap)."""
    explicit = _origin.get()
    if explicit is not None:
        return explicit
    request = _request.get()
    return origin_of_request(request) if request is not None else AuditOrigin()


class AuditOriginMiddleware:
    """Makes the request being served the audit log's "from where". Async-capable, like the rest of the
    chain (a sync-only middleware would cost the gateway's Django-side calls thread switches); sync
    views run with a copy of this context, so they see it too."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self._acall(request)
        token = _request.set(request)
        try:
            response: HttpResponse = self.get_response(request)
            return response
        finally:
            _request.reset(token)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        token = _request.set(request)
        try:
            response: HttpResponse = await self.get_response(request)
            return response
        finally:
            _request.reset(token)


# --- append-only in the database itself ---------------------------------------------------------------
# The model refuses updates and deletes; these triggers refuse them to anyone who goes around it (raw
# SQL, a shell, another program). PostgreSQL's TRUNCATE (how Django's test runner empties tables) is
# not a row event and passes. On SQLite a migration that rebuilds console_auditevent (any AlterField)
# drops its triggers with the old table: such a migration must create them again.
TABLE = "console_auditevent"
REFUSAL = "audit events are append-only"

SQLITE_CREATE = [
    f"CREATE TRIGGER IF NOT EXISTS {TABLE}_no_update BEFORE UPDATE ON {TABLE} "
    f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END",
    f"CREATE TRIGGER IF NOT EXISTS {TABLE}_no_delete BEFORE DELETE ON {TABLE} "
    f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END",
]
SQLITE_DROP = [f"DROP TRIGGER IF EXISTS {TABLE}_no_update", f"DROP TRIGGER IF EXISTS {TABLE}_no_delete"]

POSTGRESQL_CREATE = [
    f"""CREATE OR REPLACE FUNCTION {TABLE}_refuse() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '{REFUSAL}' USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql""",
    f"DROP TRIGGER IF EXISTS {TABLE}_append_only ON {TABLE}",
    f"CREATE TRIGGER {TABLE}_append_only BEFORE UPDATE OR DELETE ON {TABLE} "
    f"FOR EACH ROW EXECUTE FUNCTION {TABLE}_refuse()",
]
POSTGRESQL_DROP = [
    f"DROP TRIGGER IF EXISTS {TABLE}_append_only ON {TABLE}",
    f"DROP FUNCTION IF EXISTS {TABLE}_refuse()",
]


def guard_statements(vendor: str, *, create: bool) -> list[str]:
    """The SQL that installs (or removes) the triggers on this database; none on another vendor."""
    if vendor == "sqlite":
        return SQLITE_CREATE if create else SQLITE_DROP
    if vendor == "postgresql":
        return POSTGRESQL_CREATE if create else POSTGRESQL_DROP
    return []
