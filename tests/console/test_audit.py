"""The audit log (issue 14): an entry for every audited action with who, what, target and from where;
the /audit/ page for project admins, its filters and pages. Attacks on it (other roles, other
projects, rewriting history) are in tests/security/test_audit_attacks.py."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.test import Client
from django.utils import timezone

from console import services as console_services
from console.audit import AuditOrigin, origin_scope
from console.models import AccessKey, ApiKey, AuditEvent, Project
from forecasts.models import ForecastJob
from models_registry.models import Deployment, LlmModel, Provider
from tests.conftest import Persona
from tests.factories import PASSWORD, make_project, make_user

ADDRESS = "203.0.113.7"
AGENT = "audit-test/1.0"


def fields(event: AuditEvent) -> dict[str, Any]:
    return {
        "project": event.project_id,
        "actor": event.actor_id,
        "actor_name": event.actor_name,
        "via": event.via,
        "action": event.action,
        "target": (event.target_type, event.target_id),
        "ip": event.ip_address,
        "agent": event.user_agent,
    }


def only(**filters: Any) -> AuditEvent:
    events = list(AuditEvent.objects.filter(**filters))
    assert len(events) == 1, [str(e) for e in events]
    return events[0]


@pytest.fixture
def browser(alice: Persona) -> Client:
    client = Client(REMOTE_ADDR=ADDRESS, HTTP_USER_AGENT=AGENT)
    client.force_login(alice.user)
    return client


# --- sign-ins ---------------------------------------------------------------------------------------
def test_sign_in_is_recorded_in_each_project_of_the_user(alice: Persona) -> None:
    second = make_project(name="second", owner=alice.user)
    client = Client(REMOTE_ADDR=ADDRESS, HTTP_USER_AGENT=AGENT)
    response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    for project in (alice.project, second):
        event = only(action="auth.login", project=project)
        assert fields(event) == {
            "project": project.pk,
            "actor": alice.user.pk,
            "actor_name": "alice",
            "via": "password",
            "action": "auth.login",
            "target": ("User", str(alice.user.pk)),
            "ip": ADDRESS,
            "agent": AGENT,
        }
        assert event.summary == "alice signed in alice"


def test_failed_sign_in_records_the_username_tried(alice: Persona) -> None:
    client = Client(REMOTE_ADDR=ADDRESS, HTTP_USER_AGENT=AGENT)
    assert client.post("/accounts/login/", {"username": "alice", "password": "wrong"}).status_code == 200
    event = only(action="auth.login_failed")
    assert fields(event) == {
        "project": alice.project.pk,
        "actor": None,
        "actor_name": "alice",
        "via": "password",
        "action": "auth.login_failed",
        "target": ("User", str(alice.user.pk)),
        "ip": ADDRESS,
        "agent": AGENT,
    }
    assert event.changes == {"username": "alice"} and event.summary == "Failed sign-in as “alice”"


def test_failed_sign_in_as_nobody_is_kept_without_a_project(db: None) -> None:
    client = Client(REMOTE_ADDR=ADDRESS, HTTP_USER_AGENT=AGENT)
    client.post("/accounts/login/", {"username": "mallory", "password": "guess"})
    event = only(action="auth.login_failed")
    assert (event.project_id, event.actor_name, event.target_type, event.ip_address) == (
        None,
        "mallory",
        "username",
        ADDRESS,
    )


# --- keys --------------------------------------------------------------------------------------------
def test_api_key_created_and_revoked_once(alice: Persona, browser: Client) -> None:
    browser.post("/keys/", {"kind": "api", "api-name": "ci-bot", "api-expires_in_days": ""})
    key = ApiKey.objects.get(name="ci-bot")
    created = only(action="api_key.create")
    assert fields(created) == {
        "project": alice.project.pk,
        "actor": alice.user.pk,
        "actor_name": "alice",
        "via": "session",
        "action": "api_key.create",
        "target": ("ApiKey", str(key.pk)),
        "ip": ADDRESS,
        "agent": AGENT,
    }
    assert created.changes == {"name": "ci-bot", "prefix": key.prefix, "expires_at": None}
    assert created.summary == f"alice created API key ci-bot ({key.prefix}…)"
    for _ in range(2):  # revoking is idempotent: the second changes nothing and records nothing
        browser.post(f"/keys/api/{key.pk}/revoke/")
    revoked = only(action="api_key.revoke")
    assert (revoked.actor_id, revoked.target_id, revoked.ip_address) == (alice.user.pk, str(key.pk), ADDRESS)


def test_access_key_created_and_revoked(alice: Persona, browser: Client) -> None:
    browser.post("/keys/", {"kind": "ak", "ak-name": "sdk", "ak-expires_in_days": "7"})
    key = AccessKey.objects.get(name="sdk")
    created = only(action="access_key.create")
    assert fields(created)["target"] == ("AccessKey", str(key.pk))
    assert (created.actor_id, created.via, created.ip_address) == (alice.user.pk, "session", ADDRESS)
    assert created.changes["access_key_id"] == key.access_key_id
    browser.post(f"/keys/access/{key.pk}/revoke/")
    revoked = only(action="access_key.revoke")
    assert (revoked.target_type, revoked.target_id, revoked.ip_address) == ("AccessKey", str(key.pk), ADDRESS)


# --- the registry ------------------------------------------------------------------------------------
def test_registry_changes_through_the_api_say_which_key(alice: Persona) -> None:
    key, raw = console_services.api_key_create(user=alice.user, project=alice.project, name="ops")
    client = Client(REMOTE_ADDR=ADDRESS, HTTP_USER_AGENT=AGENT, HTTP_AUTHORIZATION=f"Bearer {raw}")

    def call(method: str, path: str, body: Any = None) -> Any:
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs = {"data": json.dumps(body), "content_type": "application/json"}
        response = getattr(client, method)(f"/api/registry{path}", **kwargs)
        assert response.status_code < 300, response.content
        return response.json() if response.content else None

    provider = call(
        "post",
        "/providers",
        {"slug": "ds", "name": "DS", "kind": "openai_compatible", "base_url": "https://ds.example/v1"},
    )
    call("patch", f"/providers/{provider['id']}", {"enabled": False})
    call("patch", f"/providers/{provider['id']}", {"enabled": True})
    call("patch", f"/providers/{provider['id']}", {"name": "DeepSeek"})
    model = call("post", "/models", {"provider": "ds", "name": "ds-chat", "context_length": 4096})
    call("patch", f"/models/{model['id']}", {"enabled": False})
    call("patch", f"/models/{model['id']}", {"enabled": True})
    deployment = call("post", "/deployments", {"model": model["id"]})
    call("patch", f"/deployments/{deployment['id']}", {"name": "prod"})
    call("delete", f"/deployments/{deployment['id']}")
    call("delete", f"/models/{model['id']}")
    call("delete", f"/providers/{provider['id']}")

    expected = [
        ("provider.create", "Provider", provider["id"]),
        ("provider.disable", "Provider", provider["id"]),
        ("provider.enable", "Provider", provider["id"]),
        ("provider.update", "Provider", provider["id"]),
        ("model.create", "LlmModel", model["id"]),
        ("model.disable", "LlmModel", model["id"]),
        ("model.enable", "LlmModel", model["id"]),
        ("deployment.create", "Deployment", deployment["id"]),
        ("deployment.update", "Deployment", deployment["id"]),
        ("deployment.delete", "Deployment", deployment["id"]),
        ("model.delete", "LlmModel", model["id"]),
        ("provider.delete", "Provider", provider["id"]),
    ]
    events = list(AuditEvent.objects.filter(project=alice.project).exclude(action="api_key.create").order_by("pk"))
    assert [(e.action, e.target_type, e.target_id) for e in events] == [(a, t, str(i)) for a, t, i in expected]
    for event in events:
        assert (event.actor_id, event.via, event.ip_address, event.user_agent) == (
            alice.user.pk,
            f"api_key {key.pk}",
            ADDRESS,
            AGENT,
        )
    assert not Provider.objects.exists() and not LlmModel.objects.exists() and not Deployment.objects.exists()


def test_entry_and_change_share_one_transaction(alice: Persona, monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry that cannot be written takes its change with it (and a refused change records nothing)."""
    from django.core.exceptions import ValidationError

    from models_registry import services as registry

    with pytest.raises(ValidationError):
        registry.provider_create(project=alice.project, by=alice.user, fields={"slug": "x", "kind": "no-such-kind"})
    assert not AuditEvent.objects.exists()

    def broken(**kwargs: Any) -> None:
        raise RuntimeError("audit table unavailable")

    monkeypatch.setattr(registry, "audit_record", broken)
    monkeypatch.setattr(console_services, "audit_record", broken)
    with pytest.raises(RuntimeError):
        registry.provider_create(
            project=alice.project,
            by=alice.user,
            fields={"slug": "ds", "name": "DS", "kind": "openai_compatible", "base_url": "https://ds.example/v1"},
        )
    with pytest.raises(RuntimeError):
        console_services.api_key_create(user=alice.user, project=alice.project, name="k")
    assert not Provider.objects.exists() and not ApiKey.objects.exists()


def test_origin_scope_is_the_entry_origin_outside_a_request(alice: Persona) -> None:
    with origin_scope(AuditOrigin(ip="2001:db8::1", user_agent="cli", via="aksk")):
        key, _ = console_services.api_key_create(user=alice.user, project=alice.project, name="k")
    event = only(action="api_key.create")
    assert (event.ip_address, event.user_agent, event.via) == ("2001:db8::1", "cli", "aksk")
    console_services.api_key_revoke(key=key, by=alice.user)  # a command or worker: no origin at all
    revoked = only(action="api_key.revoke")
    assert (revoked.ip_address, revoked.user_agent, revoked.via) == (None, "", "")


# --- the gateway's doors: IAM tokens and forecast jobs, behind a trusted proxy ---------------------------
@pytest.fixture(scope="module")
def proxied_url() -> Iterator[str]:
    """The whole application behind a proxy it trusts (loopback): X-Forwarded-For names the client."""
    from console.asgi import application
    from console.lib.asgi import TrustedProxies
    from tests.conftest import serve_in_thread

    with serve_in_thread(TrustedProxies(application.app, networks=[ipaddress.ip_network("127.0.0.0/8")])) as url:
        yield url


def _iam_body(username: str, password: str) -> dict[str, Any]:
    return {
        "auth": {"identity": {"methods": ["password"], "password": {"user": {"name": username, "password": password}}}}
    }


def test_iam_tokens_and_failed_passwords_name_the_forwarded_client(transactional_db: None, proxied_url: str) -> None:
    user = make_user("alice")
    project = make_project(name="alice-project", owner=user)
    headers = {"X-Forwarded-For": f"{ADDRESS}", "User-Agent": AGENT}
    ok = httpx.post(f"{proxied_url}/v3/auth/tokens", json=_iam_body("alice", PASSWORD), headers=headers, timeout=30)
    assert ok.status_code == 201, ok.text
    issued = only(action="iam.token_issue")
    assert fields(issued) == {
        "project": project.pk,
        "actor": user.pk,
        "actor_name": "alice",
        "via": "iam password",
        "action": "iam.token_issue",
        "target": ("Project", project.pk),
        "ip": ADDRESS,
        "agent": AGENT,
    }
    bad = httpx.post(f"{proxied_url}/v3/auth/tokens", json=_iam_body("alice", "wrong"), headers=headers, timeout=30)
    assert bad.status_code == 401, bad.text
    failed = only(action="auth.login_failed")
    assert (failed.actor_name, failed.via, failed.ip_address, failed.user_agent) == (
        "alice",
        "iam password",
        ADDRESS,
        AGENT,
    )


def test_forecast_jobs_submitted_and_cancelled_through_the_task_api(
    transactional_db: None, proxied_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from forecasts import tasks
    from forecasts.catalogue import bucket_register, forecast_catalogue_load
    from forecasts.samples import DEMO_BUCKET, install_demo
    from forecasts.storage import default_store
    from tests.forecasts.test_task_api import BODY

    monkeypatch.setattr(tasks, "enqueue_run", lambda run_id, attempt: None)
    monkeypatch.setattr(tasks, "revoke_job", lambda job_id: None)
    user = make_user("alice")
    project = make_project(name="alice-project", owner=user)
    forecast_catalogue_load(project=project)
    bucket_register(project=project, name=DEMO_BUCKET)
    install_demo(default_store())
    deployment = Deployment.objects.get(project=project, model__name="builtin-spectral")
    key, raw = console_services.api_key_create(user=user, project=project, name="jobs")
    url = f"{proxied_url}/v1/{project.pk}/deployments/{deployment.pk}/tasks"
    headers = {"X-Auth-Token": raw, "X-Forwarded-For": f"198.51.100.1, {ADDRESS}", "User-Agent": AGENT}
    created = httpx.post(url, json=BODY, headers=headers, timeout=60)
    assert created.status_code in (200, 201), created.text
    job = ForecastJob.objects.get()
    submitted = only(action="job.submit")
    assert fields(submitted) == {
        "project": project.pk,
        "actor": user.pk,
        "actor_name": "alice",
        "via": f"api_key {key.pk}",
        "action": "job.submit",
        "target": ("ForecastJob", str(job.pk)),
        "ip": ADDRESS,  # the rightmost address the trusted proxy did not add itself
        "agent": AGENT,
    }
    assert submitted.changes == {"deployment": deployment.pk, "engine": job.engine, "runs": 2}
    cancelled = httpx.delete(f"{url}/{job.pk}", headers=headers, timeout=60)
    assert cancelled.status_code == 200, cancelled.text
    event = only(action="job.cancel")
    assert (event.actor_id, event.target_id, event.via, event.ip_address) == (
        user.pk,
        str(job.pk),
        f"api_key {key.pk}",
        ADDRESS,
    )


def test_usage_downloads_say_who_took_which_calls(alice: Persona, browser: Client) -> None:
    response: Any = browser.get("/usage/export.csv?model=gpt-a&since=2026-04-01")
    assert response.status_code == 200
    b"".join(response.streaming_content)
    event = only(action="usage.export")
    assert fields(event) == {
        "project": alice.project.pk,
        "actor": alice.user.pk,
        "actor_name": "alice",
        "via": "session",
        "action": "usage.export",
        "target": ("Project", alice.project.pk),
        "ip": ADDRESS,
        "agent": AGENT,
    }
    assert event.changes == {"filters": {"model": "gpt-a", "since": "2026-04-01"}, "scope": "every call"}
    assert event.summary == f"alice downloaded the usage records of project {alice.project}"
    # Refused filters download nothing and record nothing.
    assert browser.get("/usage/export.csv?since=2026-05-02&until=2026-05-01").status_code == 400
    assert AuditEvent.objects.filter(action="usage.export").count() == 1


# --- the page ----------------------------------------------------------------------------------------
def _entry(project: Project, *, action: str, who: str, label: str, at: Any) -> None:
    AuditEvent.objects.create(
        project=project,
        actor_name=who,
        action=action,
        target_type="X",
        target_id="1",
        target_label=label,
        summary=f"{who} {action} {label}",
        created_at=at,
    )


def _labels(response: Any) -> list[str]:
    """The target labels of the page's rows, top to bottom (the last word of each summary)."""
    import re

    assert response.status_code == 200
    body = response.content.decode()
    table = body[body.index('id="audit-events"') :]
    return [summary.split()[-1] for summary in re.findall(r"<td>([^<]*)</td>\s*<td><code>", table)]


def test_page_filters_by_action_user_dates_and_text(alice: Persona, browser: Client) -> None:
    now = timezone.now()
    _entry(alice.project, action="model.create", who="alice", label="m-old", at=now - timedelta(days=10))
    _entry(alice.project, action="model.delete", who="alice", label="m-new", at=now - timedelta(days=1))
    _entry(alice.project, action="model.create", who="dave", label="m-dave", at=now - timedelta(days=1))

    def labels(**query: str) -> list[str]:
        return _labels(browser.get("/audit/", query))

    assert labels(action="model.create") == ["m-dave", "m-old"]
    assert labels(user="DAVE") == ["m-dave"]
    day = timezone.localdate(now)
    assert labels(action="model.create", since=str(day - timedelta(days=2)), until=str(day)) == ["m-dave"]
    assert labels(action="model.create", until=str(day - timedelta(days=9))) == ["m-old"]
    assert labels(text="M-NEW") == ["m-new"]
    # The first and last days a date can name (9999-12-31 has no day after it) filter like any other.
    everything = labels()
    assert len(everything) == 4  # the three entries and the test client's sign-in
    assert labels(since="0001-01-01", until="9999-12-31") == everything
    # A range that ends before it starts is refused in words and filters nothing away.
    response = browser.get("/audit/", {"since": str(day), "until": str(day - timedelta(days=1))})
    assert "on or before" in response.content.decode()


def test_page_is_newest_first_fifty_a_page(alice: Persona, browser: Client) -> None:
    start = timezone.now() - timedelta(hours=1)
    for i in range(60):
        _entry(alice.project, action="model.update", who="alice", label=f"n{i:02d}", at=start + timedelta(seconds=i))
    first = _labels(browser.get("/audit/", {"action": "model.update"}))
    assert first == [f"n{i:02d}" for i in range(59, 9, -1)]
    second = browser.get("/audit/", {"action": "model.update", "page": "2"})
    assert _labels(second) == [f"n{i:02d}" for i in range(9, -1, -1)]
    assert "Page 2 of 2 (60 entries)" in second.content.decode()
    for junk in ("0", "-1", "x", "999"):  # a page out of range shows the nearest, never an error
        assert browser.get("/audit/", {"page": junk}).status_code == 200
