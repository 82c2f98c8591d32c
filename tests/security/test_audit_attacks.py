"""Attacks on the audit log (issue 14): reading it without being the project's admin, reading another
project's, and rewriting history through the ORM, the admin or raw SQL (SQLite here; PostgreSQL in
the services run, where DATABASE_URL points the whole suite at it)."""

from __future__ import annotations

import os

import pytest
from django.db import DatabaseError, connection, transaction
from django.test import Client

from console import services as console_services
from console.models import AuditEvent, AuditRefused
from tests.conftest import Persona, services_configured


@pytest.fixture
def entry(alice: Persona) -> AuditEvent:
    key, _ = console_services.api_key_create(user=alice.user, project=alice.project, name="secret-plan")
    return AuditEvent.objects.get(action="api_key.create", target_id=str(key.pk))


def _client(persona: Persona) -> Client:
    client = Client()
    client.force_login(persona.user)
    return client


@pytest.mark.parametrize("who", ["dave", "carol"])
def test_members_and_operators_cannot_read_the_log_nor_see_its_link(
    who: str, entry: AuditEvent, request: pytest.FixtureRequest
) -> None:
    persona: Persona = request.getfixturevalue(who)
    client = _client(persona)
    response = client.get("/audit/")
    assert response.status_code == 403
    assert "secret-plan" not in response.content.decode()
    for page in ("/", "/keys/"):
        assert 'href="/audit/"' not in client.get(page).content.decode()


def test_the_admin_sees_the_link(alice: Persona, entry: AuditEvent) -> None:
    client = _client(alice)
    assert 'href="/audit/"' in client.get("/").content.decode()
    assert "secret-plan" in client.get("/audit/").content.decode()


def test_another_projects_admin_sees_none_of_its_entries(alice: Persona, bob: Persona, entry: AuditEvent) -> None:
    client = _client(bob)
    for query in ({}, {"text": "secret-plan"}, {"user": "alice"}, {"project": alice.project.pk}):
        response = client.get("/audit/", query)
        assert response.status_code == 200
        table = response.content.decode().split('id="audit-events"', 1)[1]
        assert "secret-plan" not in table and "alice" not in table
    # Switching to a project bob is not in is refused, so his audit page cannot be pointed at alice's.
    assert client.post("/projects/switch/", {"project_id": alice.project.pk}).status_code == 404
    assert "secret-plan" not in client.get("/audit/").content.decode()
    from console import selectors

    assert not selectors.audit_events(project=bob.project).filter(project=alice.project).exists()


def test_anonymous_visitors_are_sent_to_sign_in(entry: AuditEvent) -> None:
    response = Client().get("/audit/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_the_orm_refuses_to_change_or_delete_entries(entry: AuditEvent) -> None:
    entry.summary = "nothing happened"
    with pytest.raises(AuditRefused):
        entry.save()
    with pytest.raises(AuditRefused):
        entry.delete()
    with pytest.raises(AuditRefused):
        AuditEvent.objects.filter(pk=entry.pk).update(summary="nothing happened")
    with pytest.raises(AuditRefused):
        AuditEvent.objects.filter(pk=entry.pk).delete()
    with pytest.raises(AuditRefused):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get(pk=entry.pk).summary.startswith("alice created API key secret-plan")


def test_the_admin_offers_no_change_or_delete(entry: AuditEvent) -> None:
    from django.contrib import admin

    model_admin = admin.site._registry[AuditEvent]
    assert model_admin.has_change_permission(None) is False  # type: ignore[arg-type]
    assert model_admin.has_delete_permission(None) is False  # type: ignore[arg-type]
    assert model_admin.has_add_permission(None) is False  # type: ignore[arg-type]


def test_deleting_the_user_or_the_project_keeps_their_history(alice: Persona, entry: AuditEvent) -> None:
    alice.project.delete()
    alice.user.delete()
    kept = AuditEvent.objects.get(pk=entry.pk)
    assert (kept.actor_name, kept.action) == ("alice", "api_key.create")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE console_auditevent SET summary = 'nothing happened' WHERE id = %s",
        "UPDATE console_auditevent SET ip_address = NULL WHERE id = %s",
        "DELETE FROM console_auditevent WHERE id = %s",
    ],
)
def test_the_database_refuses_raw_sql_changes(entry: AuditEvent, statement: str) -> None:
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement, [entry.pk])
    kept = AuditEvent.objects.get(pk=entry.pk)
    assert kept.summary == entry.summary and kept.ip_address == entry.ip_address


def test_the_database_still_takes_new_entries(entry: AuditEvent) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM console_auditevent")
        (count,) = cursor.fetchone()
    console_services.api_key_create(user=entry.actor, project=entry.project, name="another")  # type: ignore[arg-type]
    assert AuditEvent.objects.count() == count + 1


@pytest.mark.services
@pytest.mark.skipif(
    not services_configured() or not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="needs DATABASE_URL (PostgreSQL) and REDIS_URL (the services run)",
)
def test_postgresql_holds_the_trigger_and_refuses_with_insufficient_privilege(entry: AuditEvent) -> None:
    assert connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'console_auditevent'::regclass AND NOT tgisinternal"
        )
        assert [row[0] for row in cursor.fetchall()] == ["console_auditevent_append_only"]
    with pytest.raises(DatabaseError) as raised, transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM console_auditevent")
    assert getattr(raised.value.__cause__, "sqlstate", None) == "42501"
    assert AuditEvent.objects.filter(pk=entry.pk).exists()
