from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse

from console import services
from console.models import ApiKey, Role
from tests.conftest import ROOT, Persona
from tests.factories import PASSWORD


@pytest.fixture
def client_for(client: Client):  # type: ignore[no-untyped-def]
    def login(persona: Persona) -> Client:
        client.force_login(persona.user)
        return client

    return login


def test_login_logout_and_password_change(alice: Persona, client: Client) -> None:
    assert client.get("/").status_code == 302  # anonymous → login
    response = client.post(reverse("login"), {"username": "alice", "password": "wrong"})
    assert response.status_code == 200 and b"didn't match" in response.content
    response = client.post(reverse("login"), {"username": "alice", "password": PASSWORD}, follow=True)
    assert b"Dashboard" in response.content and b"alice-project" in response.content
    response = client.post(
        reverse("password_change"),
        {"old_password": PASSWORD, "new_password1": "a-Much-better-one-42", "new_password2": "a-Much-better-one-42"},
        follow=True,
    )
    assert b"Password changed" in response.content
    client.post(reverse("logout"))
    assert client.get("/").status_code == 302
    assert client.login(username="alice", password="a-Much-better-one-42")


def test_navigation_links_only_to_pages_that_exist(alice: Persona, client_for) -> None:  # type: ignore[no-untyped-def]
    html = client_for(alice).get("/").content.decode()
    nav = re.search(r'<nav class="mainnav".*?</nav>', html, re.S)
    assert nav is not None
    for href in re.findall(r'href="([^"]+)"', nav.group(0)):
        assert client_for(alice).get(href).status_code == 200, href
    assert "Dashboard" in nav.group(0) and "API keys" in nav.group(0)
    assert "Admin" not in nav.group(0)  # alice is not staff


def test_admin_sees_admin_link_and_admin_site(db: None, client: Client) -> None:
    from tests.factories import make_project, make_user

    root = make_user("root", is_staff=True)
    root.is_superuser = True
    root.save()
    make_project(name="ops", owner=root)
    client.force_login(root)
    assert 'href="/admin/"' in client.get("/").content.decode()
    assert client.get("/admin/").status_code == 200


def test_api_key_is_shown_once(alice: Persona, client_for) -> None:  # type: ignore[no-untyped-def]
    client = client_for(alice)
    response = client.post(
        reverse("console:keys"), {"kind": "api", "api-name": "notebook", "api-expires_in_days": "30"}, follow=True
    )
    html = response.content.decode()
    raw = re.search(r'id="created-secret">(lmc-[A-Za-z0-9]+)<', html)
    assert raw is not None
    assert services.api_key_authenticate(raw=raw.group(1)) is not None
    again = client.get(reverse("console:keys")).content.decode()
    assert raw.group(1) not in again and raw.group(1)[:12] in again
    assert response["Cache-Control"].startswith("max-age=0") or "no-cache" in response["Cache-Control"]


def test_access_key_secret_is_shown_once(alice: Persona, client_for) -> None:  # type: ignore[no-untyped-def]
    client = client_for(alice)
    html = client.post(reverse("console:keys"), {"kind": "ak", "ak-name": "sdk"}, follow=True).content.decode()
    ak = re.search(r'id="created-ak">([A-Z0-9]{20})<', html)
    sk = re.search(r'id="created-secret">([A-Za-z0-9]{40})<', html)
    assert ak and sk
    resolved = services.access_key_resolve(access_key_id=ak.group(1))
    assert resolved and resolved[1] == sk.group(1)
    assert sk.group(1) not in client.get(reverse("console:keys")).content.decode()


def test_key_form_errors_are_shown(alice: Persona, client_for) -> None:  # type: ignore[no-untyped-def]
    response = client_for(alice).post(
        reverse("console:keys"), {"kind": "api", "api-name": "", "api-expires_in_days": "5"}
    )
    assert response.status_code == 200
    assert b"This field is required" in response.content and b"Select a valid choice" in response.content
    assert ApiKey.objects.count() == 0


def test_revoke_from_page(alice: Persona, client_for) -> None:  # type: ignore[no-untyped-def]
    key, raw = services.api_key_create(user=alice.user, project=alice.project, name="old")
    response = client_for(alice).post(reverse("console:api_key_revoke", args=[key.pk]), follow=True)
    assert b"revoked" in response.content
    assert services.api_key_authenticate(raw=raw) is None


def test_create_project_and_switch(alice: Persona, client_for) -> None:  # type: ignore[no-untyped-def]
    alice.user.is_staff = True  # site staff create projects (tests/security/test_tenancy_attacks.py)
    alice.user.save(update_fields=["is_staff"])
    client = client_for(alice)
    response = client.post(reverse("console:project_list"), {"name": "second", "description": ""}, follow=True)
    assert b"second" in response.content
    html = client.get("/").content.decode()
    assert '<div class="stat">second</div>' in html
    client.post(reverse("console:project_switch"), {"project_id": alice.project.id, "next": "//evil.example/"})
    assert '<div class="stat">alice-project</div>' in client.get("/").content.decode()


def test_admin_manages_members(alice: Persona, bob: Persona, client_for) -> None:  # type: ignore[no-untyped-def]
    client = client_for(alice)
    url = reverse("console:project_detail", args=[alice.project.id])
    response = client.post(url, {"username": "nobody", "role": "member"})
    assert b"No user is called" in response.content
    client.post(url, {"username": "bob", "role": Role.OPERATOR})
    assert alice.project.memberships.get(user=bob.user).role == Role.OPERATOR
    response = client.post(url, {"username": "alice", "role": Role.MEMBER})
    assert b"at least one admin" in response.content


def test_healthz_shallow(client: Client, db: None) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_bad_input_never_500(alice: Persona, client_for) -> None:  # type: ignore[no-untyped-def]
    client = client_for(alice)
    assert client.post(reverse("console:keys"), {"kind": "weird"}).status_code == 200
    assert client.post(reverse("console:project_switch"), {}).status_code == 404
    assert client.get("/projects/" + "z" * 500 + "/").status_code == 404
    assert client.post(reverse("console:api_key_revoke", args=[999999])).status_code == 404
    assert client.get("/healthz?deep=maybe").status_code == 200


def test_templates_use_no_cdn() -> None:
    for path in list((ROOT / "templates").rglob("*.html")) + list((ROOT / "static").rglob("*.*")):
        text = Path(path).read_text(errors="ignore")
        assert not re.search(r'(src|href)=["\']https?://', text), path
        assert "@import url(http" not in text, path


def test_dashboard_shows_usage_of_the_last_day(alice: Persona, bob: Persona, client_for) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from django.utils import timezone

    from chat.models import UsageRecord

    common = {"dialect": "openai", "mode": "chat", "request_id": "r"}
    UsageRecord.objects.create(project=alice.project, status="ok", total_tokens=30, **common)
    UsageRecord.objects.create(project=alice.project, status="error", total_tokens=0, **common)
    UsageRecord.objects.create(
        project=alice.project, status="ok", total_tokens=999, created_at=timezone.now() - timedelta(days=2), **common
    )
    UsageRecord.objects.create(project=bob.project, status="ok", total_tokens=777, **common)
    html = client_for(alice).get("/").content.decode()
    assert '<div class="stat" id="usage-calls">2</div>' in html
    assert "30 tokens" in html and "1 refused or failed" in html
