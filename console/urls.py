from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from console import views
from models_registry.api import api as registry_api

console_patterns = [
    path("", views.dashboard, name="dashboard"),
    path("projects/", views.project_list, name="project_list"),
    path("projects/switch/", views.project_switch, name="project_switch"),
    path("projects/<str:project_id>/", views.project_detail, name="project_detail"),
    path("projects/<str:project_id>/members/<int:user_id>/remove/", views.member_remove, name="member_remove"),
    path("keys/", views.keys, name="keys"),
    path("audit/", views.audit_log, name="audit"),
    path("usage/", views.usage_log, name="usage"),
    path("usage/export.csv", views.usage_export, name="usage_export"),
    path("operations/", views.operations, name="operations"),
    path("keys/api/<int:key_id>/revoke/", views.api_key_revoke, name="api_key_revoke"),
    path("keys/access/<int:key_id>/revoke/", views.access_key_revoke, name="access_key_revoke"),
]

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("metrics", views.metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("accounts/login/", views.ThrottledLoginView.as_view(), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/registry/", registry_api.urls),
    path("models/", include("models_registry.urls")),
    path("playground/", include("chat.urls")),
    path("forecasts/", include("forecasts.urls")),
    path("", include((console_patterns, "console"))),
]
