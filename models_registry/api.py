"""JSON API for automating the registry, with its OpenAPI schema at /api/registry/openapi.json.

Auth: a console session (CSRF-checked), an API key or IAM token as `Authorization: Bearer` /
`X-Auth-Token`, or an AK/SK signature (`console.callers`). Project admins and members read; only
project admins change anything (the services enforce it). Operators, who submit and watch forecast jobs
only, get 403 whatever their credential. Invalid input gets 400 with the offending field named.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse
from ninja import Field, NinjaAPI, Path, Query, Schema, Status
from ninja.errors import AuthenticationError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.security import APIKeyHeader, HttpBearer, django_auth
from pydantic import AfterValidator, ConfigDict, ValidationInfo, field_validator

from console.callers import Caller, CallerRejected, Rejection, RequestFacts, caller_authenticate
from console.current import current_membership, signed_in
from console.models import Project, Role
from models_registry import selectors, services
from models_registry.models import Deployment, LlmModel, Provider
from models_registry.services import MAX_CONTEXT_LENGTH

api = NinjaAPI(
    title="LLM Console registry API",
    version="1",
    description="Providers (model groups), models with their capability matrix, and deployments.",
    urls_namespace="registry_api",
)


# --- auth ------------------------------------------------------------------------------------------
# Every credential of `console.callers`: an API key or an IAM token (Bearer or X-Auth-Token), an AK/SK
# signature, or the console session (CSRF-checked). The two header classes exist for the OpenAPI
# schema; both resolve through the same function.
def _header_caller(request: HttpRequest) -> Caller | None:
    facts = RequestFacts(
        method=request.method or "GET",
        path=request.path,
        query=request.META.get("QUERY_STRING", ""),
        headers={k.lower(): v for k, v in request.headers.items()},
        body=request.body,
    )
    try:
        # Operators have no business in the registry (their role is forecast jobs): 403, as on the pages.
        return caller_authenticate(facts)
    except CallerRejected as exc:
        if exc.reason is Rejection.MISSING:
            return None  # let the next scheme (the session) try
        raise


class BearerKey(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Caller | None:
        return _header_caller(request)


class AuthTokenHeader(APIKeyHeader):
    param_name = "X-Auth-Token"

    def authenticate(self, request: HttpRequest, key: str | None) -> Caller | None:
        return _header_caller(request) if key else None


class SdkSignature(APIKeyHeader):
    """Huawei's SDK-HMAC-SHA256 request signature in `Authorization` (see docs/api.md)."""

    param_name = "Authorization"

    def authenticate(self, request: HttpRequest, key: str | None) -> Caller | None:
        return _header_caller(request) if (key or "").startswith("SDK-HMAC-SHA256") else None


AUTH = [BearerKey(), AuthTokenHeader(), SdkSignature(), django_auth]
# The words console.callers answers an operator's API key or token with, for the session too.
OPERATOR_REFUSAL = "Operators may only submit and watch forecast jobs."


def _caller(request: HttpRequest) -> tuple[User, Project]:
    auth = getattr(request, "auth", None)
    if isinstance(auth, Caller):
        return auth.user, auth.project
    authed = signed_in(request)  # django_auth let the request through: its session is signed in
    membership = current_membership(authed) if authed is not None else None
    if authed is None or membership is None:
        raise PermissionDenied("You are not a member of any project.")
    if membership.role == Role.OPERATOR:
        raise PermissionDenied(OPERATOR_REFUSAL)
    return authed.user, membership.project


# --- errors ----------------------------------------------------------------------------------------
def _field_of(loc: list[Any] | tuple[Any, ...]) -> str:
    names = [str(p) for p in loc if isinstance(p, str) and p not in {"body", "payload", "query", "path", "filters"}]
    return ".".join(names) or "body"


@api.exception_handler(NinjaValidationError)
def _invalid_input(request: HttpRequest, exc: NinjaValidationError) -> HttpResponse:
    errors: dict[str, list[str]] = {}
    for error in exc.errors:
        errors.setdefault(_field_of(error.get("loc", ())), []).append(str(error.get("msg", "invalid")))
    first = next(iter(errors))
    return api.create_response(request, {"detail": f"{first}: {errors[first][0]}", "errors": errors}, status=400)


@api.exception_handler(DjangoValidationError)
def _rejected(request: HttpRequest, exc: DjangoValidationError) -> HttpResponse:
    errors = exc.message_dict if hasattr(exc, "error_dict") else {"body": exc.messages}
    first = next(iter(errors))
    return api.create_response(request, {"detail": f"{first}: {errors[first][0]}", "errors": errors}, status=400)


@api.exception_handler(PermissionDenied)
def _forbidden(request: HttpRequest, exc: PermissionDenied) -> HttpResponse:
    return api.create_response(request, {"detail": str(exc) or "Not allowed."}, status=403)


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return api.create_response(request, {"detail": str(exc) or "Not found."}, status=404)


@api.exception_handler(CallerRejected)
def _caller_rejected(request: HttpRequest, exc: CallerRejected) -> HttpResponse:
    status = 403 if exc.reason is Rejection.FORBIDDEN else 401
    return api.create_response(request, {"detail": exc.message}, status=status)


_AUTH_HELP = (
    "Authentication required: a console session, an API key or IAM token (Bearer or X-Auth-Token), "
    "or an AK/SK signature."
)


@api.exception_handler(AuthenticationError)
def _unauthorized(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return api.create_response(request, {"detail": _AUTH_HELP}, status=401)


# --- schemas ---------------------------------------------------------------------------------------
def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return value


class Strict(Schema):
    """A request body: unknown fields are refused, and so is a NUL in any text (PostgreSQL's text and
    JSON columns cannot hold one, and no name or setting needs one)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _text_without_nul(cls, value: object) -> object:
        return _no_nul(value) if isinstance(value, str) else value


# The largest values the database columns hold (PositiveIntegerField, BigIntegerField), also the furthest
# a page may start: a larger number is a 400 naming the field as the API spells it, not an overflow in
# the database driver.
MAX_INT = 2**31 - 1
MAX_BIG_INT = 2**63 - 1


# Text from a URL that is looked up as it stands: no stored value holds a NUL, and PostgreSQL refuses a
# query that looks for one.
LookupText = Annotated[str, AfterValidator(_no_nul)]
DeploymentId = Annotated[str, Path(), AfterValidator(_no_nul)]


class Patch(Strict):
    """A partial update: a field left out keeps its value. null is a value only where the field says so
    (NULLABLE: no quota, no limit, clear a secret); elsewhere it is refused by name, since the column
    cannot hold it."""

    NULLABLE: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: object, info: ValidationInfo) -> object:
        if value is None and info.field_name not in cls.NULLABLE:
            raise ValueError("may not be null: leave the field out to keep its value")
        return value


class Limits(Strict):
    token_quota: int | None = Field(None, ge=1, le=MAX_BIG_INT, description="tokens; null for no quota")
    quota_period: Literal["total", "monthly"] = "total"
    max_concurrency: int | None = Field(None, ge=1, le=MAX_INT)
    rps: float | None = Field(None, gt=0, allow_inf_nan=False, description="requests per second")


class LimitsPatch(Patch):
    NULLABLE = frozenset({"token_quota", "max_concurrency", "rps"})
    token_quota: int | None = Field(None, ge=1, le=MAX_BIG_INT)
    quota_period: Literal["total", "monthly"] | None = None
    max_concurrency: int | None = Field(None, ge=1, le=MAX_INT)
    rps: float | None = Field(None, gt=0, allow_inf_nan=False)


class PanguCredentials(Strict):
    iam_endpoint: str | None = None
    iam_username: str | None = None
    iam_password: str | None = Field(None, description="write-only")
    iam_domain: str | None = None
    iam_project: str | None = None
    access_key: str | None = None
    secret_key: str | None = Field(None, description="write-only")
    project_id: str | None = None
    deployment_id: str | None = Field(None, description="upstream deployment, unless a model's name is one")


class ProviderOut(Schema):
    id: int
    slug: str
    name: str
    kind: str
    base_url: str
    timeout: float
    configured: bool = Field(description="credentials needed to call the upstream are set")
    secrets_set: list[str] = Field(description="names of the write-only secrets that hold a value")
    config: dict[str, str]
    limits: Limits
    enabled: bool
    created_at: datetime
    updated_at: datetime


class ProviderIn(Strict):
    slug: str = Field(min_length=1, max_length=64, pattern=r"^[-a-zA-Z0-9_]+$")
    name: str = Field("", max_length=100)
    kind: Literal["openai_compatible", "pangu", "local"]
    base_url: str = Field("", max_length=500)
    api_key: str | None = Field(None, description="write-only; reads give `configured`")
    pangu: PanguCredentials | None = None
    timeout: float = Field(60.0, ge=0.5, le=600)
    limits: Limits | None = None
    enabled: bool = True


class ProviderPatch(Patch):
    NULLABLE = frozenset({"api_key", "pangu", "limits"})
    slug: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[-a-zA-Z0-9_]+$")
    name: str | None = Field(None, max_length=100)
    kind: Literal["openai_compatible", "pangu", "local"] | None = None
    base_url: str | None = Field(None, max_length=500)
    api_key: str | None = Field(None, description="write-only; an empty string clears it")
    pangu: PanguCredentials | None = None
    timeout: float | None = Field(None, ge=0.5, le=600)
    limits: LimitsPatch | None = None
    enabled: bool | None = None


class Capabilities(Strict):
    pretrain: bool = False
    finetune: bool = False
    evaluate: bool = False
    compress: bool = False
    infer: bool = True


class CapabilitiesPatch(Patch):
    NULLABLE = frozenset({"pretrain", "finetune", "evaluate", "compress", "infer"})

    pretrain: bool | None = None
    finetune: bool | None = None
    evaluate: bool | None = None
    compress: bool | None = None
    infer: bool | None = None


class Interfaces(Strict):
    chat: bool = True
    completions: bool = True


class InterfacesPatch(Patch):
    NULLABLE = frozenset({"chat", "completions"})

    chat: bool | None = None
    completions: bool | None = None


class ModelOut(Schema):
    id: int
    name: str
    display_name: str
    provider: str
    category: str
    context_length: int
    deploy_context_lengths: list[int]
    description: str
    capabilities: Capabilities
    fine_tuned: bool
    evaluation_available: bool = Field(description="evaluate is offered only once the model is fine-tuned")
    interfaces: Interfaces
    enabled: bool
    updated_at: datetime


CategoryName = Literal["base_function", "professional", "single_scenario", "scientific_computing", "custom"]


class ModelIn(Strict):
    name: str = Field(min_length=1, max_length=200)
    display_name: str = Field("", max_length=200)
    provider: str = Field(min_length=1, description="provider slug")
    category: CategoryName = "custom"
    context_length: int = Field(4096, ge=1, le=MAX_CONTEXT_LENGTH)
    deploy_context_lengths: list[int] = Field(default_factory=list)
    description: str = ""
    capabilities: Capabilities | None = None
    interfaces: Interfaces | None = None
    fine_tuned: bool = False
    enabled: bool = True


class ModelPatch(Patch):
    NULLABLE = frozenset({"provider", "capabilities", "interfaces"})
    name: str | None = Field(None, min_length=1, max_length=200)
    display_name: str | None = Field(None, max_length=200)
    provider: str | None = None
    category: CategoryName | None = None
    context_length: int | None = Field(None, ge=1, le=MAX_CONTEXT_LENGTH)
    deploy_context_lengths: list[int] | None = None
    description: str | None = None
    capabilities: CapabilitiesPatch | None = None
    interfaces: InterfacesPatch | None = None
    fine_tuned: bool | None = None
    enabled: bool | None = None


class DeploymentOut(Schema):
    id: str
    project_id: str
    model: int
    model_name: str
    name: str
    context_length: int
    state: str
    created_at: datetime


class DeploymentIn(Strict):
    model: int
    name: str = Field("", max_length=100)
    context_length: int | None = Field(None, ge=1)
    state: Literal["running", "stopped"] = "running"


class DeploymentPatch(Patch):
    name: str | None = Field(None, max_length=100)
    context_length: int | None = Field(None, ge=1)
    state: Literal["running", "stopped"] | None = None


class Page(Schema):
    count: int


class ProviderPage(Page):
    items: list[ProviderOut]


class ModelPage(Page):
    items: list[ModelOut]


class DeploymentPage(Page):
    items: list[DeploymentOut]


class Detail(Schema):
    detail: str


class Invalid(Schema):
    detail: str
    errors: dict[str, list[str]]


ERRORS: dict[int, type[Schema]] = {400: Invalid, 401: Detail, 403: Detail, 404: Detail}


# --- converters ------------------------------------------------------------------------------------
def _provider_out(p: Provider) -> dict[str, Any]:
    return {
        "id": p.pk,
        "slug": p.slug,
        "name": p.name,
        "kind": p.kind,
        "base_url": p.base_url,
        "timeout": p.timeout_seconds,
        "configured": p.is_configured,
        "secrets_set": p.secrets_set(),
        "config": dict(p.config or {}),
        "limits": {
            "token_quota": p.token_quota,
            "quota_period": p.quota_period,
            "max_concurrency": p.max_concurrency,
            "rps": p.rps,
        },
        "enabled": p.enabled,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
    }


def _model_out(m: LlmModel) -> dict[str, Any]:
    return {
        "id": m.pk,
        "name": m.name,
        "display_name": m.display_name,
        "provider": m.provider.slug,
        "category": m.category,
        "context_length": m.context_length,
        "deploy_context_lengths": m.allowed_context_lengths,
        "description": m.description,
        "capabilities": m.capabilities,
        "fine_tuned": m.fine_tuned,
        "evaluation_available": m.evaluation_available,
        "interfaces": {"chat": m.supports_chat, "completions": m.supports_completions},
        "enabled": m.enabled,
        "updated_at": m.updated_at,
    }


def _deployment_out(d: Deployment) -> dict[str, Any]:
    return {
        "id": d.id,
        "project_id": d.project_id,
        "model": d.model_id,
        "model_name": d.model.name,
        "name": d.name,
        "context_length": d.context_length,
        "state": d.state,
        "created_at": d.created_at,
    }


def _provider_changes(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
    """Split an API body into model fields, non-secret config and write-only secrets."""
    fields = {k: v for k, v in data.items() if k not in {"api_key", "pangu", "limits", "timeout"}}
    if "timeout" in data:
        fields["timeout_seconds"] = data["timeout"]
    fields.update({k: v for k, v in (data.get("limits") or {}).items()})
    secrets: dict[str, str | None] = {}
    config: dict[str, Any] | None = None
    if "api_key" in data:
        # "" clears the key; a value replaces it.
        secrets["api_key"] = data["api_key"] or None
    pangu = data.get("pangu")
    if pangu:
        for name in ("iam_password", "secret_key"):
            if name in pangu:
                secrets[name] = pangu.pop(name) or None
        config = pangu
    return fields, config, secrets or None


def _capability_fields(caps: dict[str, Any] | None) -> dict[str, bool]:
    return {f"cap_{k}": bool(v) for k, v in (caps or {}).items() if v is not None}


def _interface_fields(interfaces: dict[str, Any] | None) -> dict[str, bool]:
    names = {"chat": "supports_chat", "completions": "supports_completions"}
    return {names[k]: bool(v) for k, v in (interfaces or {}).items() if v is not None}


def _get_provider(project: Project, provider_id: int) -> Provider:
    return selectors.provider_get_or_404(project=project, provider_id=provider_id)


def _provider_by_slug(project: Project, slug: str) -> Provider:
    provider = selectors.provider_by_slug(project=project, slug=slug)
    if provider is None:
        raise DjangoValidationError({"provider": f"No provider {slug!r} in this project."})
    return provider


def _get_model(project: Project, model_id: int) -> LlmModel:
    return selectors.model_get_or_404(project=project, model_id=model_id)


def _get_deployment(project: Project, deployment_id: str) -> Deployment:
    return selectors.deployment_get_or_404(project=project, deployment_id=deployment_id)


# --- providers -------------------------------------------------------------------------------------
@api.get("/providers", response={200: ProviderPage, **ERRORS}, auth=AUTH, tags=["providers"])
def list_providers(
    request: HttpRequest, limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=MAX_INT)
) -> dict[str, Any]:
    _, project = _caller(request)
    qs = selectors.providers_for(project=project)
    return {"count": qs.count(), "items": [_provider_out(p) for p in qs[offset : offset + limit]]}


@api.post("/providers", response={201: ProviderOut, **ERRORS}, auth=AUTH, tags=["providers"])
def create_provider(request: HttpRequest, payload: ProviderIn) -> Status:
    user, project = _caller(request)
    fields, config, secrets = _provider_changes(payload.model_dump(exclude_unset=True))
    fields.setdefault("kind", payload.kind)
    fields.setdefault("name", payload.name or payload.slug)
    provider = services.provider_create(project=project, by=user, fields=fields, config=config, secrets=secrets)
    return Status(201, _provider_out(provider))


@api.get("/providers/{provider_id}", response={200: ProviderOut, **ERRORS}, auth=AUTH, tags=["providers"])
def get_provider(request: HttpRequest, provider_id: int) -> dict[str, Any]:
    _, project = _caller(request)
    return _provider_out(_get_provider(project, provider_id))


@api.patch("/providers/{provider_id}", response={200: ProviderOut, **ERRORS}, auth=AUTH, tags=["providers"])
def update_provider(request: HttpRequest, provider_id: int, payload: ProviderPatch) -> dict[str, Any]:
    user, project = _caller(request)
    provider = _get_provider(project, provider_id)
    data = payload.model_dump(exclude_unset=True)
    if "limits" in data:
        data["limits"] = payload.limits.model_dump(exclude_unset=True) if payload.limits else {}
    if "pangu" in data:
        data["pangu"] = payload.pangu.model_dump(exclude_unset=True) if payload.pangu else {}
    fields, config, secrets = _provider_changes(data)
    provider = services.provider_update(provider=provider, by=user, fields=fields, config=config, secrets=secrets)
    return _provider_out(provider)


@api.delete("/providers/{provider_id}", response={204: None, **ERRORS}, auth=AUTH, tags=["providers"])
def delete_provider(request: HttpRequest, provider_id: int) -> Status:
    user, project = _caller(request)
    services.provider_delete(provider=_get_provider(project, provider_id), by=user)
    return Status(204, None)


# --- models ----------------------------------------------------------------------------------------
@api.get("/models", response={200: ModelPage, **ERRORS}, auth=AUTH, tags=["models"])
def list_models(
    request: HttpRequest,
    provider: LookupText = "",
    capability: Literal["", "pretrain", "finetune", "evaluate", "compress", "infer"] = "",
    enabled: bool | None = None,
    q: LookupText = "",
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=MAX_INT),
) -> dict[str, Any]:
    _, project = _caller(request)
    state = "" if enabled is None else ("enabled" if enabled else "disabled")
    qs = selectors.models_for(
        project=project, filters=selectors.ModelFilter(provider=provider, capability=capability, state=state, q=q)
    )
    return {"count": qs.count(), "items": [_model_out(m) for m in qs[offset : offset + limit]]}


@api.post("/models", response={201: ModelOut, **ERRORS}, auth=AUTH, tags=["models"])
def create_model(request: HttpRequest, payload: ModelIn) -> Status:
    user, project = _caller(request)
    data = payload.model_dump()
    provider = _provider_by_slug(project, data.pop("provider"))
    caps = data.pop("capabilities") or Capabilities().model_dump()
    interfaces = _interface_fields(data.pop("interfaces"))
    model = services.model_create(provider=provider, by=user, fields={**data, **_capability_fields(caps), **interfaces})
    return Status(201, _model_out(model))


@api.get("/models/{model_id}", response={200: ModelOut, **ERRORS}, auth=AUTH, tags=["models"])
def get_model(request: HttpRequest, model_id: int) -> dict[str, Any]:
    _, project = _caller(request)
    return _model_out(_get_model(project, model_id))


@api.patch("/models/{model_id}", response={200: ModelOut, **ERRORS}, auth=AUTH, tags=["models"])
def update_model(request: HttpRequest, model_id: int, payload: ModelPatch) -> dict[str, Any]:
    """`{"enabled": false}` switches a model off; in force on the next request in every process."""
    user, project = _caller(request)
    model = _get_model(project, model_id)
    data = payload.model_dump(exclude_unset=True)
    provider = _provider_by_slug(project, data.pop("provider")) if data.get("provider") else None
    data.pop("provider", None)
    caps = data.pop("capabilities", None)
    interfaces = _interface_fields(data.pop("interfaces", None))
    model = services.model_update(
        model=model, by=user, provider=provider, fields={**data, **_capability_fields(caps), **interfaces}
    )
    return _model_out(model)


@api.delete("/models/{model_id}", response={204: None, **ERRORS}, auth=AUTH, tags=["models"])
def delete_model(request: HttpRequest, model_id: int) -> Status:
    user, project = _caller(request)
    services.model_delete(model=_get_model(project, model_id), by=user)
    return Status(204, None)


# --- deployments -----------------------------------------------------------------------------------
@api.get("/deployments", response={200: DeploymentPage, **ERRORS}, auth=AUTH, tags=["deployments"])
def list_deployments(
    request: HttpRequest, limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=MAX_INT)
) -> dict[str, Any]:
    _, project = _caller(request)
    qs = selectors.deployments_for(project=project)
    return {"count": qs.count(), "items": [_deployment_out(d) for d in qs[offset : offset + limit]]}


@api.post("/deployments", response={201: DeploymentOut, **ERRORS}, auth=AUTH, tags=["deployments"])
def create_deployment(request: HttpRequest, payload: DeploymentIn) -> Status:
    user, project = _caller(request)
    model = selectors.model_get(project=project, model_id=payload.model)
    if model is None:
        raise DjangoValidationError({"model": "No such model in this project."})
    deployment = services.deployment_create(
        project=project,
        model=model,
        by=user,
        context_length=payload.context_length,
        name=payload.name,
        state=payload.state,
    )
    return Status(201, _deployment_out(deployment))


@api.get("/deployments/{deployment_id}", response={200: DeploymentOut, **ERRORS}, auth=AUTH, tags=["deployments"])
def get_deployment(request: HttpRequest, deployment_id: DeploymentId) -> dict[str, Any]:
    _, project = _caller(request)
    return _deployment_out(_get_deployment(project, deployment_id))


@api.patch("/deployments/{deployment_id}", response={200: DeploymentOut, **ERRORS}, auth=AUTH, tags=["deployments"])
def update_deployment(request: HttpRequest, deployment_id: DeploymentId, payload: DeploymentPatch) -> dict[str, Any]:
    user, project = _caller(request)
    deployment = services.deployment_update(
        deployment=_get_deployment(project, deployment_id), by=user, fields=payload.model_dump(exclude_unset=True)
    )
    return _deployment_out(deployment)


@api.delete("/deployments/{deployment_id}", response={204: None, **ERRORS}, auth=AUTH, tags=["deployments"])
def delete_deployment(request: HttpRequest, deployment_id: DeploymentId) -> Status:
    user, project = _caller(request)
    services.deployment_delete(deployment=_get_deployment(project, deployment_id), by=user)
    return Status(204, None)
