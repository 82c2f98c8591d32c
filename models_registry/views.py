"""Registry pages: the model matrix, providers, deployments. Thin: parse, call one service, render.

Admins and members read (operators get a 403 page); only project admins change anything. Objects of other projects are
404 (their ids are not confirmed to exist), changes by non-admins 403.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from console.current import AuthedRequest, require_current_membership
from console.models import Membership, Role
from models_registry import selectors, services
from models_registry.forms import (
    DeploymentCreateForm,
    DeploymentStateForm,
    ModelEditForm,
    ModelFilterForm,
    ProviderForm,
    add_service_errors,
)
from models_registry.models import CAPABILITIES, Deployment, LlmModel, Provider


# --- helpers ---------------------------------------------------------------------------------------
def _registry_membership(request: AuthedRequest) -> Membership:
    """The current membership of someone whose role includes the registry: admins and members.
    Operators submit and watch forecast jobs only; the navigation hides these pages from them."""
    membership = require_current_membership(request)
    if membership.role == Role.OPERATOR:
        raise PermissionDenied(
            "Operators submit and watch forecast jobs; models, providers and deployments are for the "
            "project's admins and members."
        )
    return membership


def _require_admin(membership: Membership) -> None:
    # Checked before any input is parsed; the services check again, so no path can skip it.
    if membership.role != Role.ADMIN:
        raise PermissionDenied("Only a project admin can change the model registry.")


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _next_or(request: HttpRequest, default: str) -> str:
    target = request.POST.get("next") or ""
    # Only same-site paths: the switch must not become an open redirect.
    if (
        target.startswith("/")
        and not target.startswith("//")
        and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()})
    ):
        return target
    return default


def _model_or_404(membership: Membership, model_id: int) -> LlmModel:
    return selectors.model_get_or_404(project=membership.project, model_id=model_id)


def _provider_or_404(membership: Membership, provider_id: int) -> Provider:
    return selectors.provider_get_or_404(project=membership.project, provider_id=provider_id)


def _deployment_or_404(membership: Membership, deployment_id: str) -> Deployment:
    return selectors.deployment_get_or_404(project=membership.project, deployment_id=deployment_id)


def _error_text(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return " ".join(f"{field}: {message}" for field, msgs in exc.message_dict.items() for message in msgs)
    return " ".join(exc.messages)


# --- models ----------------------------------------------------------------------------------------
@login_required
def model_list(request: AuthedRequest) -> HttpResponse:
    membership = _registry_membership(request)
    providers = list(selectors.providers_for(project=membership.project).values_list("slug", "name"))
    form = ModelFilterForm(request.GET, providers=[(slug, slug) for slug, _ in providers])
    filters = form.filters()
    models = list(selectors.models_for(project=membership.project, filters=filters))
    return render(
        request,
        "models_registry/model_list.html",
        {
            "membership": membership,
            "is_admin": membership.role == Role.ADMIN,
            "form": form,
            "filtered": any((filters.provider, filters.capability, filters.state, filters.q)),
            "models": models,
            "capabilities": CAPABILITIES,
        },
    )


@login_required
def model_detail(request: AuthedRequest, model_id: int) -> HttpResponse:
    membership = _registry_membership(request)
    model = _model_or_404(membership, model_id)
    is_admin = membership.role == Role.ADMIN
    form = ModelEditForm.for_model(model)
    if request.method == "POST":
        _require_admin(membership)
        form = ModelEditForm.for_model(model, request.POST)
        if form.is_valid():
            try:
                model = services.model_update(model=model, by=request.user, fields=form.cleaned_data)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Model “{model}” saved.")
                return redirect("models_registry:model_detail", model_id=model.pk)
    return render(
        request,
        "models_registry/model_detail.html",
        {
            "membership": membership,
            "is_admin": is_admin,
            "model": model,
            "form": form,
            "capabilities": [(label, model.capabilities[key]) for key, label in CAPABILITIES],
            "deployments": selectors.deployments_for(project=membership.project).filter(model=model),
        },
    )


@login_required
@require_POST
def model_toggle(request: AuthedRequest, model_id: int) -> HttpResponse:
    membership = _registry_membership(request)
    model = _model_or_404(membership, model_id)
    _require_admin(membership)
    value = request.POST.get("enabled")
    error = None
    if value not in {"0", "1"}:
        error = "Send enabled=1 or enabled=0."
    else:
        try:
            model = services.model_set_enabled(model=model, enabled=value == "1", by=request.user)
        except ValidationError as exc:
            error = _error_text(exc)
    if _wants_json(request):
        if error:
            return JsonResponse({"detail": error}, status=400)
        return JsonResponse({"id": model.pk, "enabled": model.enabled})
    if error:
        messages.error(request, error)
    else:
        messages.success(request, f"Model “{model}” {'enabled' if model.enabled else 'disabled'}.")
    return HttpResponseRedirect(_next_or(request, reverse("models_registry:model_list")))


# --- providers -------------------------------------------------------------------------------------
@login_required
def provider_list(request: AuthedRequest) -> HttpResponse:
    membership = _registry_membership(request)
    return render(
        request,
        "models_registry/provider_list.html",
        {
            "membership": membership,
            "is_admin": membership.role == Role.ADMIN,
            "providers": selectors.providers_with_health(project=membership.project),
            "health_window_minutes": int(selectors.HEALTH_WINDOW.total_seconds() // 60),
        },
    )


@login_required
def provider_create(request: AuthedRequest) -> HttpResponse:
    membership = _registry_membership(request)
    _require_admin(membership)
    form = ProviderForm(request.POST if request.method == "POST" else None, project=membership.project)
    if request.method == "POST" and form.is_valid():
        fields, config, secrets = form.changes()
        try:
            provider = services.provider_create(
                project=membership.project, by=request.user, fields=fields, config=config, secrets=secrets
            )
        except ValidationError as exc:
            add_service_errors(form, exc)
        else:
            messages.success(request, f"Provider “{provider}” created.")
            return redirect("models_registry:provider_edit", provider_id=provider.pk)
    return render(request, "models_registry/provider_form.html", {"membership": membership, "form": form})


@login_required
def provider_edit(request: AuthedRequest, provider_id: int) -> HttpResponse:
    membership = _registry_membership(request)
    provider = _provider_or_404(membership, provider_id)
    _require_admin(membership)
    form = ProviderForm(
        request.POST if request.method == "POST" else None, project=membership.project, provider=provider
    )
    if request.method == "POST" and form.is_valid():
        fields, config, secrets = form.changes()
        try:
            provider = services.provider_update(
                provider=provider, by=request.user, fields=fields, config=config, secrets=secrets
            )
        except ValidationError as exc:
            add_service_errors(form, exc)
        else:
            messages.success(request, f"Provider “{provider}” saved.")
            return redirect("models_registry:provider_edit", provider_id=provider.pk)
    return render(
        request,
        "models_registry/provider_form.html",
        {"membership": membership, "form": form, "provider": provider},
    )


@sync_to_async
def _admin_provider(request: AuthedRequest, provider_id: int) -> Provider:
    membership = _registry_membership(request)
    provider = _provider_or_404(membership, provider_id)
    _require_admin(membership)
    return provider


@login_required
@require_POST
async def provider_test(request: AuthedRequest, provider_id: int) -> HttpResponse:
    # Async so a slow upstream holds no worker thread; the ORM work runs in sync_to_async.
    provider = await _admin_provider(request, provider_id)
    result = await services.provider_test_connection(provider=provider)
    await sync_to_async(services.provider_check_record)(provider=provider, result=result)
    if _wants_json(request):
        return JsonResponse({"ok": result.ok, "message": result.message, "latency_ms": result.latency_ms})
    if result.ok:
        messages.success(request, f"OK — {result.message} ({result.latency_ms or 0:g} ms)")
    else:
        messages.error(request, f"Connection failed: {result.message}")
    return redirect("models_registry:provider_edit", provider_id=provider.pk)


@sync_to_async
def _registered_names(provider: Provider) -> set[str]:
    return set(provider.models.values_list("name", flat=True))


@sync_to_async
def _register_local(request: AuthedRequest, provider: Provider, card: dict[str, object], chat: bool) -> str:
    try:
        model = services.local_model_register(
            provider=provider,
            by=request.user,
            name=str(card["id"]),
            chat=chat,
            context_length=int(card["context_length"]),  # type: ignore[call-overload]
        )
    except ValidationError as exc:
        return "error: " + " ".join(exc.messages)
    return f"Model “{model}” registered with a deployment."


@login_required
async def provider_local_models(request: AuthedRequest, provider_id: int) -> HttpResponse:
    """The embedded server's models (bundled and dropped-in GGUF files), registered or not."""
    from models_registry.providers.base import UpstreamError

    provider = await _admin_provider(request, provider_id)
    if provider.kind != "local":
        raise Http404("Only a local provider has a models folder.")
    try:
        cards = await services.local_models_available(provider=provider)
    except UpstreamError as exc:
        cards, problem = [], str(exc)
    else:
        problem = ""
    if request.method == "POST":
        card = next((c for c in cards if c["id"] == request.POST.get("name")), None)
        if card is None:
            messages.error(request, "That model is not on the local server (any more).")
        else:
            # The operator may register a file with a chat template as completion-only; never the reverse.
            chat = bool(card["chat"]) and request.POST.get("interface") != "completions"
            outcome = await _register_local(request, provider, card, chat)
            (messages.error if outcome.startswith("error: ") else messages.success)(
                request, outcome.removeprefix("error: ")
            )
        return redirect("models_registry:provider_local_models", provider_id=provider.pk)
    registered = await _registered_names(provider)
    # Templates and their context processors touch the ORM: render off the event loop.
    return await sync_to_async(render)(
        request,
        "models_registry/provider_local_models.html",
        {"provider": provider, "cards": cards, "registered": registered, "problem": problem},
    )


# --- deployments -----------------------------------------------------------------------------------
@login_required
def deployment_list(request: AuthedRequest) -> HttpResponse:
    membership = _registry_membership(request)
    project = membership.project
    form = DeploymentCreateForm(
        request.POST if request.method == "POST" else None, models=selectors.models_for(project=project)
    )
    if request.method == "POST":
        _require_admin(membership)
        if form.is_valid():
            try:
                deployment = services.deployment_create(
                    project=project,
                    model=form.cleaned_data["model"],
                    by=request.user,
                    context_length=form.cleaned_data["context_length"],
                    name=form.cleaned_data["name"],
                )
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Deployment “{deployment}” created: {deployment.id}.")
                return redirect("models_registry:deployment_list")
    return render(
        request,
        "models_registry/deployment_list.html",
        {
            "membership": membership,
            "project": project,
            "is_admin": membership.role == Role.ADMIN,
            "form": form,
            "deployments": selectors.deployments_for(project=project),
        },
    )


@login_required
@require_POST
def deployment_state(request: AuthedRequest, deployment_id: str) -> HttpResponse:
    membership = _registry_membership(request)
    deployment = _deployment_or_404(membership, deployment_id)
    _require_admin(membership)
    form = DeploymentStateForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Send state=running or state=stopped.")
    else:
        try:
            deployment = services.deployment_update(
                deployment=deployment, by=request.user, fields={"state": form.cleaned_data["state"]}
            )
        except ValidationError as exc:
            messages.error(request, _error_text(exc))
        else:
            messages.success(request, f"Deployment “{deployment}” is {deployment.get_state_display().lower()}.")
    return redirect("models_registry:deployment_list")


def _delete(
    request: AuthedRequest,
    find: Callable[[Membership], Any],
    remove: Callable[..., None],
    noun: str,
    after: str,
    back: str,
) -> HttpResponse:
    """Delete one object of the current project (admins only) and go back to its list."""
    membership = _registry_membership(request)
    obj = find(membership)
    _require_admin(membership)
    label = str(obj)
    remove(obj, by=request.user)
    messages.success(request, f"{noun} “{label}” deleted{after}.")
    return redirect(back)


@login_required
@require_POST
def deployment_delete(request: AuthedRequest, deployment_id: str) -> HttpResponse:
    return _delete(
        request,
        lambda m: _deployment_or_404(m, deployment_id),
        lambda d, by: services.deployment_delete(deployment=d, by=by),
        "Deployment",
        "",
        "models_registry:deployment_list",
    )


@login_required
@require_POST
def provider_delete(request: AuthedRequest, provider_id: int) -> HttpResponse:
    return _delete(
        request,
        lambda m: _provider_or_404(m, provider_id),
        lambda p, by: services.provider_delete(provider=p, by=by),
        "Provider",
        ", with its models and their deployments",
        "models_registry:provider_list",
    )


@login_required
@require_POST
def model_delete(request: AuthedRequest, model_id: int) -> HttpResponse:
    return _delete(
        request,
        lambda m: _model_or_404(m, model_id),
        lambda x, by: services.model_delete(model=x, by=by),
        "Model",
        ", with its deployments",
        "models_registry:model_list",
    )
