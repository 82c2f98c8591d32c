"""The model server as an ASGI application:

    .venv/bin/daphne -b 127.0.0.1 -p 8001 models_registry.local_llm.asgi:application

(`manage.py serve_local_llm` runs exactly this.) Django is set up only for settings: DATA_DIR and the
LOCAL_LLM_* knobs; the server uses no database.
"""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
django.setup()

from models_registry.local_llm.server import create_app  # noqa: E402  (needs settings)

application = create_app()
