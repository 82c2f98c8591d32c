"""Tenancy and credentials: projects, memberships, API keys and AK/SK access keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone


def new_project_id() -> str:
    return uuid.uuid4().hex


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"
    # Operators submit and watch forecast jobs only.
    OPERATOR = "operator", "Operator"


class Project(models.Model):
    """A tenant. Every other object belongs to exactly one project."""

    id = models.CharField(primary_key=True, max_length=32, default=new_project_id, editable=False)
    name = models.CharField(max_length=100)
    description = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="projects")

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="membership_unique_user")]
        ordering = ["project", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} in {self.project} ({self.role})"


class Credential(models.Model):
    """What API keys and access keys share: a lifetime that can end by expiry or revocation."""

    name = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True
        ordering = ["-created_at"]

    def is_active(self, now: datetime | None = None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class ApiKey(Credential):
    """A bearer key. Only its SHA-256 is stored; the raw key is shown once at creation."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="api_keys")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    prefix = models.CharField(max_length=16, db_index=True)
    hashed_key = models.CharField(max_length=64, unique=True)

    class Meta(Credential.Meta):
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class AccessKey(Credential):
    """An AK/SK pair for signed requests. The secret is kept encrypted: signatures must be recomputed."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="access_keys")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_keys")
    access_key_id = models.CharField(max_length=32, unique=True)
    secret_encrypted = models.TextField()

    class Meta(Credential.Meta):
        verbose_name = "access key"

    def __str__(self) -> str:
        return f"{self.name} ({self.access_key_id})"


class AuditRefused(Exception):
    """An attempt to change or delete an audit entry: the log is append-only."""


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    def update(self, **kwargs: object) -> int:
        raise AuditRefused("Audit entries cannot be changed.")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise AuditRefused("Audit entries cannot be deleted.")


class AuditEvent(models.Model):
    """Who did what, when and from where. Written by services (console.services.audit_record) in the
    transaction of the change; read by the audit log page. Append-only: the model and its queryset
    refuse updates and deletes, and database triggers (console.audit) refuse them to raw SQL.

    Its references are not foreign-key constraints and are never cascaded: deleting a user, a key or
    a project leaves its history in place (`actor_name` keeps the name). `project` is empty for a
    failed sign-in with a username nobody has (seen in Django's admin only)."""

    project = models.ForeignKey(
        Project,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="audit_events",
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.DO_NOTHING, db_constraint=False, null=True, related_name="+"
    )
    # The actor's username at the time (or, for a failed sign-in, the username tried).
    actor_name = models.CharField(max_length=150, blank=True)
    # The credential used: "session", "api_key <id>", "iam_token", "aksk", "password"; empty for the system.
    via = models.CharField(max_length=64, blank=True)
    action = models.CharField(max_length=64, db_index=True)  # e.g. "model.update"
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64)
    target_label = models.CharField(max_length=255, blank=True)
    summary = models.CharField(max_length=255, blank=True)
    changes = models.JSONField(default=dict, blank=True)  # the details: fields changed, values tried
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["project", "-created_at"], name="audit_project_recent")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.actor_name or 'system'} {self.action} {self.target_label}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AuditRefused("Audit entries cannot be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise AuditRefused("Audit entries cannot be deleted.")


class IamToken(models.Model):
    """A token issued by POST /v3/auth/tokens (Huawei IAM's call). Only its hash is stored; it lives
    24 hours. The table keeps the name it had when the gateway app owned it."""

    token_hash = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    # The access key that issued the token (hw_ak_sk), checked on every use: revoking the key ends its
    # tokens. Null for a token issued for a password.
    access_key = models.ForeignKey("AccessKey", on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    issued_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "chat_iamtoken"

    def __str__(self) -> str:
        return f"IAM token of {self.user} until {self.expires_at:%Y-%m-%d %H:%M}"
