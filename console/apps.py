from __future__ import annotations

from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "console"
    verbose_name = "Console"

    def ready(self) -> None:
        # The sign-in signal receivers (the audit log's logins) live with the services.
        from console import services  # noqa: F401
