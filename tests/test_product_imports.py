"""Test equipment stays out of the product: no product module imports the tests or the upstream simulators."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Everything at the top level that is not a product package: test equipment, benchmarks, tooling.
NOT_PRODUCT = {"tests", "bench", "docs", "static", "templates", "var", "node_modules"}


def product_packages() -> list[Path]:
    return sorted(
        path
        for path in ROOT.iterdir()
        if path.is_dir()
        and not path.name.startswith(".")
        and path.name not in NOT_PRODUCT
        and (path / "__init__.py").exists()
    )


def imported_modules(source: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"), filename=str(source))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def is_test_equipment(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == "tests" or "simulators" in parts or "upstreams" in parts


def test_the_product_packages_are_found() -> None:
    names = {path.name for path in product_packages()}
    assert {"console", "chat", "models_registry", "forecasts"} <= names


def test_no_product_module_imports_test_equipment() -> None:
    offenders = [
        f"{source.relative_to(ROOT)}: {module}"
        for package in product_packages()
        for source in sorted(package.rglob("*.py"))
        for module in imported_modules(source)
        if is_test_equipment(module)
    ]
    assert not offenders, "product code imports test equipment:\n" + "\n".join(offenders)


def test_no_simulator_lives_in_a_product_package() -> None:
    found = [
        str(path.relative_to(ROOT))
        for package in product_packages()
        for path in package.rglob("*")
        if path.name in {"simulators", "simulators.py"}
    ]
    assert not found, found
