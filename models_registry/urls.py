from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from models_registry import views

app_name = "models_registry"

urlpatterns: list[URLPattern | URLResolver] = [
    path("", views.model_list, name="model_list"),
    path("<int:model_id>/", views.model_detail, name="model_detail"),
    path("<int:model_id>/toggle/", views.model_toggle, name="model_toggle"),
    path("<int:model_id>/delete/", views.model_delete, name="model_delete"),
    path("providers/", views.provider_list, name="provider_list"),
    path("providers/new/", views.provider_create, name="provider_create"),
    path("providers/<int:provider_id>/edit/", views.provider_edit, name="provider_edit"),
    path("providers/<int:provider_id>/test/", views.provider_test, name="provider_test"),
    path("providers/<int:provider_id>/delete/", views.provider_delete, name="provider_delete"),
    path("providers/<int:provider_id>/local-models/", views.provider_local_models, name="provider_local_models"),
    path("deployments/", views.deployment_list, name="deployment_list"),
    path("deployments/<str:deployment_id>/state/", views.deployment_state, name="deployment_state"),
    path("deployments/<str:deployment_id>/delete/", views.deployment_delete, name="deployment_delete"),
]
