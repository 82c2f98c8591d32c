from __future__ import annotations

from typing import Any

from console import services
from console.management.commands._credentials import CredentialCommand


class Command(CredentialCommand):
    help = "Create an AK/SK pair for a user and print `AK SK` on one line."

    def handle(self, *args: Any, **options: Any) -> None:
        user, project = self.resolve(options)
        key, secret = services.access_key_create(
            user=user, project=project, name=options["name"], expires_in_days=options["expires_in_days"]
        )
        self.stdout.write(f"{key.access_key_id} {secret}")
