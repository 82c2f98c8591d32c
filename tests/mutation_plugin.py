"""Loaded by `make mutation` only (pyproject.toml, [tool.mutmut] pytest_add_cli_args).

mutmut hands pytest the tests that reach a mutant in no particular order and stops at the first
failure (-x): the direct tests of tests/chat/test_mutation_*.py go first, so a mutant they kill costs a
fraction of a second instead of the HTTP tests' minute.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: 0 if item.nodeid.startswith("tests/chat/test_mutation_") else 1)
