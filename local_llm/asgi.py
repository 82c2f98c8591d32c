"""The model server as an ASGI application:

    .venv/bin/daphne -b 127.0.0.1 -p 8001 local_llm.asgi:application

(`python -m local_llm` runs exactly this.) Django is used for its settings only (DATA_DIR and the
LOCAL_LLM_* knobs) and its logging configuration; no app is loaded and no database is opened.
"""

from __future__ import annotations

import os

from console.datadir import prepare_data_dir

prepare_data_dir()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

from django.conf import settings  # noqa: E402
from django.utils.log import configure_logging  # noqa: E402

configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)

from local_llm.server import create_app  # noqa: E402  (reads settings)

application = create_app()
