from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from console import services
from forecasts.catalogue import bucket_register, forecast_catalogue_load
from forecasts.samples import DEMO_BUCKET, DEMO_PATH, install_demo
from forecasts.storage import StorageError, default_store
from models_registry.catalogue import local_catalogue_load, pangu_catalogue_load

PASSWORD_FILE = "admin-password"


class Command(BaseCommand):
    help = "Create the admin user, the default project, the Pangu catalogue and the local models. Idempotent."

    def handle(self, *args: Any, **options: Any) -> None:
        result = services.console_bootstrap(
            admin_username=settings.CONSOLE_ADMIN_USERNAME, admin_password=settings.CONSOLE_ADMIN_PASSWORD
        )
        password_path = settings.DATA_DIR / PASSWORD_FILE
        if result.password and not settings.CONSOLE_ADMIN_PASSWORD:
            # A generated password is kept (0600) so every later `make run` can print the login again.
            fd = os.open(password_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(result.password + "\n")
        elif settings.CONSOLE_ADMIN_PASSWORD and password_path.exists():
            password_path.unlink()  # stale: the operator now chooses the password
        verb = "created" if result.created_user else "exists"
        self.stdout.write(f"admin user {result.username!r} {verb}; default project {result.project.id}")
        provider = pangu_catalogue_load(project=result.project)
        self.stdout.write(f"model group {provider.slug!r}: {provider.models.count()} models")
        local = local_catalogue_load(project=result.project, context_length=settings.LOCAL_LLM_CTX)
        self.stdout.write(f"model group {local.slug!r}: {local.models.count()} models")
        weather = forecast_catalogue_load(project=result.project)
        self.stdout.write(f"model group {weather.slug!r}: {weather.models.count()} forecast engine(s)")
        bucket_register(project=result.project, name=DEMO_BUCKET)
        # The ERA5 demo initial states, so a first forecast job has an input; an unreachable object store
        # is reported, not fatal: the console serves everything else without it.
        try:
            written = install_demo(default_store())
        except StorageError as exc:
            self.stderr.write(f"demo inputs not installed in bucket {DEMO_BUCKET!r}: {exc}")
        else:
            self.stdout.write(f"demo inputs: bucket {DEMO_BUCKET!r}, {DEMO_PATH}/ ({len(written)} file(s) written)")
