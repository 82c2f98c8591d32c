"""alice owns a project, bob owns another, carol is an operator and dave a member in alice's."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from console import services
from console.models import ApiKey
from tests.conftest import Persona


def test_bob_cannot_see_alice_project(alice: Persona, bob: Persona, client: Client) -> None:
    client.force_login(bob.user)
    assert client.get(reverse("console:project_detail", args=[alice.project.id])).status_code == 404
    assert alice.project.name not in client.get(reverse("console:project_list")).content.decode()
    assert alice.project.id not in client.get("/").content.decode()


def test_bob_cannot_switch_into_alice_project(alice: Persona, bob: Persona, client: Client) -> None:
    client.force_login(bob.user)
    assert client.post(reverse("console:project_switch"), {"project_id": alice.project.id}).status_code == 404
    # A tampered session falls back to bob's own project.
    session = client.session
    session["project_id"] = alice.project.id
    session.save()
    html = client.get(reverse("console:keys")).content.decode()
    assert bob.project.id in html and alice.project.id not in html


def test_bob_cannot_see_or_revoke_alice_keys(alice: Persona, bob: Persona, client: Client) -> None:
    key, raw = services.api_key_create(user=alice.user, project=alice.project, name="alice-secret-key")
    ak, _ = services.access_key_create(user=alice.user, project=alice.project, name="alice-ak")
    client.force_login(bob.user)
    html = client.get(reverse("console:keys")).content.decode()
    assert "alice-secret-key" not in html and key.prefix not in html and ak.access_key_id not in html
    assert client.post(reverse("console:api_key_revoke", args=[key.pk])).status_code == 404
    assert client.post(reverse("console:access_key_revoke", args=[ak.pk])).status_code == 404
    assert services.api_key_authenticate(raw=raw) is not None


def test_bob_cannot_manage_alice_members(alice: Persona, bob: Persona, client: Client) -> None:
    client.force_login(bob.user)
    url = reverse("console:project_detail", args=[alice.project.id])
    assert client.post(url, {"username": "bob", "role": "admin"}).status_code == 404
    remove = reverse("console:member_remove", args=[alice.project.id, alice.user.pk])
    assert client.post(remove).status_code == 404
    assert not alice.project.memberships.filter(user=bob.user).exists()


def test_bob_key_resolves_only_to_bob_project(alice: Persona, bob: Persona) -> None:
    _, raw = services.api_key_create(user=bob.user, project=bob.project, name="bob")
    key = services.api_key_authenticate(raw=raw)
    assert key is not None and key.project_id == bob.project.id != alice.project.id


@pytest.mark.parametrize("persona", ["carol", "dave"])
def test_non_admins_cannot_manage_members(persona: str, request: pytest.FixtureRequest, client: Client) -> None:
    who: Persona = request.getfixturevalue(persona)
    client.force_login(who.user)
    url = reverse("console:project_detail", args=[who.project.id])
    page = client.get(url)
    assert page.status_code == 200 and b"Add a member" not in page.content
    assert client.post(url, {"username": who.user.username, "role": "admin"}).status_code == 403
    admin_id = who.project.memberships.get(role="admin").user_id
    assert client.post(reverse("console:member_remove", args=[who.project.id, admin_id])).status_code == 403


def test_members_see_only_their_own_keys_admin_sees_all(alice: Persona, dave: Persona, client: Client) -> None:
    services.api_key_create(user=alice.user, project=alice.project, name="alice-key")
    dave_key, _ = services.api_key_create(user=dave.user, project=alice.project, name="dave-key")
    client.force_login(dave.user)
    html = client.get(reverse("console:keys")).content.decode()
    assert "dave-key" in html and "alice-key" not in html
    client.force_login(alice.user)
    html = client.get(reverse("console:keys")).content.decode()
    assert "dave-key" in html and "alice-key" in html
    # dave cannot revoke alice's key
    alice_key = ApiKey.objects.get(name="alice-key")
    client.force_login(dave.user)
    assert client.post(reverse("console:api_key_revoke", args=[alice_key.pk])).status_code == 403
    assert client.post(reverse("console:api_key_revoke", args=[dave_key.pk])).status_code == 302


def test_anonymous_is_sent_to_login(db: None, client: Client) -> None:
    for name in ("console:dashboard", "console:keys", "console:project_list"):
        response = client.get(reverse(name))
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
