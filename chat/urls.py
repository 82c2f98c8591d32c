from __future__ import annotations

from django.urls import path

from chat import views

app_name = "chat"

# Mounted at the site root: these are the paths existing client code already calls.
urlpatterns = [
    path("v1/chat/completions", views.openai_chat, name="openai_chat"),
    path("v1/completions", views.openai_completions, name="openai_completions"),
    path("v1/models", views.openai_models, name="openai_models"),
    path("v1/ai/<str:group>/v1/chat/completions", views.cloudbase_chat, name="cloudbase_chat"),
    path("v1/ai/<str:group>/v1/completions", views.cloudbase_completions, name="cloudbase_completions"),
    path("v1/ai/<str:group>/v1/models", views.cloudbase_models, name="cloudbase_models"),
    path("v1/<str:project_id>/deployments/<str:deployment_id>/chat/completions", views.pangu_chat, name="pangu_chat"),
    path("v1/<str:project_id>/deployments/<str:deployment_id>/text/completions", views.pangu_text, name="pangu_text"),
    path("v3/auth/tokens", views.iam_tokens, name="iam_tokens"),
    path("v3/projects", views.iam_projects, name="iam_projects"),
]
