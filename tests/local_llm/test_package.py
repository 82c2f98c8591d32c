"""The model server is a runtime of its own: it reads settings but loads no Django app and no ORM."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, embedded_env

PACKAGE = ROOT / "local_llm"
# What the server may use of the console: its data folder, settings reader and ASGI helpers.
ALLOWED_CONSOLE = {"console.datadir", "console.lib.asgi"}
FORBIDDEN = ("django.db", "django.apps", "django.contrib", "models_registry", "chat", "forecasts")


def _imports(source: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_no_module_imports_the_orm_or_an_app() -> None:
    offenders = [
        f"{source.relative_to(ROOT)}: {name}"
        for source in sorted(PACKAGE.glob("*.py"))
        for name in _imports(source)
        if name.startswith(FORBIDDEN) or (name.startswith("console") and name not in ALLOWED_CONSOLE)
    ]
    assert not offenders, "\n".join(offenders)


def test_the_server_modules_load_without_django_apps(tmp_path: Path) -> None:
    code = (
        "import sys; from console.datadir import prepare_data_dir; prepare_data_dir(); "
        "import local_llm.bundled, local_llm.catalog, local_llm.config, local_llm.engine, local_llm.pool, "
        "local_llm.server, local_llm.wire; "
        "config = local_llm.config.LocalLlmConfig.load(); "
        "from django.apps import apps; "
        "print(apps.ready, 'django.db.models' in sys.modules, config.port, config.models_dir)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**embedded_env(tmp_path, LOCAL_LLM_PORT="8123"), "DJANGO_SETTINGS_MODULE": "console.settings"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "8123", str(tmp_path / "models")]
