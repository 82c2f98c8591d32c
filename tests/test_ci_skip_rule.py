"""Under CI=true a test module skipped at import (an optional dependency missing) fails the run; outside CI it
is still a skip. Run in a child pytest over a module of its own, whose conftest takes the rule from this suite's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

MODULE = """
import pytest

pytest.importorskip("no_such_optional_dependency_for_this_test")


def test_never_runs() -> None:
    pass
"""


def _run(tmp_path: Path, *, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_optional.py").write_text(MODULE)
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_make_collect_report  # noqa: F401\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(DJANGO_SETTINGS_MODULE="console.settings", PYTHONPATH=str(ROOT))
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            str(ROOT / "pyproject.toml"),
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("ci", ["true", None])
def test_a_missing_optional_dependency_fails_only_under_ci(tmp_path: Path, ci: str | None) -> None:
    result = _run(tmp_path, ci=ci)
    if ci == "true":
        assert result.returncode != 0, result.stdout
        assert "fails rather than skips" in result.stdout
    else:
        # 5: no test ran; the module was skipped, not failed.
        assert result.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, result.stdout + result.stderr
        assert "1 skipped" in result.stdout
