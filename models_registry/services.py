"""Writes to the registry. Every change checks the caller is a project admin and is audited.

Enable/disable needs no cache invalidation: the gateway resolves models through
`selectors.model_resolve`, which reads the database on every request, so a switch is
in force on the next request in every process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse, urlsplit

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.forms.models import model_to_dict
from django.utils import timezone

from console.lib import netpolicy
from console.models import Project
from console.services import audit_record, require_admin
from models_registry.models import (
    CONFIG_FIELDS,
    SECRET_FIELDS,
    Category,
    Deployment,
    DeploymentState,
    LlmModel,
    Provider,
    ProviderKind,
)
from models_registry.providers.base import ConnectionResult

PROVIDER_FIELDS = (
    "slug",
    "name",
    "kind",
    "base_url",
    "timeout_seconds",
    "token_quota",
    "quota_period",
    "max_concurrency",
    "rps",
    "enabled",
)
MODEL_FIELDS = (
    "name",
    "display_name",
    "category",
    "context_length",
    "deploy_context_lengths",
    "description",
    "cap_pretrain",
    "cap_finetune",
    "cap_evaluate",
    "cap_compress",
    "cap_infer",
    "fine_tuned",
    "supports_chat",
    "supports_completions",
    "enabled",
)
DEPLOYMENT_FIELDS = ("name", "context_length", "state")
MAX_CONTEXT_LENGTH = 10_000_000


def _snapshot(obj: models.Model, fields: tuple[str, ...]) -> dict[str, Any]:
    return model_to_dict(obj, fields=list(fields))


def _diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    return {k: [before.get(k), v] for k, v in after.items() if before.get(k) != v}


def _apply(obj: models.Model, changes: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = set(changes) - set(allowed)
    if unknown:
        raise ValidationError({name: "This field cannot be set." for name in sorted(unknown)})
    for name, value in changes.items():
        setattr(obj, name, value)


def _check_provider(provider: Provider) -> None:
    errors: dict[str, str] = {}
    if provider.base_url:
        parsed = urlparse(provider.base_url)
        if parsed.scheme not in {"http", "https"} or not parsed.netloc:
            errors["base_url"] = "Enter an http:// or https:// URL."
    if not 0.5 <= float(provider.timeout_seconds) <= 600:
        errors["timeout_seconds"] = "Timeout must be between 0.5 and 600 seconds."
    if provider.token_quota is not None and provider.token_quota < 1:
        errors["token_quota"] = "A token quota must be at least 1 (leave empty for no quota)."
    if provider.max_concurrency is not None and provider.max_concurrency < 1:
        errors["max_concurrency"] = "Concurrency must be at least 1 (leave empty for no limit)."
    if provider.rps is not None and provider.rps <= 0:
        errors["rps"] = "Requests per second must be above 0 (leave empty for no limit)."
    if errors:
        raise ValidationError(errors)
    provider.full_clean(exclude=["project", "secrets_encrypted", "config"], validate_constraints=False)
    provider.validate_constraints()  # the (project, slug) uniqueness, which excluding project would skip


# Where each secret goes: the base URL receives the API key, AK/SK-signed requests and the IAM token
# the password buys; the IAM endpoint receives the password itself.
SECRETS_SENT_TO: dict[str, tuple[str, ...]] = {
    "base_url": ("api_key", "secret_key", "iam_password"),
    "iam_endpoint": ("iam_password",),
}
_DESTINATION_LABELS = {"base_url": "base URL", "iam_endpoint": "IAM endpoint"}
_SECRET_LABELS = {"api_key": "API key", "iam_password": "IAM password", "secret_key": "secret key (SK)"}


def _destinations(provider: Provider) -> dict[str, str]:
    return {"base_url": provider.base_url or "", "iam_endpoint": str((provider.config or {}).get("iam_endpoint", ""))}


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port: what decides who receives a request (a path on the same host does not)."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        port = None
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


def _check_destinations(provider: Provider, names: list[str]) -> None:
    """The address policy (console.lib.netpolicy) on the URLs named, as field errors."""
    destinations = _destinations(provider)
    errors = {
        name: problem for name in names if destinations[name] and (problem := netpolicy.url_problem(destinations[name]))
    }
    if errors:
        raise ValidationError(errors)


def _require_secrets_again(*, moved: list[str], stored: set[str], secrets: Mapping[str, str | None] | None) -> None:
    """A stored secret never follows its URL to a new host: whoever moves the URL types the secret
    again (a new value) or clears it (None). Otherwise a project admin who never knew the secret
    could point the provider at a host of theirs and read it off the next call or connection test."""
    errors: dict[str, str] = {}
    for destination in moved:
        for name in SECRETS_SENT_TO[destination]:
            if name in stored and (secrets or {}).get(name, "") == "" and name not in errors:
                errors[name] = (
                    f"The {_DESTINATION_LABELS[destination]} moved to another host, where the stored "
                    f"{_SECRET_LABELS[name]} would be sent: type it again, or clear it."
                )
    if errors:
        raise ValidationError(errors)


def _merge_credentials(
    provider: Provider, *, config: Mapping[str, Any] | None, secrets: Mapping[str, str | None] | None
) -> list[str]:
    """Merge credential changes; returns the names of secrets that changed (never their values).

    In `secrets`, an empty string or a missing key keeps the stored value (forms show "set"
    and leave the box empty), None clears it.
    """
    if config is not None:
        allowed = CONFIG_FIELDS.get(provider.kind, ())
        unknown = set(config) - set(allowed)
        if unknown:
            raise ValidationError({"config": f"Unknown setting(s) for {provider.kind}: {', '.join(sorted(unknown))}."})
        provider.config = {**(provider.config or {}), **{k: str(v).strip() for k, v in config.items() if v is not None}}
        provider.config = {k: v for k, v in provider.config.items() if v and k in allowed}
    changed: list[str] = []
    if secrets:
        allowed_secrets = SECRET_FIELDS.get(provider.kind, ())
        unknown = set(secrets) - set(allowed_secrets)
        if unknown:
            field = "api_key" if "api_key" in unknown else sorted(unknown)[0]
            raise ValidationError({field: f"A {provider.kind} provider takes no {', '.join(sorted(unknown))}."})
        current = provider.secrets()
        for name, value in secrets.items():
            if value is None and name in current:
                current.pop(name)
                changed.append(name)
            elif value and current.get(name) != value:
                current[name] = value.strip()
                changed.append(name)
        provider.set_secrets(current)
    return sorted(changed)


@transaction.atomic
def provider_create(
    *,
    project: Project,
    by: User | None,
    fields: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    secrets: Mapping[str, str | None] | None = None,
) -> Provider:
    """Create a model group. `by=None` is the system (bootstrap), which needs no role."""
    if by is not None:
        require_admin(user=by, project=project)
    provider = Provider(project=project)
    _apply(provider, fields, PROVIDER_FIELDS)
    if provider.kind not in ProviderKind.values:
        raise ValidationError({"kind": f"Kind must be one of {', '.join(ProviderKind.values)}."})
    changed = _merge_credentials(provider, config=config, secrets=secrets)
    _check_provider(provider)
    _check_destinations(provider, ["base_url", "iam_endpoint"])
    provider.save()
    after = _snapshot(provider, PROVIDER_FIELDS)
    audit_record(
        project=project,
        actor=by,
        action="provider.create",
        target=provider,
        changes={**_diff({}, after), **({"secrets_set": changed} if changed else {})},
    )
    return provider


@transaction.atomic
def provider_update(
    *,
    provider: Provider,
    by: User | None,
    fields: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    secrets: Mapping[str, str | None] | None = None,
) -> Provider:
    if by is not None:
        require_admin(user=by, project=provider.project)
    provider = Provider.objects.select_for_update().get(pk=provider.pk)
    before = _snapshot(provider, PROVIDER_FIELDS)
    config_before = dict(provider.config or {})
    destinations_before = _destinations(provider)
    stored_before = set(provider.secrets_set())
    _apply(provider, fields or {}, PROVIDER_FIELDS)
    if provider.kind != before["kind"]:
        if provider.kind not in ProviderKind.values:
            raise ValidationError({"kind": f"Kind must be one of {', '.join(ProviderKind.values)}."})
        # Credentials of one kind mean nothing to another.
        provider.config, provider.secrets_encrypted = {}, ""
        stored_before = set()
    changed = _merge_credentials(provider, config=config, secrets=secrets)
    _check_provider(provider)
    destinations = _destinations(provider)
    edited = [name for name, url in destinations.items() if url != destinations_before[name]]
    _check_destinations(provider, edited)
    moved = [name for name in edited if _origin(destinations[name]) != _origin(destinations_before[name])]
    _require_secrets_again(moved=moved, stored=stored_before, secrets=secrets)
    provider.save()
    changes: dict[str, Any] = _diff(before, _snapshot(provider, PROVIDER_FIELDS))
    if provider.config != config_before:
        changes["config"] = [config_before, provider.config]
    if changed:
        changes["secrets_changed"] = changed
    if changes:
        action = "provider.update"
        if set(changes) == {"enabled"}:
            action = "provider.enable" if provider.enabled else "provider.disable"
        audit_record(project=provider.project, actor=by, action=action, target=provider, changes=changes)
    return provider


@transaction.atomic
def provider_delete(*, provider: Provider, by: User) -> None:
    require_admin(user=by, project=provider.project)
    audit_record(project=provider.project, actor=by, action="provider.delete", target=provider)
    provider.delete()


def _check_model(model: LlmModel) -> None:
    errors: dict[str, str] = {}
    if not model.name or not model.name.strip():
        errors["name"] = "A model needs its upstream id."
    lengths = model.deploy_context_lengths
    if not isinstance(lengths, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in lengths):
        errors["deploy_context_lengths"] = "Give a list of whole numbers of tokens."
    elif any(not 1 <= n <= MAX_CONTEXT_LENGTH for n in lengths):
        errors["deploy_context_lengths"] = f"Each length must be between 1 and {MAX_CONTEXT_LENGTH}."
    if not isinstance(model.context_length, int) or not 1 <= model.context_length <= MAX_CONTEXT_LENGTH:
        errors["context_length"] = f"Context length must be between 1 and {MAX_CONTEXT_LENGTH} tokens."
    if model.fine_tuned and not model.cap_finetune:
        errors["fine_tuned"] = "Only a model that supports fine-tuning can be marked fine-tuned."
    # A scientific-computing (weather) model's inference is forecast tasks, not chat or text.
    scientific = model.category == Category.SCIENTIFIC
    if model.cap_infer and not scientific and not (model.supports_chat or model.supports_completions):
        errors["supports_chat"] = "A model offering inference serves chat, text completions, or both."
    if errors:
        raise ValidationError(errors)
    model.full_clean(exclude=["provider", "deploy_context_lengths"], validate_constraints=False)
    model.validate_constraints()


@transaction.atomic
def model_create(*, provider: Provider, by: User | None, fields: Mapping[str, Any]) -> LlmModel:
    if by is not None:
        require_admin(user=by, project=provider.project)
    model = LlmModel(provider=provider)
    _apply(model, fields, MODEL_FIELDS)
    model.name = (model.name or "").strip()
    if not model.display_name:
        model.display_name = model.name
    _check_model(model)
    model.save()
    audit_record(
        project=provider.project,
        actor=by,
        action="model.create",
        target=model,
        changes=_diff({}, _snapshot(model, MODEL_FIELDS)),
    )
    return model


@transaction.atomic
def model_update(
    *,
    model: LlmModel,
    by: User | None,
    fields: Mapping[str, Any],
    provider: Provider | None = None,
) -> LlmModel:
    project = model.provider.project
    if by is not None:
        require_admin(user=by, project=project)
    model = LlmModel.objects.select_for_update().select_related("provider").get(pk=model.pk)
    before = _snapshot(model, MODEL_FIELDS)
    before["provider"] = model.provider.slug
    if provider is not None:
        if provider.project_id != project.pk:
            raise ValidationError({"provider": "No such provider in this project."})
        model.provider = provider
    _apply(model, fields, MODEL_FIELDS)
    _check_model(model)
    model.save()
    after = {**_snapshot(model, MODEL_FIELDS), "provider": model.provider.slug}
    changes = _diff(before, after)
    if changes:
        action = "model.update"
        if set(changes) == {"enabled"}:
            action = "model.enable" if model.enabled else "model.disable"
        audit_record(project=project, actor=by, action=action, target=model, changes=changes)
    return model


def model_set_enabled(*, model: LlmModel, enabled: bool, by: User | None) -> LlmModel:
    """Switch a model on or off. In force on the next request in every process (no cache to expire)."""
    return model_update(model=model, by=by, fields={"enabled": bool(enabled)})


@transaction.atomic
def model_delete(*, model: LlmModel, by: User) -> None:
    project = model.provider.project
    require_admin(user=by, project=project)
    audit_record(project=project, actor=by, action="model.delete", target=model)
    model.delete()


def _check_deployment(deployment: Deployment) -> None:
    model = deployment.model
    if model.provider.project_id != deployment.project_id:
        raise ValidationError({"model": "No such model in this project."})
    allowed = model.allowed_context_lengths
    if deployment.context_length not in allowed:
        raise ValidationError(
            {"context_length": f"{model} can be deployed with {', '.join(map(str, allowed))} tokens."}
        )
    deployment.full_clean(exclude=["project", "model"])


@transaction.atomic
def deployment_create(
    *,
    project: Project,
    model: LlmModel,
    by: User | None,
    context_length: int | None = None,
    name: str = "",
    state: str = DeploymentState.RUNNING,
    deployment_id: str | None = None,
) -> Deployment:
    if by is not None:
        require_admin(user=by, project=project)
    deployment = Deployment(
        project=project,
        model=model,
        name=name.strip(),
        context_length=context_length or model.context_length,
        state=state,
    )
    if deployment_id:
        deployment.id = deployment_id
    _check_deployment(deployment)
    deployment.save(force_insert=True)
    audit_record(
        project=project,
        actor=by,
        action="deployment.create",
        target=deployment,
        changes={"model": [None, model.name], **_diff({}, _snapshot(deployment, DEPLOYMENT_FIELDS))},
    )
    return deployment


@transaction.atomic
def deployment_update(*, deployment: Deployment, by: User | None, fields: Mapping[str, Any]) -> Deployment:
    if by is not None:
        require_admin(user=by, project=deployment.project)
    deployment = Deployment.objects.select_for_update().select_related("model__provider").get(pk=deployment.pk)
    before = _snapshot(deployment, DEPLOYMENT_FIELDS)
    _apply(deployment, fields, DEPLOYMENT_FIELDS)
    _check_deployment(deployment)
    deployment.save()
    changes = _diff(before, _snapshot(deployment, DEPLOYMENT_FIELDS))
    if changes:
        audit_record(
            project=deployment.project, actor=by, action="deployment.update", target=deployment, changes=changes
        )
    return deployment


@transaction.atomic
def deployment_delete(*, deployment: Deployment, by: User) -> None:
    require_admin(user=by, project=deployment.project)
    audit_record(project=deployment.project, actor=by, action="deployment.delete", target=deployment)
    deployment.delete()


async def provider_test_connection(*, provider: Provider) -> ConnectionResult:
    """Call the upstream with the stored credentials. Never raises; the result says what happened.
    (The page keeps it with `provider_check_record`.)"""
    from models_registry.providers import adapter_for

    return await adapter_for(provider).check()


def provider_check_record(*, provider: Provider, result: ConnectionResult) -> None:
    """Keep a connection test's outcome on the provider, for the provider list's health column. A
    plain UPDATE: a check changes no configuration, so neither updated_at nor the audit log hears of it."""
    Provider.objects.filter(pk=provider.pk).update(
        last_checked_at=timezone.now(),
        last_check_ok=result.ok,
        last_check_message=result.message[:255],
        last_check_latency_ms=result.latency_ms,
    )


async def local_models_available(*, provider: Provider) -> list[dict[str, Any]]:
    """Models the embedded server offers (bundled ones and any GGUF dropped into its folder), with
    whether each can chat (a chat template in the file) and its context. Raises UpstreamError."""
    from models_registry.providers import adapter_for
    from models_registry.providers.base import UpstreamError

    adapter = adapter_for(provider)
    try:
        response = await adapter.client.get(f"{adapter.base_url}/models", timeout=adapter.timeout)  # type: ignore[attr-defined]
    except Exception as exc:
        raise UpstreamError("unavailable", f"the local model server is not reachable ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise UpstreamError("unavailable", f"the local model server answered HTTP {response.status_code}")
    cards = []
    for item in response.json().get("data", []):
        caps = item.get("capabilities") or {}
        cards.append(
            {
                "id": str(item.get("id", "")),
                "chat": bool(caps.get("chat")),
                "context_length": int(item.get("context_length") or 2048),
                "source": str(item.get("source", "")),
            }
        )
    return [c for c in cards if c["id"]]


@transaction.atomic
def local_model_register(*, provider: Provider, by: User, name: str, chat: bool, context_length: int) -> LlmModel:
    """Register a model of the embedded server (e.g. a GGUF file an operator dropped into its folder)
    with a deployment, so every dialect can reach it."""
    if provider.kind != ProviderKind.LOCAL:
        raise ValidationError({"provider": "Only a local provider serves files from the models folder."})
    model = model_create(
        provider=provider,
        by=by,
        fields={
            "name": name,
            "display_name": name,
            "context_length": context_length,
            "description": "A GGUF model served by the embedded llama.cpp server.",
            "cap_infer": True,
            "supports_chat": chat,
            "supports_completions": True,
        },
    )
    deployment_create(project=provider.project, model=model, by=by, name=name)
    return model
