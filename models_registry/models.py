"""Providers (model groups), their models with the capability matrix, and deployments."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from functools import lru_cache
from typing import Literal

from django.conf import settings
from django.db import models
from django.utils import timezone

from console.lib import crypto
from console.models import Project


class ProviderKind(models.TextChoices):
    # vLLM, Ollama, DeepSeek, Hunyuan and any server that speaks the OpenAI wire format.
    OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible"
    PANGU = "pangu", "Huawei Pangu"
    LOCAL = "local", "Embedded local model"


class QuotaPeriod(models.TextChoices):
    TOTAL = "total", "Total"
    MONTHLY = "monthly", "Monthly"


# Secret credential fields per kind. They are stored encrypted and never rendered or returned.
SECRET_FIELDS: dict[str, tuple[str, ...]] = {
    ProviderKind.OPENAI_COMPATIBLE: ("api_key",),
    ProviderKind.PANGU: ("api_key", "iam_password", "secret_key"),
    ProviderKind.LOCAL: (),
}
# Non-secret connection settings per kind, shown on the provider page.
CONFIG_FIELDS: dict[str, tuple[str, ...]] = {
    ProviderKind.OPENAI_COMPATIBLE: (),
    # deployment_id: the upstream deployment a model is called through unless its name is itself one.
    ProviderKind.PANGU: (
        "iam_endpoint",
        "iam_username",
        "iam_domain",
        "iam_project",
        "access_key",
        "project_id",
        "deployment_id",
    ),
    ProviderKind.LOCAL: (),
}


PanguAuthMode = Literal["iam", "aksk", "token"]
# What the Pangu error and connection-check messages tell an operator to set.
PANGU_CREDENTIALS_NEEDED = "an IAM user and password (with IAM endpoint and domain), AK/SK, or a token"


def _filled(value: object) -> bool:
    # A blank field is no credential: it could only fail at the upstream, later and less clearly.
    return isinstance(value, str) and bool(value.strip())


def pangu_auth_mode(config: Mapping[str, object], secrets: Mapping[str, str]) -> PanguAuthMode | None:
    """How a Pangu group signs its calls, or None when its credentials are not enough. When several
    are complete: IAM password first (the token it yields renews itself), then AK/SK, then a token.
    The registry (`Provider.is_configured`) and the adapter both decide by this alone."""
    iam = ("iam_endpoint", "iam_username", "iam_domain")
    if all(_filled(config.get(name)) for name in iam) and _filled(secrets.get("iam_password")):
        return "iam"
    if _filled(config.get("access_key")) and _filled(secrets.get("secret_key")):
        return "aksk"
    if _filled(secrets.get("api_key")):
        return "token"
    return None


@lru_cache(maxsize=256)
def _decrypted_secrets(ciphertext: str, key_fingerprint: str) -> tuple[tuple[str, str], ...]:
    # Every gateway call needs its provider's credentials; decrypting once per ciphertext (a new
    # value is a new ciphertext) keeps Fernet off the hot path.
    return tuple(sorted(json.loads(crypto.decrypt(ciphertext)).items()))


class Provider(models.Model):
    """A model group: one upstream endpoint with its credentials and limits (`{group}` in CloudBase paths)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="providers")
    slug = models.SlugField(max_length=64)
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=32, choices=ProviderKind.choices)
    base_url = models.CharField(max_length=500, blank=True)
    config = models.JSONField(default=dict, blank=True)
    secrets_encrypted = models.TextField(blank=True, default="")
    timeout_seconds = models.FloatField(default=60.0)
    token_quota = models.BigIntegerField(null=True, blank=True)
    quota_period = models.CharField(max_length=16, choices=QuotaPeriod.choices, default=QuotaPeriod.TOTAL)
    max_concurrency = models.PositiveIntegerField(null=True, blank=True)
    rps = models.FloatField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    # The last "Test connection" (services.provider_test_connection): when, whether it passed, what it said.
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_check_ok = models.BooleanField(null=True, blank=True)
    last_check_message = models.CharField(max_length=255, blank=True)
    last_check_latency_ms = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["slug"]
        constraints = [models.UniqueConstraint(fields=["project", "slug"], name="provider_unique_slug")]

    def __str__(self) -> str:
        return self.name or self.slug

    def secrets(self) -> dict[str, str]:
        if not self.secrets_encrypted:
            return {}
        try:
            return dict(_decrypted_secrets(self.secrets_encrypted, crypto.sha256_hex(settings.SECRET_KEY)))
        except crypto.DecryptionError:
            # Made under another SECRET_KEY: treat as unset so the console asks for it again.
            return {}

    def set_secrets(self, values: dict[str, str]) -> None:
        kept = {k: v for k, v in values.items() if v}
        self.secrets_encrypted = crypto.encrypt(json.dumps(kept)) if kept else ""

    def secrets_set(self) -> list[str]:
        """Names of the secret fields that hold a value (what a page may show as "set")."""
        return sorted(self.secrets())

    @property
    def is_configured(self) -> bool:
        """Whether the group has what it needs to call its upstream (else AI_MODEL_CONFIG_MISSING)."""
        if self.kind == ProviderKind.LOCAL:
            return True
        if not self.base_url:
            return False
        secrets = self.secrets()
        if self.kind == ProviderKind.OPENAI_COMPATIBLE:
            return bool(secrets.get("api_key"))
        if self.kind == ProviderKind.PANGU:
            config = self.config or {}
            return _filled(config.get("project_id")) and pangu_auth_mode(config, secrets) is not None
        return False


class Category(models.TextChoices):
    BASE = "base_function", "Base function"
    PROFESSIONAL = "professional", "Professional"
    SINGLE_SCENARIO = "single_scenario", "Single-scenario"
    SCIENTIFIC = "scientific_computing", "Scientific computing (weather)"
    CUSTOM = "custom", "Custom"


CAPABILITIES: tuple[tuple[str, str], ...] = (
    ("pretrain", "Pre-train"),
    ("finetune", "Fine-tune"),
    ("evaluate", "Evaluate"),
    ("compress", "Compress"),
    ("infer", "Infer"),
)


class LlmModel(models.Model):
    """A model behind a provider, with the five-capability matrix of the Pangu manual."""

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="models")
    name = models.CharField(max_length=200, help_text="The upstream model id, as callers pass it in `model`.")
    display_name = models.CharField(max_length=200, blank=True)
    category = models.CharField(max_length=32, choices=Category.choices, default=Category.CUSTOM)
    context_length = models.PositiveIntegerField(default=4096)
    deploy_context_lengths = models.JSONField(default=list, blank=True)
    description = models.TextField(blank=True)
    cap_pretrain = models.BooleanField(default=False)
    cap_finetune = models.BooleanField(default=False)
    cap_evaluate = models.BooleanField(default=False)
    cap_compress = models.BooleanField(default=False)
    cap_infer = models.BooleanField(default=True)
    fine_tuned = models.BooleanField(default=False, help_text="Has been through supervised fine-tuning (SFT).")
    # Which inference interfaces the model serves: a base model without a chat template only
    # completes text, and the gateway refuses chat calls to it.
    supports_chat = models.BooleanField(default=True, help_text="Serves chat completions (has a chat template).")
    supports_completions = models.BooleanField(default=True, help_text="Serves plain text completions.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "models_registry_model"
        ordering = ["provider__slug", "pk"]
        constraints = [models.UniqueConstraint(fields=["provider", "name"], name="model_unique_name")]
        verbose_name = "model"

    def __str__(self) -> str:
        return self.display_name or self.name

    @property
    def capabilities(self) -> dict[str, bool]:
        return {key: bool(getattr(self, f"cap_{key}")) for key, _ in CAPABILITIES}

    @property
    def evaluation_available(self) -> bool:
        # The manual: a model that supports evaluation can be evaluated only after SFT.
        return self.cap_evaluate and self.fine_tuned

    @property
    def allowed_context_lengths(self) -> list[int]:
        return sorted(set(self.deploy_context_lengths or []) | {self.context_length})


class DeploymentState(models.TextChoices):
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"


def new_deployment_id() -> str:
    return str(uuid.uuid4())


class Deployment(models.Model):
    """A model deployed for a project: the `{deployment_id}` of Pangu inference and task paths."""

    id = models.CharField(primary_key=True, max_length=36, default=new_deployment_id, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="deployments")
    model = models.ForeignKey(LlmModel, on_delete=models.CASCADE, related_name="deployments")
    name = models.CharField(max_length=100, blank=True)
    context_length = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=DeploymentState.choices, default=DeploymentState.RUNNING)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name or f"{self.model} ({self.id[:8]})"
