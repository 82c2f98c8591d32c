"""Writes for accounts, projects and credentials. Views and commands call these; rules live here."""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.dispatch import receiver
from django.http import HttpRequest
from django.utils import timezone

from console.audit import AuditOrigin, current_origin, origin_of_request, plain_ip, summary_for
from console.lib import crypto
from console.models import AccessKey, ApiKey, AuditEvent, Membership, Project, Role

API_KEY_PREFIX = "lmc-"
API_KEY_SECRET_LENGTH = 48
# What the console shows of a key after creation: enough to tell keys apart, useless to an attacker.
API_KEY_VISIBLE_LENGTH = len(API_KEY_PREFIX) + 8
ACCESS_KEY_ID_LENGTH = 20
ACCESS_KEY_SECRET_LENGTH = 40
DEFAULT_PROJECT_NAME = "default"


def _role_of(*, user: User, project: Project) -> str | None:
    return Membership.objects.filter(user=user, project=project).values_list("role", flat=True).first()


def require_admin(*, user: User, project: Project) -> None:
    """Raise PermissionDenied unless the user administers the project. Every service that changes
    shared project configuration calls this, so views and the API cannot forget it."""
    if _role_of(user=user, project=project) != Role.ADMIN:
        raise PermissionDenied("Only a project admin can do this.")


def audit_record(
    *,
    project: Project | None,
    actor: User | None,
    action: str,
    target: object,
    changes: Mapping[str, object] | None = None,
    summary: str = "",
    origin: AuditOrigin | None = None,
    actor_name: str = "",
) -> AuditEvent:
    """Record an entry for the audit log. Call inside the transaction that makes the change, so the
    entry exists exactly when the change does. `origin` is where the change came from; by default the
    Django request being served (console.audit), empty for commands and workers."""
    origin = origin or current_origin()
    acting = actor if actor is not None and actor.is_authenticated else None
    target_label = str(target)[:255]
    name = actor_name or (acting.get_username() if acting is not None else "")
    return AuditEvent.objects.create(
        project=project,
        actor=acting,
        actor_name=name[:150],
        via=origin.via[:64],
        action=action,
        target_type="username" if isinstance(target, str) else type(target).__name__,
        target_id=str(getattr(target, "pk", "") or ""),
        target_label=target_label,
        summary=(summary or summary_for(who=name, action=action, target=target_label))[:255],
        changes=changes or {},
        ip_address=plain_ip(origin.ip),
        user_agent=origin.user_agent,
    )


def usage_export_record(*, membership: Membership, user: User, filters: Mapping[str, object]) -> None:
    """An audit entry for a download of usage records: who took which calls (the filters) out of the
    console. The download itself writes nothing, so the entry stands alone."""
    audit_record(
        project=membership.project,
        actor=user,
        action="usage.export",
        target=membership.project,
        changes={
            "filters": {name: str(value) for name, value in filters.items() if value not in (None, "")},
            "scope": "every call" if membership.role == Role.ADMIN else "own calls",
        },
    )


def _require_member(*, user: User, project: Project) -> None:
    if _role_of(user=user, project=project) is None:
        raise PermissionDenied("You are not a member of this project.")


def can_create_projects(*, user: User) -> bool:
    """Site staff create projects; ANYONE_CAN_CREATE_PROJECTS opens that to every active user. The
    creator becomes the project's admin, so this decides who can reach every admin-only rule."""
    if not user.is_active:
        return False
    return bool(user.is_staff or settings.ANYONE_CAN_CREATE_PROJECTS)


@transaction.atomic
def project_create(*, name: str, owner: User, by: User | None, description: str = "") -> Project:
    """Create a project; its owner becomes its first admin. `by` is who asks (None: the system, as
    bootstrap); a user who may not create projects is refused whatever door they came through."""
    if by is not None and not can_create_projects(user=by):
        raise PermissionDenied("Only site staff can create projects.")
    name = name.strip()
    if not name:
        raise ValidationError({"name": "A project needs a name."})
    project = Project.objects.create(name=name, description=description.strip())
    Membership.objects.create(project=project, user=owner, role=Role.ADMIN)
    return project


@transaction.atomic
def membership_set(*, project: Project, username: str, role: str, by: User) -> Membership:
    """Add a user to a project or change their role. Keeps at least one admin."""
    require_admin(user=by, project=project)
    if role not in Role.values:
        raise ValidationError({"role": f"Role must be one of {', '.join(Role.values)}."})
    user_model = get_user_model()
    try:
        user = user_model.objects.get(username=username)
    except user_model.DoesNotExist:
        raise ValidationError({"username": f"No user is called {username!r}."}) from None
    membership, created = Membership.objects.select_for_update().get_or_create(
        project=project, user=user, defaults={"role": role}
    )
    if not created and membership.role != role:
        if membership.role == Role.ADMIN:
            _ensure_other_admin(project=project, leaving=user)
        membership.role = role
        membership.save(update_fields=["role"])
    return membership


def _ensure_other_admin(*, project: Project, leaving: User) -> None:
    others = Membership.objects.filter(project=project, role=Role.ADMIN).exclude(user=leaving)
    if not others.exists():
        raise ValidationError("A project must keep at least one admin.")


@transaction.atomic
def membership_remove(*, project: Project, user_id: int, by: User) -> None:
    require_admin(user=by, project=project)
    membership = Membership.objects.select_for_update().filter(project=project, user_id=user_id).first()
    if membership is None:
        return
    if membership.role == Role.ADMIN:
        _ensure_other_admin(project=project, leaving=membership.user)
    membership.delete()


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _expiry(expires_in_days: int | None) -> datetime | None:
    if not expires_in_days:
        return None
    return timezone.now() + timedelta(days=expires_in_days)


@transaction.atomic
def api_key_create(
    *, user: User, project: Project, name: str, expires_in_days: int | None = None
) -> tuple[ApiKey, str]:
    """Create a key and return it with its raw value. The raw value is never stored or shown again."""
    _require_member(user=user, project=project)
    raw = API_KEY_PREFIX + crypto.random_token(API_KEY_SECRET_LENGTH)
    key = ApiKey.objects.create(
        project=project,
        user=user,
        name=name.strip() or "key",
        prefix=raw[:API_KEY_VISIBLE_LENGTH],
        hashed_key=crypto.sha256_hex(raw),
        expires_at=_expiry(expires_in_days),
    )
    audit_record(
        project=project,
        actor=user,
        action="api_key.create",
        target=key,
        changes={"name": key.name, "prefix": key.prefix, "expires_at": _iso(key.expires_at)},
    )
    return key, raw


def _can_manage(*, owner_id: int, project: Project, by: User) -> bool:
    return owner_id == by.pk or _role_of(user=by, project=project) == Role.ADMIN


@transaction.atomic
def api_key_revoke(*, key: ApiKey, by: User) -> None:
    """Revoke a key (its owner or a project admin). Idempotent: only the first revocation is audited."""
    if not _can_manage(owner_id=key.user_id, project=key.project, by=by):
        raise PermissionDenied("You cannot revoke this key.")
    if ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now()):
        audit_record(
            project=key.project,
            actor=by,
            action="api_key.revoke",
            target=key,
            changes={"owner": key.user.get_username()},
        )


def api_key_authenticate(*, raw: str) -> ApiKey | None:
    """Return the active key for a raw bearer value, or None.

    The lookup is by SHA-256, so comparison time does not depend on how much of a
    guess was right. last_used_at is written at most every API_KEY_TOUCH_SECONDS.
    """
    if not raw.startswith(API_KEY_PREFIX) or len(raw) != len(API_KEY_PREFIX) + API_KEY_SECRET_LENGTH:
        return None
    key = ApiKey.objects.select_related("project", "user").filter(hashed_key=crypto.sha256_hex(raw)).first()
    now = timezone.now()
    if key is None or not key.is_active(now) or not key.user.is_active:
        return None
    role = _role_of(user=key.user, project=key.project)
    if role is None:
        return None
    key.role = role  # type: ignore[attr-defined]  # the owner's role now, so callers need no second query
    _touch(model=ApiKey, obj=key, now=now)
    return key


def _touch(*, model: type[ApiKey] | type[AccessKey], obj: ApiKey | AccessKey, now: datetime) -> None:
    stale_before = now - timedelta(seconds=settings.API_KEY_TOUCH_SECONDS)
    if obj.last_used_at is None or obj.last_used_at < stale_before:
        model.objects.filter(pk=obj.pk).update(last_used_at=now)
        obj.last_used_at = now


@transaction.atomic
def access_key_create(
    *, user: User, project: Project, name: str, expires_in_days: int | None = None
) -> tuple[AccessKey, str]:
    """Create an AK/SK pair and return it with the secret, which is shown once and stored encrypted."""
    _require_member(user=user, project=project)
    access_key_id = crypto.random_token(ACCESS_KEY_ID_LENGTH, string.ascii_uppercase + string.digits)
    secret = crypto.random_token(ACCESS_KEY_SECRET_LENGTH)
    key = AccessKey.objects.create(
        project=project,
        user=user,
        name=name.strip() or "access key",
        access_key_id=access_key_id,
        secret_encrypted=crypto.encrypt(secret),
        expires_at=_expiry(expires_in_days),
    )
    audit_record(
        project=project,
        actor=user,
        action="access_key.create",
        target=key,
        changes={"name": key.name, "access_key_id": access_key_id, "expires_at": _iso(key.expires_at)},
    )
    return key, secret


@transaction.atomic
def access_key_revoke(*, key: AccessKey, by: User) -> None:
    if not _can_manage(owner_id=key.user_id, project=key.project, by=by):
        raise PermissionDenied("You cannot revoke this access key.")
    if AccessKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now()):
        audit_record(
            project=key.project,
            actor=by,
            action="access_key.revoke",
            target=key,
            changes={"owner": key.user.get_username()},
        )


def access_key_resolve(*, access_key_id: str) -> tuple[AccessKey, str] | None:
    """Return an active access key and its decrypted secret, for signature checks; None if unusable."""
    key = AccessKey.objects.select_related("project", "user").filter(access_key_id=access_key_id).first()
    now = timezone.now()
    if key is None or not key.is_active(now) or not key.user.is_active:
        return None
    role = _role_of(user=key.user, project=key.project)
    if role is None:
        return None
    key.role = role  # type: ignore[attr-defined]
    try:
        secret = crypto.decrypt(key.secret_encrypted)
    except crypto.DecryptionError:
        return None
    _touch(model=AccessKey, obj=key, now=now)
    return key, secret


@dataclass(frozen=True)
class BootstrapResult:
    username: str
    password: str | None  # set only when this run chose or changed it
    project: Project
    created_user: bool


@transaction.atomic
def console_bootstrap(*, admin_username: str, admin_password: str = "") -> BootstrapResult:
    """Create the admin user and the default project. Safe to run any number of times.

    An explicit password (CONSOLE_ADMIN_PASSWORD) is applied on every run, so it
    can be used to reset the admin's password; without one, a new admin gets a
    random password that is reported once and an existing admin keeps theirs.
    """
    user_model = get_user_model()
    user = user_model.objects.filter(username=admin_username).first()
    created = user is None
    password: str | None = None
    if user is None:
        password = admin_password or crypto.random_token(16)
        user = user_model.objects.create_superuser(
            username=admin_username, email=settings.CONSOLE_ADMIN_EMAIL, password=password
        )
    elif admin_password and not user.check_password(admin_password):
        user.set_password(admin_password)
        user.save(update_fields=["password"])
        password = admin_password
    project = Project.objects.filter(memberships__user=user, name=DEFAULT_PROJECT_NAME).order_by("created_at").first()
    if project is None:
        project = project_create(name=DEFAULT_PROJECT_NAME, owner=user, by=None, description="Created by bootstrap")
    return BootstrapResult(username=admin_username, password=password, project=project, created_user=created)


# --- sign-ins (Django's signals: the console's login page, the admin's, and IAM's password check) -------
def _projects_of(user_id: int | None) -> list[Project]:
    return list(Project.objects.filter(memberships__user_id=user_id)) if user_id is not None else []


def _password_origin(request: HttpRequest | None) -> AuditOrigin:
    origin = origin_of_request(request) if request is not None else current_origin()
    return dataclasses.replace(origin, via=origin.via if origin.via.startswith("iam") else "password")


@receiver(user_logged_in)
def _audit_login(sender: object, request: HttpRequest | None, user: User, **kwargs: object) -> None:
    """One entry in each of the user's projects: each project's admins see their members' sign-ins."""
    origin = _password_origin(request)
    for project in _projects_of(user.pk):
        audit_record(project=project, actor=user, action="auth.login", target=user, origin=origin)


@receiver(user_login_failed)
def _audit_login_failed(
    sender: object, credentials: Mapping[str, object], request: HttpRequest | None = None, **kwargs: object
) -> None:
    """A failed sign-in, with the username tried, in each project of the user it names; a username
    nobody has gets one entry with no project (Django's admin shows it to site staff)."""
    tried = str(credentials.get("username", ""))[:150]
    origin = _password_origin(request)
    user = get_user_model().objects.filter(username=tried).first() if tried else None
    projects: list[Project | None] = list(_projects_of(user.pk if user is not None else None)) or [None]
    for project in projects:
        audit_record(
            project=project,
            actor=None,
            actor_name=tried,
            action="auth.login_failed",
            target=user if user is not None else tried,
            summary=f"Failed sign-in as “{tried}”",
            changes={"username": tried},
            origin=origin,
        )
