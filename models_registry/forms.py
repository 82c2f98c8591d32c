"""Forms of the registry pages. They parse and shape input; the services decide what is allowed."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db.models import QuerySet

from console.models import Project
from models_registry import selectors
from models_registry.models import (
    CAPABILITIES,
    CONFIG_FIELDS,
    SECRET_FIELDS,
    Category,
    DeploymentState,
    LlmModel,
    Provider,
    ProviderKind,
    QuotaPeriod,
)
from models_registry.services import MAX_CONTEXT_LENGTH, PROVIDER_FIELDS

# Column limits of the database, so an oversized number is a form error and not an overflow.
MAX_BIGINT = 2**63 - 1
MAX_POSITIVE_INT = 2**31 - 1

STATE_CHOICES = [("", "All"), ("enabled", "Enabled"), ("disabled", "Disabled")]


def add_service_errors(form: forms.Form, exc: ValidationError) -> None:
    """Show a service's ValidationError on the form: on the named field when the form has it,
    else at the top, so an error about a field the page does not show is never lost."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    for field, errors in exc.message_dict.items():
        target = field if field in form.fields or field == NON_FIELD_ERRORS else None
        for message in errors:
            form.add_error(target, message if target else f"{field}: {message}")


class ModelFilterForm(forms.Form):
    provider = forms.ChoiceField(required=False)
    capability = forms.ChoiceField(required=False, choices=[("", "Any"), *CAPABILITIES])
    state = forms.ChoiceField(required=False, choices=STATE_CHOICES)
    q = forms.CharField(required=False, max_length=200, label="Search")

    def __init__(self, *args: Any, providers: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        provider = self.fields["provider"]
        assert isinstance(provider, forms.ChoiceField)
        provider.choices = [("", "All"), *providers]

    def filters(self) -> selectors.ModelFilter:
        # An unknown value in one box (a stale link) drops that filter only, not the whole search.
        self.is_valid()
        data = getattr(self, "cleaned_data", {})
        return selectors.ModelFilter(
            provider=data.get("provider", ""),
            capability=data.get("capability", ""),
            state=data.get("state", ""),
            q=data.get("q", "").strip(),
        )


class ContextLengthsField(forms.CharField):
    """Whole numbers of tokens separated by commas, e.g. "4096, 32768"."""

    def to_python(self, value: Any) -> list[int]:  # type: ignore[override]
        text = super().to_python(value) or ""
        lengths: list[int] = []
        for part in text.replace(";", ",").split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit() or not 1 <= int(part) <= MAX_CONTEXT_LENGTH:
                raise ValidationError(
                    f"Give whole numbers of tokens between 1 and {MAX_CONTEXT_LENGTH}, separated by commas."
                )
            lengths.append(int(part))
        return sorted(set(lengths))

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return ", ".join(str(n) for n in value)
        return value


class ModelEditForm(forms.Form):
    display_name = forms.CharField(max_length=200, required=False)
    category = forms.ChoiceField(choices=Category.choices)
    context_length = forms.IntegerField(min_value=1, max_value=MAX_CONTEXT_LENGTH, help_text="tokens")
    deploy_context_lengths = ContextLengthsField(
        required=False,
        label="Deploy context lengths",
        help_text="Comma-separated, e.g. 4096, 32768. The context length above is always allowed.",
    )
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    cap_pretrain = forms.BooleanField(required=False, label="Pre-train")
    cap_finetune = forms.BooleanField(required=False, label="Fine-tune")
    cap_evaluate = forms.BooleanField(required=False, label="Evaluate")
    cap_compress = forms.BooleanField(required=False, label="Compress")
    cap_infer = forms.BooleanField(required=False, label="Infer")
    fine_tuned = forms.BooleanField(required=False, label="Fine-tuned (SFT done)")
    supports_chat = forms.BooleanField(required=False, label="Serves chat (has a chat template)")
    supports_completions = forms.BooleanField(required=False, label="Serves text completions")
    enabled = forms.BooleanField(required=False)

    @classmethod
    def for_model(cls, model: LlmModel, data: Any = None) -> ModelEditForm:
        initial = {name: getattr(model, name) for name in cls.base_fields}
        return cls(data, initial=initial)

    def capability_fields(self) -> list[forms.BoundField]:
        return [self[f"cap_{key}"] for key, _ in CAPABILITIES]


class ProviderForm(forms.Form):
    slug = forms.SlugField(max_length=64, help_text="The model group in paths and `model` names, e.g. “pangu”.")
    name = forms.CharField(max_length=100, required=False)
    kind = forms.ChoiceField(choices=ProviderKind.choices)
    base_url = forms.CharField(
        max_length=500,
        required=False,
        label="Base URL",
        help_text="With the version prefix, e.g. https://host/v1. Moving it to another host means typing the "
        "stored secrets again (or clearing them): they are never sent to a new address unasked.",
    )
    timeout_seconds = forms.FloatField(min_value=0.5, max_value=600, initial=60.0, label="Timeout (seconds)")
    token_quota = forms.IntegerField(
        min_value=1, max_value=MAX_BIGINT, required=False, help_text="Tokens; empty for no quota."
    )
    quota_period = forms.ChoiceField(choices=QuotaPeriod.choices, initial=QuotaPeriod.TOTAL)
    max_concurrency = forms.IntegerField(
        min_value=1, max_value=MAX_POSITIVE_INT, required=False, help_text="Empty for no limit."
    )
    rps = forms.FloatField(
        min_value=0.001, required=False, label="Requests per second", help_text="Empty for no limit."
    )
    enabled = forms.BooleanField(required=False, initial=True)

    # Secrets: never prefilled (render_value=False), empty keeps the stored value.
    api_key = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        label="API key",
        help_text="Write-only: stored encrypted and never shown again.",
    )
    clear_api_key = forms.BooleanField(required=False, label="Clear the stored API key")

    iam_endpoint = forms.CharField(
        max_length=500,
        required=False,
        label="IAM endpoint",
        help_text="Moving it to another host means typing the IAM password again (or clearing it).",
    )
    iam_username = forms.CharField(max_length=200, required=False, label="IAM username")
    iam_password = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False), label="IAM password")
    clear_iam_password = forms.BooleanField(required=False, label="Clear the stored IAM password")
    iam_domain = forms.CharField(max_length=200, required=False, label="IAM domain")
    iam_project = forms.CharField(max_length=200, required=False, label="IAM project")
    access_key = forms.CharField(max_length=200, required=False, label="Access key (AK)")
    secret_key = forms.CharField(
        required=False, widget=forms.PasswordInput(render_value=False), label="Secret key (SK)"
    )
    clear_secret_key = forms.BooleanField(required=False, label="Clear the stored secret key")
    project_id = forms.CharField(max_length=200, required=False, label="Project ID")
    deployment_id = forms.CharField(
        max_length=200,
        required=False,
        label="Upstream deployment ID",
        help_text="The Pangu deployment calls go to, unless a model's name is itself a deployment ID.",
    )

    SECRETS = ("api_key", "iam_password", "secret_key")
    PAGE_GENERAL = (
        "slug",
        "name",
        "kind",
        "base_url",
        "api_key",
        "clear_api_key",
        "timeout_seconds",
        "token_quota",
        "quota_period",
        "max_concurrency",
        "rps",
        "enabled",
    )
    PAGE_PANGU = (
        "project_id",
        "deployment_id",
        "iam_endpoint",
        "iam_username",
        "iam_password",
        "clear_iam_password",
        "iam_domain",
        "iam_project",
        "access_key",
        "secret_key",
        "clear_secret_key",
    )
    # The provider's own columns: the ones the service accepts.
    GENERAL_FIELDS = PROVIDER_FIELDS

    def __init__(self, data: Any = None, *, project: Project, provider: Provider | None = None, **kwargs: Any) -> None:
        self.project = project
        self.provider = provider
        if provider is not None:
            initial = {name: getattr(provider, name) for name in self.GENERAL_FIELDS}
            initial.update({k: v for k, v in (provider.config or {}).items() if k in self.base_fields})
            kwargs.setdefault("initial", initial)
        super().__init__(data, **kwargs)
        self.secrets_set = set(provider.secrets_set()) if provider is not None else set()
        for name in self.SECRETS:
            if name in self.secrets_set:
                self.fields[name].help_text = "leave empty to keep"

    def clean_slug(self) -> str:
        slug: str = self.cleaned_data["slug"]
        # The service refuses a duplicate too, but as a whole-form error; here it sits on the slug box.
        other = selectors.provider_by_slug(project=self.project, slug=slug)
        if other is not None and (self.provider is None or other.pk != self.provider.pk):
            raise ValidationError("Another provider of this project has this slug.")
        return slug

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        for name in self.SECRETS:
            if data.get(name) and data.get(f"clear_{name}"):
                self.add_error(name, "Type a new value or tick clear, not both.")
        return data

    def _rows(self, names: tuple[str, ...]) -> list[tuple[forms.BoundField, bool]]:
        """(field, a secret is stored) in page order; a "clear" box only where there is something to clear."""
        rows = []
        for name in names:
            if name.startswith("clear_") and name.removeprefix("clear_") not in self.secrets_set:
                continue
            rows.append((self[name], name in self.secrets_set))
        return rows

    def general_rows(self) -> list[tuple[forms.BoundField, bool]]:
        return self._rows(self.PAGE_GENERAL)

    def pangu_rows(self) -> list[tuple[forms.BoundField, bool]]:
        return self._rows(self.PAGE_PANGU)

    def changes(self) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, str | None] | None]:
        """Split the cleaned form into the services' model fields, non-secret config and secrets."""
        data = self.cleaned_data
        kind = data["kind"]
        fields = {name: data[name] for name in self.GENERAL_FIELDS}
        fields["name"] = fields["name"] or data["slug"]
        fields["base_url"] = fields["base_url"].strip()
        config_names = CONFIG_FIELDS.get(kind, ())
        # Non-secret settings are prefilled, so an empty box means "remove".
        config = {name: data.get(name, "") for name in config_names} if config_names else None
        secrets: dict[str, str | None] = {}
        allowed = SECRET_FIELDS.get(kind, ())
        for name in self.SECRETS:
            if name in allowed:
                secrets[name] = None if data.get(f"clear_{name}") else (data.get(name) or "")
            elif name == "api_key" and data.get(name):
                # Handed on so the service says this kind takes no key, rather than dropping it silently.
                secrets[name] = data[name]
        return fields, config, secrets or None


class ModelChoice(forms.ModelChoiceField):
    def label_from_instance(self, obj: LlmModel) -> str:
        lengths = ", ".join(str(n) for n in obj.allowed_context_lengths)
        return f"{obj.display_name or obj.name} ({obj.provider.slug}; {lengths} tokens)"


class DeploymentCreateForm(forms.Form):
    model = ModelChoice(queryset=LlmModel.objects.none(), empty_label=None)
    context_length = forms.IntegerField(
        min_value=1,
        max_value=MAX_CONTEXT_LENGTH,
        required=False,
        help_text="One of the model's deploy lengths; empty for its context length.",
    )
    name = forms.CharField(max_length=100, required=False)

    def __init__(self, data: Any = None, *, models: QuerySet[LlmModel], **kwargs: Any) -> None:
        super().__init__(data, **kwargs)
        self.fields["model"].queryset = models  # type: ignore[attr-defined]


class DeploymentStateForm(forms.Form):
    state = forms.ChoiceField(choices=DeploymentState.choices)
