from __future__ import annotations

from django.contrib import admin

from models_registry.models import Deployment, LlmModel, Provider


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "kind", "project", "base_url", "enabled"]
    list_filter = ["kind", "enabled", "project"]
    search_fields = ["slug", "name"]
    # Secrets are set on the console's provider page, which encrypts them and never shows them.
    exclude = ["secrets_encrypted"]


@admin.register(LlmModel)
class LlmModelAdmin(admin.ModelAdmin):
    list_display = ["name", "provider", "category", "context_length", "enabled", "fine_tuned"]
    list_filter = ["provider", "category", "enabled"]
    search_fields = ["name", "display_name"]


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "model", "project", "context_length", "state"]
    list_filter = ["state", "project"]
