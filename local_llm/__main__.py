"""`python -m local_llm`: the embedded model server's one entry point (the Procfile's `llm` process).

Puts the bundled GGUF models into LOCAL_LLM_MODELS_DIR (default DATA_DIR/models), then execs daphne on
`local_llm.asgi:application` at LOCAL_LLM_HOST:LOCAL_LLM_PORT (default 127.0.0.1:8001).
"""

from __future__ import annotations

import argparse
import os
import sys

from console.datadir import prepare_data_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m local_llm", description=__doc__)
    parser.add_argument("--prepare-only", action="store_true", help="prepare the model files and exit")
    args = parser.parse_args(argv)

    prepare_data_dir()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    from local_llm import catalog
    from local_llm.config import LocalLlmConfig

    config = LocalLlmConfig.load()
    # Assembling gemma takes a few seconds once; doing it here, before daphne starts, keeps the port
    # closed until the server can answer (asgi.py repeats it, as a cheap size check).
    for path in catalog.prepare(config.models_dir):
        print(f"model file {path}")
    if args.prepare_only:
        return
    print(f"local model server on http://{config.host}:{config.port}/v1", flush=True)
    argv_daphne = [
        sys.executable,
        "-m",
        "daphne",
        "--bind",
        config.host,
        "--port",
        str(config.port),
        "local_llm.asgi:application",
    ]
    # exec, not a child: the process manager's signals reach daphne directly.
    os.execv(sys.executable, argv_daphne)


if __name__ == "__main__":
    main()
