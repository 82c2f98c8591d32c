from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.exceptions import PermissionDenied
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from console import services
from console.lib import crypto
from console.models import AccessKey, ApiKey, Membership, Project, Role
from tests.conftest import Persona


def test_api_key_is_stored_hashed_and_authenticates(alice: Persona) -> None:
    key, raw = services.api_key_create(user=alice.user, project=alice.project, name="ci")
    assert raw.startswith("lmc-") and len(raw) == 52
    assert key.prefix == raw[:12]
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM console_apikey")
        row = " ".join(str(v) for v in cursor.fetchone())
    assert raw not in row and raw[12:] not in row
    found = services.api_key_authenticate(raw=raw)
    assert found is not None and found.pk == key.pk and found.project_id == alice.project.id
    assert found.last_used_at is not None


@pytest.mark.parametrize("raw", ["", "lmc-", "lmc-" + "x" * 48, "sk-" + "x" * 49, "lmc-" + "x" * 47])
def test_unknown_or_malformed_key_is_refused(alice: Persona, raw: str) -> None:
    services.api_key_create(user=alice.user, project=alice.project, name="ci")
    assert services.api_key_authenticate(raw=raw) is None


def test_last_used_is_throttled(alice: Persona, settings: object) -> None:
    _, raw = services.api_key_create(user=alice.user, project=alice.project, name="ci")
    first = services.api_key_authenticate(raw=raw)
    second = services.api_key_authenticate(raw=raw)
    assert first and second and first.last_used_at == second.last_used_at
    ApiKey.objects.update(last_used_at=timezone.now() - timedelta(hours=1))
    third = services.api_key_authenticate(raw=raw)
    assert third and third.last_used_at and third.last_used_at > timezone.now() - timedelta(minutes=1)


def test_revoked_expired_and_removed_member_keys_stop_working(alice: Persona, dave: Persona) -> None:
    key, raw = services.api_key_create(user=alice.user, project=alice.project, name="a")
    services.api_key_revoke(key=key, by=alice.user)
    assert services.api_key_authenticate(raw=raw) is None

    key2, raw2 = services.api_key_create(user=alice.user, project=alice.project, name="b", expires_in_days=7)
    assert key2.expires_at and key2.expires_at > timezone.now() + timedelta(days=6)
    ApiKey.objects.filter(pk=key2.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert services.api_key_authenticate(raw=raw2) is None

    _, raw3 = services.api_key_create(user=dave.user, project=alice.project, name="c")
    assert services.api_key_authenticate(raw=raw3) is not None
    Membership.objects.filter(user=dave.user).delete()
    assert services.api_key_authenticate(raw=raw3) is None


def test_only_owner_or_admin_revokes(alice: Persona, dave: Persona, bob: Persona) -> None:
    key, _ = services.api_key_create(user=dave.user, project=alice.project, name="dave's")
    with pytest.raises(PermissionDenied):
        services.api_key_revoke(key=key, by=bob.user)
    services.api_key_revoke(key=key, by=alice.user)  # admin of the project
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_cannot_create_key_in_foreign_project(alice: Persona, bob: Persona) -> None:
    with pytest.raises(PermissionDenied):
        services.api_key_create(user=bob.user, project=alice.project, name="sneaky")
    with pytest.raises(PermissionDenied):
        services.access_key_create(user=bob.user, project=alice.project, name="sneaky")


def test_access_key_secret_encrypted_at_rest_and_recoverable(alice: Persona) -> None:
    key, secret = services.access_key_create(user=alice.user, project=alice.project, name="sdk")
    assert len(key.access_key_id) == 20 and all(c.isdigit() or c.isupper() for c in key.access_key_id)
    assert len(secret) == 40
    with connection.cursor() as cursor:
        cursor.execute("SELECT secret_encrypted FROM console_accesskey")
        stored = cursor.fetchone()[0]
    assert secret not in stored
    resolved = services.access_key_resolve(access_key_id=key.access_key_id)
    assert resolved is not None and resolved[1] == secret
    services.access_key_revoke(key=key, by=alice.user)
    assert services.access_key_resolve(access_key_id=key.access_key_id) is None


def test_secret_survives_key_rotation_through_fallbacks(alice: Persona, settings: object) -> None:
    key, secret = services.access_key_create(user=alice.user, project=alice.project, name="sdk")
    old = settings.SECRET_KEY  # type: ignore[attr-defined]
    settings.SECRET_KEY = "a-new-secret-key-" + "x" * 40  # type: ignore[attr-defined]
    settings.SECRET_KEY_FALLBACKS = [old]  # type: ignore[attr-defined]
    assert crypto.decrypt(AccessKey.objects.get(pk=key.pk).secret_encrypted) == secret
    settings.SECRET_KEY_FALLBACKS = []  # type: ignore[attr-defined]
    assert services.access_key_resolve(access_key_id=key.access_key_id) is None


def test_bootstrap_is_idempotent(db: None, settings: object) -> None:
    out = StringIO()
    settings.CONSOLE_ADMIN_PASSWORD = "first-Password-1"  # type: ignore[attr-defined]
    call_command("bootstrap", stdout=out)
    call_command("bootstrap", stdout=out)
    assert Project.objects.filter(name="default").count() == 1
    from django.contrib.auth import get_user_model

    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.check_password("first-Password-1")
    assert Membership.objects.get(user=admin).role == Role.ADMIN
    settings.CONSOLE_ADMIN_PASSWORD = "second-Password-2"  # type: ignore[attr-defined]
    call_command("bootstrap", stdout=out)
    admin.refresh_from_db()
    assert admin.check_password("second-Password-2")


def test_bootstrap_without_password_generates_and_keeps_one(db: None, settings: object, tmp_path: object) -> None:
    settings.CONSOLE_ADMIN_PASSWORD = ""  # type: ignore[attr-defined]
    settings.DATA_DIR = tmp_path  # type: ignore[attr-defined]
    call_command("bootstrap", stdout=StringIO())
    password = (tmp_path / "admin-password").read_text().strip()  # type: ignore[operator]
    from django.contrib.auth import get_user_model

    assert get_user_model().objects.get(username="admin").check_password(password)
    banner = StringIO()
    call_command("banner", stdout=banner)
    assert f"admin / {password}" in banner.getvalue()
    call_command("bootstrap", stdout=StringIO())
    assert get_user_model().objects.get(username="admin").check_password(password)


def test_create_api_key_command_prints_key_alone(alice: Persona) -> None:
    out = StringIO()
    call_command("create_api_key", "alice", stdout=out)
    raw = out.getvalue().strip()
    assert "\n" not in raw
    key = services.api_key_authenticate(raw=raw)
    assert key is not None and key.user == alice.user and key.project == alice.project


def test_create_access_key_command_prints_ak_and_sk(alice: Persona, bob: Persona) -> None:
    out = StringIO()
    call_command("create_access_key", "alice", "--project", alice.project.id, stdout=out)
    ak, sk = out.getvalue().strip().split(" ")
    resolved = services.access_key_resolve(access_key_id=ak)
    assert resolved is not None and resolved[1] == sk
    with pytest.raises(CommandError, match="not a member"):
        call_command("create_access_key", "alice", "--project", bob.project.id, stdout=StringIO())
    with pytest.raises(CommandError, match="no user"):
        call_command("create_api_key", "nobody", stdout=StringIO())


def test_project_keeps_an_admin(alice: Persona, dave: Persona) -> None:
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        services.membership_set(project=alice.project, username="alice", role=Role.MEMBER, by=alice.user)
    services.membership_set(project=alice.project, username="dave", role=Role.ADMIN, by=alice.user)
    services.membership_set(project=alice.project, username="alice", role=Role.MEMBER, by=alice.user)
    assert Membership.objects.get(user=alice.user).role == Role.MEMBER


def test_project_ids_are_32_hex(alice: Persona) -> None:
    assert len(alice.project.id) == 32
    int(alice.project.id, 16)
