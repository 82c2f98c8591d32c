from __future__ import annotations

import os
import sys
from typing import Any

from django.core.management.base import BaseCommand

from models_registry.local_llm import catalog
from models_registry.local_llm.config import LocalLlmConfig


class Command(BaseCommand):
    help = (
        "Put the bundled GGUF models into DATA_DIR/models, then run the local model server "
        "(OpenAI API on LOCAL_LLM_HOST:LOCAL_LLM_PORT, default 127.0.0.1:8001) under daphne."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--prepare-only", action="store_true", help="Prepare the model files and exit.")

    def handle(self, *args: Any, **options: Any) -> None:
        config = LocalLlmConfig.load()
        # Assembling gemma takes a few seconds once; doing it here, before daphne starts, keeps the
        # port closed until the server can answer (asgi.py repeats it, as a cheap size check).
        for path in catalog.prepare(config.models_dir):
            self.stdout.write(f"model file {path}")
        if options["prepare_only"]:
            return
        self.stdout.write(f"local model server on http://{config.host}:{config.port}/v1")
        sys.stdout.flush()
        argv = [
            sys.executable,
            "-m",
            "daphne",
            "--bind",
            config.host,
            "--port",
            str(config.port),
            "models_registry.local_llm.asgi:application",
        ]
        # exec, not a child: the process manager's signals reach daphne directly.
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
        os.execv(sys.executable, argv)
