"""The settings: `.env.example` agrees with them, importing them creates nothing, and DATA_DIR is
prepared by the entry points."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from console import datadir
from console.lib.env import Env, env
from tests.conftest import ROOT, VENV_BIN, embedded_env

SETTINGS_SOURCES = (ROOT / "console" / "settings.py", ROOT / "console" / "datadir.py")
# Shell defaults in the Procfile: `${NAME:-default}`.
PROCFILE_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")


def _example() -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate((ROOT / ".env.example").read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f".env.example:{number} is not NAME=value: {line!r}"
        assert name not in values, f".env.example lists {name} twice"
        values[name] = value
    return values


def _names_read_in_source() -> set[str]:
    """Every `env.<type>("NAME", ...)` call in the settings' source, found without running it."""
    names: set[str] = set()
    for source in SETTINGS_SOURCES:
        for node in ast.walk(ast.parse(source.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "env"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names.add(node.args[0].value)
    return names


def _procfile_defaults() -> dict[str, str]:
    return dict(PROCFILE_DEFAULT.findall((ROOT / "Procfile").read_text()))


def test_settings_read_every_variable_unconditionally() -> None:
    # The settings were imported by pytest-django; `env.reads` saw every variable they read. A read
    # hidden behind a condition (a knob of the scaled runtime, say) would be missing from it.
    assert _names_read_in_source() == set(env.reads)


def test_env_example_lists_every_variable_the_settings_read() -> None:
    missing = sorted(set(env.reads) - set(_example()))
    assert not missing, f"read by the settings, missing from .env.example: {missing}"


def test_env_example_lists_nothing_unknown() -> None:
    # A variable only the Procfile reads (WORKER_NAME) is listed too, at the Procfile's default.
    unknown = sorted(set(_example()) - set(env.reads) - set(_procfile_defaults()))
    assert not unknown, f"in .env.example but read by nothing: {unknown}"


def _is_empty(default: Any) -> bool:
    return default is None or default == "" or default == []


def test_env_example_values_are_the_defaults() -> None:
    wrong = []
    for name, value in _example().items():
        read = env.reads.get(name)
        if read is None:
            continue
        if value == "":
            # Blank in the example: the setting derives its value (from other settings, the machine).
            ok = _is_empty(read.default)
        else:
            ok = env.parse_value(value, read.cast) == read.default
        if not ok:
            wrong.append(f"{name}: .env.example has {value!r}, the settings default {read.default!r}")
    assert not wrong, "\n".join(wrong)


def test_procfile_defaults_agree_with_env_example() -> None:
    example = _example()
    wrong = [
        f"{name}: Procfile {default!r}, .env.example {example.get(name)!r}"
        for name, default in _procfile_defaults().items()
        if example.get(name) != default
    ]
    assert not wrong, "\n".join(wrong)


def _env_without_secret_key(data_dir: Path, **extra: str) -> dict[str, str]:
    return {k: v for k, v in embedded_env(data_dir, **extra).items() if k != "SECRET_KEY"}


def _import_settings(data_dir: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """Import the settings bare, as pytest-django does: no entry point ran before."""
    code = (
        "import json; from django.conf import settings as s; "
        "print(json.dumps({'data_dir': str(s.DATA_DIR), 'static': str(s.STATIC_ROOT), 'key': s.SECRET_KEY}))"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**_env_without_secret_key(data_dir), **extra, "DJANGO_SETTINGS_MODULE": "console.settings"},
        capture_output=True,
        text=True,
    )


def test_importing_the_settings_creates_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"
    result = _import_settings(data_dir, SECRET_KEY="k" * 50)
    assert result.returncode == 0, result.stderr
    assert not data_dir.exists()


def test_unprepared_data_dir_without_secret_key_says_how_to_prepare_it(tmp_path: Path) -> None:
    result = _import_settings(tmp_path / "fresh")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "SECRET_KEY is not set" in result.stderr
    assert "python -m console.datadir" in result.stderr
    assert not (tmp_path / "fresh").exists()


def test_prepare_data_dir_creates_the_layout_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"
    run_env = _env_without_secret_key(data_dir)
    first = subprocess.run(
        [sys.executable, "-m", "console.datadir"], cwd=ROOT, env=run_env, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    assert Path(first.stdout.strip()) == data_dir
    layout = datadir.Layout(data_dir)
    assert all(folder.is_dir() for folder in layout.folders())
    key = layout.secret_key.read_text()
    assert len(key) >= datadir.SECRET_KEY_MIN_LENGTH and oct(layout.secret_key.stat().st_mode & 0o777) == "0o600"
    # Idempotent: the key is kept, and the settings now read it.
    subprocess.run([sys.executable, "-m", "console.datadir"], cwd=ROOT, env=run_env, check=True, capture_output=True)
    assert layout.secret_key.read_text() == key
    probe = _import_settings(data_dir)
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout)["key"] == key


def test_a_set_secret_key_generates_no_file(tmp_path: Path) -> None:
    run_env = embedded_env(tmp_path / "fresh", SECRET_KEY="s" * 50)
    subprocess.run([sys.executable, "-m", "console.datadir"], cwd=ROOT, env=run_env, check=True, capture_output=True)
    assert (tmp_path / "fresh" / "broker" / "control").is_dir()
    assert not (tmp_path / "fresh" / "secret_key").exists()


def test_relative_data_dir_is_taken_from_the_project_folder(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from console.datadir import data_dir; print(data_dir())"],
        cwd=tmp_path,
        env={**embedded_env(tmp_path), "DATA_DIR": "./var/somewhere", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == ROOT / "var" / "somewhere"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("a.example, b.example", ["a.example", "b.example"]), ("a.example,,", ["a.example"]), ("", [])],
)
def test_lists_are_trimmed(monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[str]) -> None:
    monkeypatch.setenv("CONSOLE_TEST_LIST", raw)
    assert Env().list("CONSOLE_TEST_LIST", default=[]) == expected


def test_the_celery_app_prepares_data_dir_before_reading_the_settings(tmp_path: Path) -> None:
    # `celery --app console worker` starts without manage.py: the app's on_configure hook prepares.
    data_dir = tmp_path / "fresh"
    result = subprocess.run(
        [str(VENV_BIN / "celery"), "--app", "console", "report"],
        cwd=ROOT,
        env=_env_without_secret_key(data_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (data_dir / "secret_key").is_file() and (data_dir / "broker" / "control").is_dir()
