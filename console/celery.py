from __future__ import annotations

import os
from typing import Any

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("console")


@app.on_configure.connect
def _prepare_data_dir(**kwargs: Any) -> None:
    # Celery loads its configuration lazily, the first time anything reads it; `on_configure` fires
    # just before, so a `celery worker` process prepares DATA_DIR before the Django settings (which
    # need the secret key there) are imported. Processes that did it already repeat a few mkdirs.
    # Imported here: `python -m console.datadir` imports this module first (through `console`), and
    # would otherwise run as a second copy of a module already imported.
    from console.datadir import prepare_data_dir

    prepare_data_dir()


app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
