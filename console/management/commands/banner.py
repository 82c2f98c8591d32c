from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from console.management.commands.bootstrap import PASSWORD_FILE


class Command(BaseCommand):
    help = "Print where the console listens and how to log in (used by `make run`)."

    def handle(self, *args: Any, **options: Any) -> None:
        host = settings.HOST
        shown_host = "127.0.0.1" if host in {"0.0.0.0", "::"} else host
        if ":" in shown_host:
            shown_host = f"[{shown_host}]"
        if settings.CONSOLE_ADMIN_PASSWORD:
            password = "(the value of CONSOLE_ADMIN_PASSWORD)"
        else:
            path = settings.DATA_DIR / PASSWORD_FILE
            password = path.read_text().strip() if path.exists() else "(unchanged; set CONSOLE_ADMIN_PASSWORD to reset)"
        lines = [
            "",
            "  LLM Console is starting",
            f"  Open      http://{shown_host}:{settings.PORT}/",
            f"  Log in    {settings.CONSOLE_ADMIN_USERNAME} / {password}",
            f"  Data in   {settings.DATA_DIR}",
            "  Stop with Ctrl-C",
            "",
        ]
        self.stdout.write("\n".join(lines))
