from __future__ import annotations

from typing import Any

from console import services
from console.management.commands._credentials import CredentialCommand


class Command(CredentialCommand):
    help = "Create an API key for a user and print it, alone, on stdout."

    def handle(self, *args: Any, **options: Any) -> None:
        user, project = self.resolve(options)
        _, raw = services.api_key_create(
            user=user, project=project, name=options["name"], expires_in_days=options["expires_in_days"]
        )
        self.stdout.write(raw)
