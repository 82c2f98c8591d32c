"""Usage records of every gateway call, the token quota counters the gateway reserves against, and
the playground's conversations."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models
from django.db.models import F
from django.db.models.functions import Lower
from django.utils import timezone

from console.models import ApiKey, Project
from models_registry.models import LlmModel, Provider


class UsageRecord(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="usage_records")
    api_key = models.ForeignKey(ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    provider = models.ForeignKey(Provider, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    model = models.ForeignKey(LlmModel, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    model_name = models.CharField(max_length=200, blank=True)
    dialect = models.CharField(max_length=16)
    mode = models.CharField(max_length=8)  # chat | text
    stream = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    # True when the upstream sent no usage and the gateway counted pieces instead.
    usage_estimated = models.BooleanField(default=False)
    latency_ms = models.FloatField(default=0)
    ttft_ms = models.FloatField(null=True, blank=True)
    status = models.CharField(max_length=16)  # ok | error | cancelled
    http_status = models.PositiveSmallIntegerField(default=200)
    error_code = models.CharField(max_length=64, blank=True)
    request_id = models.CharField(max_length=64, db_index=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        # The usage log's newest-first pages, whole and filtered by its two most used filters (model,
        # any case; outcome), read in index order: no sort and no scan of a million records.
        indexes = [
            models.Index(fields=["project", "-created_at"]),
            models.Index(F("project"), Lower("model_name"), F("created_at").desc(), name="usage_project_model"),
            models.Index(fields=["project", "status", "-created_at"], name="usage_project_status"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model_name} {self.status}"


class RollupDimension(models.TextChoices):
    MODEL = "model", "Model"
    KEY = "key", "API key"
    USER = "user", "User"
    CODE = "code", "Error code"


class UsageDaily(models.Model):
    """The usage records summed per project, day and one dimension's value (a model's name, an API
    key's or user's id, an error code), written by the usage writer in the same transaction as the
    records, so the dashboard never reads a million records. `day` is the call's date in TIME_ZONE.

    Keys and users are ids, not foreign keys: a deleted key's calls still count, and the row's key is
    never NULL (NULLs are distinct in a unique constraint, and the writer's upsert needs the
    conflict). "" stands for none (a playground call has no key; a code only for failed calls)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    dimension = models.CharField(max_length=8, choices=RollupDimension.choices)
    name = models.CharField(max_length=200)
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    cancelled = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    latency_ms_sum = models.FloatField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "day", "dimension", "name"], name="usage_daily_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.project_id} {self.day} {self.dimension}={self.name}: {self.requests}"


class UsageLatency(models.Model):
    """How many calls of a model on a day took a latency (or a time to first token) in each of
    `chat.rollups`' fixed log-spaced buckets: percentiles over any range of days from a few hundred
    rows, within the bucket's width. Written with `UsageDaily`."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    model_name = models.CharField(max_length=200)
    kind = models.CharField(max_length=8)  # latency | ttft
    bucket = models.SmallIntegerField()
    count = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["project", "day", "model_name", "kind", "bucket"], name="usage_latency_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.project_id} {self.day} {self.model_name} {self.kind}[{self.bucket}]: {self.count}"


class QuotaCounter(models.Model):
    """Tokens spent and reserved against a provider's quota in one period ("total" or "YYYY-MM").

    Reservations and settlements are single conditional UPDATEs, so any number of processes can
    share one row without ever letting used + reserved pass the quota."""

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="quota_counters")
    period = models.CharField(max_length=16)
    used = models.BigIntegerField(default=0)
    reserved = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["provider", "period"], name="quota_unique_period")]

    def __str__(self) -> str:
        return f"{self.provider} {self.period}: {self.used} used, {self.reserved} reserved"


class QuotaHold(models.Model):
    """Tokens reserved against a counter in one window of time and not yet settled, journaled by each
    web process's usage writer. A hold whose window ended longer ago than the longest possible call
    can only belong to calls that died with their process: the reconcile releases it."""

    counter = models.ForeignKey(QuotaCounter, on_delete=models.CASCADE, related_name="holds")
    window = models.BigIntegerField()  # unix time // quota.HOLD_WINDOW_SECONDS
    tokens = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["counter", "window"], name="quota_hold_unique_window")]
        indexes = [models.Index(fields=["window"])]

    def __str__(self) -> str:
        return f"{self.counter_id} window {self.window}: {self.tokens} held"


def new_conversation_id() -> str:
    # Unguessable: a shared conversation's link is its id, and ids are never enumerable.
    return secrets.token_hex(16)


class ConversationMode(models.TextChoices):
    CHAT = "chat", "Chat"
    TEXT = "text", "Text completion"


class Conversation(models.Model):
    """A playground conversation of one user in one project. Shared ones are readable (never
    writable) by the project's other members, who may also watch its answers grow live."""

    id = models.CharField(primary_key=True, max_length=32, default=new_conversation_id, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="conversations")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    # The model by name (what the gateway resolves on every turn), and by row while it exists.
    model_name = models.CharField(max_length=200)
    model = models.ForeignKey(LlmModel, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    mode = models.CharField(max_length=8, choices=ConversationMode.choices, default=ConversationMode.CHAT)
    system = models.TextField(blank=True)  # the system persona
    # Sampling parameters sent with every turn (temperature, top_p, max_tokens, stop); the gateway checks them.
    params = models.JSONField(default=dict, blank=True)
    shared = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["project", "owner", "-updated_at"])]

    def __str__(self) -> str:
        return self.title or self.id


class TurnRole(models.TextChoices):
    USER = "user", "User"
    ASSISTANT = "assistant", "Assistant"


class TurnStatus(models.TextChoices):
    OK = "ok", "Complete"
    STOPPED = "stopped", "Stopped"
    ERROR = "error", "Error"


class Turn(models.Model):
    """One message of a conversation. An assistant turn records how its answer went; in compare
    mode one user turn is followed by one assistant turn per model."""

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="turns")
    role = models.CharField(max_length=16, choices=TurnRole.choices)
    content = models.TextField(blank=True)
    model_name = models.CharField(max_length=200, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    ttft_ms = models.FloatField(null=True, blank=True)
    tokens_per_second = models.FloatField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=TurnStatus.choices, default=TurnStatus.OK)
    error_code = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.conversation_id} {self.role} {self.status}"
