from __future__ import annotations

from django.urls import URLPattern, URLResolver

app_name = "models_registry"

urlpatterns: list[URLPattern | URLResolver] = []
