from __future__ import annotations

from django.contrib import admin

from console.forms import ThrottledAdminAuthenticationForm
from console.models import AccessKey, ApiKey, AuditEvent, Membership, Project

# The admin's own sign-in page checks passwords too: the same throttle (its error, with the admin's status).
admin.site.login_form = ThrottledAdminAuthenticationForm


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "id", "created_at"]
    search_fields = ["name", "id"]
    inlines = [MembershipInline]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "user", "project", "created_at", "expires_at", "revoked_at", "last_used_at"]
    list_filter = ["project"]
    # The hash is not a secret, but nothing here needs it; keys are created on the console page.
    exclude = ["hashed_key"]
    readonly_fields = ["prefix", "user", "project", "created_at", "last_used_at"]

    def has_add_permission(self, request: object) -> bool:
        return False


@admin.register(AccessKey)
class AccessKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "access_key_id", "user", "project", "created_at", "expires_at", "revoked_at"]
    list_filter = ["project"]
    exclude = ["secret_encrypted"]
    readonly_fields = ["access_key_id", "user", "project", "created_at", "last_used_at"]

    def has_add_permission(self, request: object) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "project", "actor_name", "action", "summary", "ip_address"]
    list_filter = ["action", "project"]
    search_fields = ["target_label", "action", "actor_name", "summary"]
    readonly_fields = [f.name for f in AuditEvent._meta.fields]

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: object, obj: object = None) -> bool:
        return False  # append-only: the model and the database refuse it anyway
