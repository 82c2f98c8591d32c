"""Console pages: dashboard, projects, credentials, and the health check. Thin: parse, call, render."""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.handlers.asgi import ASGIRequest
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from chat import selectors as chat_selectors
from console import health, metrics, selectors, services
from console.current import AuthedRequest, current_membership, require_current_membership, set_current_project
from console.forms import (
    AuditFilterForm,
    DashboardRangeForm,
    KeyCreateForm,
    MemberForm,
    ProjectCreateForm,
    ThrottledAuthenticationForm,
    UsageFilterForm,
)
from console.lib import crypto, onetime
from console.lib.asgi import request_client_ip
from console.lib.days import day_start
from console.lib.paging import CappedPaginator
from console.models import AccessKey, ApiKey, Membership, Role
from console.throttle import ExportBusy, ExportSlot
from forecasts import selectors as forecast_selectors


class ThrottledLoginView(LoginView):
    """Django's sign-in page, its password checks throttled (console.throttle): 429 and Retry-After."""

    form_class = ThrottledAuthenticationForm

    def form_invalid(self, form: ThrottledAuthenticationForm) -> HttpResponse:  # type: ignore[override]
        response = super().form_invalid(form)
        if form.retry_after is not None:
            response.status_code = 429
            response["Retry-After"] = str(form.retry_after)
        return response


def _membership_or_404(request: AuthedRequest, project_id: str) -> Membership:
    membership = selectors.membership_for(user=request.user, project_id=project_id)
    if membership is None:
        # 404, not 403: another tenant's project ids are not confirmed to exist.
        raise Http404("No such project.")
    return membership


@login_required
def dashboard(request: AuthedRequest) -> HttpResponse:
    membership = current_membership(request)
    context: dict[str, object] = {
        "membership": membership,
        "can_create_projects": services.can_create_projects(user=request.user),
    }
    if membership is not None:
        context["member_count"] = selectors.project_members(project=membership.project).count()
        context["active_key_count"] = sum(
            1 for k in selectors.api_keys_visible(user=request.user, membership=membership) if k.is_active()
        )
        context["usage"] = chat_selectors.usage_summary(project=membership.project)
    return render(request, "console/dashboard.html", context)


@login_required
def project_list(request: AuthedRequest) -> HttpResponse:
    can_create = services.can_create_projects(user=request.user)
    form = ProjectCreateForm(request.POST or None)
    if request.method == "POST":
        if not can_create:
            raise PermissionDenied("Only site staff can create projects.")
        if form.is_valid():
            project = services.project_create(owner=request.user, by=request.user, **form.cleaned_data)
            set_current_project(request, project.id)
            messages.success(request, f"Project “{project.name}” created. You are its admin.")
            return redirect("console:project_detail", project_id=project.id)
    projects = selectors.projects_for_user(user=request.user)
    return render(request, "console/project_list.html", {"projects": projects, "form": form, "can_create": can_create})


@login_required
def project_detail(request: AuthedRequest, project_id: str) -> HttpResponse:
    membership = _membership_or_404(request, project_id)
    form = MemberForm(request.POST or None)
    if request.method == "POST":
        if membership.role != Role.ADMIN:
            raise PermissionDenied("Only a project admin can manage members.")
        if form.is_valid():
            try:
                services.membership_set(project=membership.project, by=request.user, **form.cleaned_data)
            except ValidationError as exc:
                form.add_error(None, exc)
            else:
                messages.success(request, f"{form.cleaned_data['username']} is now {form.cleaned_data['role']}.")
                return redirect("console:project_detail", project_id=project_id)
    return render(
        request,
        "console/project_detail.html",
        {
            "membership": membership,
            "project": membership.project,
            "members": selectors.project_members(project=membership.project),
            "form": form,
            "roles": Role.choices,
        },
    )


@login_required
@require_POST
def member_remove(request: AuthedRequest, project_id: str, user_id: int) -> HttpResponse:
    membership = _membership_or_404(request, project_id)
    try:
        services.membership_remove(project=membership.project, user_id=user_id, by=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    return redirect("console:project_detail", project_id=project_id)


@login_required
@require_POST
def project_switch(request: AuthedRequest) -> HttpResponse:
    membership = _membership_or_404(request, request.POST.get("project_id", ""))
    set_current_project(request, membership.project_id)
    target = request.POST.get("next") or reverse("console:dashboard")
    # Only same-site paths: the switcher must not become an open redirect.
    if not target.startswith("/") or target.startswith("//"):
        target = reverse("console:dashboard")
    return HttpResponseRedirect(target)


# The new secret travels to the next GET through a one-time store (the session holds only its
# handle), so a reload neither shows it again nor re-submits the form and creates a second key.
_CREATED_SESSION_KEY = "created_credential"


@login_required
@never_cache
def keys(request: AuthedRequest) -> HttpResponse:
    membership = require_current_membership(request)
    api_form = KeyCreateForm(prefix="api")
    access_form = KeyCreateForm(prefix="ak")
    if request.method == "POST":
        kind = request.POST.get("kind")
        if kind == "api":
            api_form = KeyCreateForm(request.POST, prefix="api")
            if api_form.is_valid():
                key, raw = services.api_key_create(
                    user=request.user, project=membership.project, **api_form.cleaned_data
                )
                request.session[_CREATED_SESSION_KEY] = onetime.put({"kind": "API key", "name": key.name, "value": raw})
                return redirect("console:keys")
        elif kind == "ak":
            access_form = KeyCreateForm(request.POST, prefix="ak")
            if access_form.is_valid():
                ak, secret = services.access_key_create(
                    user=request.user, project=membership.project, **access_form.cleaned_data
                )
                request.session[_CREATED_SESSION_KEY] = onetime.put(
                    {"kind": "Access key", "name": ak.name, "ak": ak.access_key_id, "value": secret}
                )
                return redirect("console:keys")
        else:
            messages.error(request, "Unknown key type.")
    return render(
        request,
        "console/keys.html",
        {
            "membership": membership,
            "api_keys": selectors.api_keys_visible(user=request.user, membership=membership),
            "access_keys": selectors.access_keys_visible(user=request.user, membership=membership),
            "api_form": api_form,
            "access_form": access_form,
            "created": _created(request),
        },
    )


def _created(request: AuthedRequest) -> dict[str, str] | None:
    handle = request.session.pop(_CREATED_SESSION_KEY, None)
    return onetime.pop(handle) if isinstance(handle, str) else None


def _revoke(request: AuthedRequest, model: type[ApiKey] | type[AccessKey], key_id: int) -> HttpResponse:
    membership = require_current_membership(request)
    key = get_object_or_404(model, pk=key_id, project=membership.project)
    revoke = services.api_key_revoke if model is ApiKey else services.access_key_revoke
    revoke(key=key, by=request.user)  # type: ignore[arg-type]  # the matching key type, chosen just above
    noun = str(model._meta.verbose_name)
    messages.success(request, f"{noun.capitalize()} “{key.name}” revoked.")
    return redirect("console:keys")


@login_required
@require_POST
def api_key_revoke(request: AuthedRequest, key_id: int) -> HttpResponse:
    return _revoke(request, ApiKey, key_id)


@login_required
@require_POST
def access_key_revoke(request: AuthedRequest, key_id: int) -> HttpResponse:
    return _revoke(request, AccessKey, key_id)


AUDIT_PAGE_SIZE = 50


@login_required
@require_GET
def audit_log(request: AuthedRequest) -> HttpResponse:
    """The current project's audit log: its admins only (anyone else 403, and no link in the menu)."""
    membership = require_current_membership(request)
    if membership.role != Role.ADMIN:
        raise PermissionDenied("Only a project admin can read the audit log.")
    form = AuditFilterForm(request.GET or None)
    filters = form.cleaned_data if form.is_valid() else {}
    events = selectors.audit_events(project=membership.project, **filters)
    page = CappedPaginator(events, AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "console/audit.html",
        {"membership": membership, "form": form, "page": page, "query": query.urlencode()},
    )


USAGE_PAGE_SIZE = 50


@login_required
@require_GET
def usage_log(request: AuthedRequest) -> HttpResponse:
    """The current project's gateway calls, newest first: every call for its admins, a member's own
    calls for a member; operators (who call no models) get 403."""
    membership = require_current_membership(request)
    if membership.role == Role.OPERATOR:
        raise PermissionDenied("Operators call no models, so they have no usage log.")
    form = UsageFilterForm(request.GET or None)
    filters = form.cleaned_data if form.is_valid() else {}
    own = None if membership.role == Role.ADMIN else request.user
    records = chat_selectors.usage_records(project=membership.project, user=own, **filters)
    page = CappedPaginator(records, USAGE_PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "console/usage.html",
        {"membership": membership, "form": form, "page": page, "query": query.urlencode(), "own_only": own is not None},
    )


@login_required
@require_GET
def operations(request: AuthedRequest) -> HttpResponse:
    """The operations dashboard of the current project, for its admins: calls, tokens, errors and
    latency per model and day, top keys and users, quotas, forecast jobs (docs/operations.md)."""
    membership = require_current_membership(request)
    if membership.role != Role.ADMIN:
        raise PermissionDenied(
            "The operations dashboard is for the project's admins."
            + (" Your own calls are in the usage log." if membership.role == Role.MEMBER else "")
        )
    form = DashboardRangeForm(request.GET or None)
    since, until = form.days()
    project = membership.project
    usage = chat_selectors.usage_dashboard(project=project, since=since, until=until)
    quotas = chat_selectors.quota_use(project=project)
    jobs = forecast_selectors.job_stats(project=project, since=day_start(since), before=day_start(until, after=True))
    return render(
        request,
        "console/operations.html",
        {
            "membership": membership,
            "form": form,
            "since": since,
            "until": until,
            "usage": usage,
            "quotas": quotas,
            "jobs": jobs,
            "chart_data": selectors.dashboard_chart_data(usage=usage, quotas=quotas, jobs=jobs),
            "export_query": urlencode({"since": since.isoformat(), "until": until.isoformat()}),
            "ranges": DashboardRangeForm.quick_ranges(),
            "time_zone": settings.TIME_ZONE,
        },
    )


@login_required
@require_GET
def usage_export(request: AuthedRequest) -> HttpResponse | StreamingHttpResponse:
    """The usage log's records as CSV, with the same filters and the same reach (every call for an
    admin, a member's own for a member, nothing for an operator), streamed however many there are.
    One at a time per user (console.throttle.ExportSlot): a second while the first is under way is a
    429 with Retry-After, and writes no audit entry."""
    membership = require_current_membership(request)
    if membership.role == Role.OPERATOR:
        raise PermissionDenied("Operators call no models, so they have no usage records.")
    form = UsageFilterForm(request.GET)
    if not form.is_valid():
        problems = "; ".join(
            " ".join(str(e) for e in errors) if name == "__all__" else f"{name}: {' '.join(str(e) for e in errors)}"
            for name, errors in form.errors.items()
        )
        return _export_refused(request, f"The filters are not valid: {problems}", status=400)
    own = None if membership.role == Role.ADMIN else request.user
    records = chat_selectors.usage_records(project=membership.project, user=own, **form.cleaned_data)
    try:
        slot = ExportSlot.take(user_id=request.user.pk)
    except ExportBusy as exc:
        busy = _export_refused(request, str(exc), status=429)
        busy["Retry-After"] = str(exc.retry_after)
        return busy
    try:
        services.usage_export_record(membership=membership, user=request.user, filters=form.cleaned_data)
    except BaseException:
        slot.release()
        raise
    pieces = slot.hold(chat_selectors.usage_csv(records=records))
    # Under ASGI a synchronous iterator would be read whole before the first byte went out.
    content = chat_selectors.ausage_csv(pieces=pieces) if isinstance(request, ASGIRequest) else pieces
    response = StreamingHttpResponse(content, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="usage-{membership.project.pk}.csv"'
    return response


def _export_refused(request: HttpRequest, message: str, *, status: int) -> HttpResponse:
    """The reason an export did not start: a console page with a way back to the usage log, filters
    kept, for a browser (it asks for text/html by name); the sentence alone for a script or curl."""
    if "text/html" not in request.headers.get("Accept", ""):
        return HttpResponse(message, status=status, content_type="text/plain")
    back = reverse("console:usage") + (f"?{request.GET.urlencode()}" if request.GET else "")
    return render(request, "console/export_refused.html", {"message": message, "back": back}, status=status)


@require_GET
@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus's scrape (console.metrics): 404 when METRICS_ENABLED is false; with METRICS_TOKEN,
    401 without that bearer token; without one, 403 to any client that is not the machine itself."""
    if not settings.METRICS_ENABLED:
        raise Http404("Metrics are turned off (METRICS_ENABLED=false).")
    if settings.METRICS_TOKEN:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not crypto.constant_time_equals(token.strip(), settings.METRICS_TOKEN):
            response = HttpResponse(
                "A bearer token is required (METRICS_TOKEN).\n", status=401, content_type="text/plain"
            )
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    elif not metrics.is_loopback(request_client_ip(request)):
        return HttpResponse(
            "Metrics are served to this machine only; set METRICS_TOKEN to scrape from elsewhere.\n",
            status=403,
            content_type="text/plain",
        )
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return HttpResponse(generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST)


@require_GET
@never_cache
async def healthz(request: HttpRequest) -> JsonResponse:
    deep = request.GET.get("deep") in {"1", "true", "yes"}
    client_ip = request_client_ip(request)
    # The session is read only when the caller is not the machine itself.
    if deep and not health.deep_allowed(client_ip=client_ip, user=None):
        deep = health.deep_allowed(client_ip=client_ip, user=await request.auser())
    report = await health.check(deep=deep)
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)
