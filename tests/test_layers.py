"""The layers docs/ARCHITECTURE.md draws, held against the code: which package may import which,
no cycles between packages, and SQL only in storage/.

Read from the source with `ast` (nothing is imported), so a forbidden import fails here even in a
function body that no other test runs.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "appliance"

# Each package and the packages of ours it may import (top-level modules count as packages).
ALLOWED: dict[str, set[str]] = {
    "oci": set(),
    "storage": {"oci"},
    "auth": {"oci", "storage"},
    "transport": set(),
    "bodies": set(),
    "config": {"control"},  # validation only: cron and semver grammars, which are pure rules
    "control": {"appliance", "oci", "storage", "auth", "transport"},
}
SQL_CALL = re.compile(r"\.(execute|executemany|executescript)\(")


def _package(path: Path) -> str:
    first = path.relative_to(PACKAGE).parts[0]
    return "appliance" if first == "__init__.py" else first.removesuffix(".py")


def _imports() -> dict[str, dict[str, list[str]]]:
    """package -> imported package -> the files that import it."""
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _package(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
                if node.module == "appliance":
                    modules = [f"appliance.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                parts = module.split(".")
                if parts[0] != "appliance":
                    continue
                target = parts[1] if len(parts) > 1 else "appliance"
                if target == "__version__":
                    target = "appliance"
                if target != source:
                    edges[source][target].append(str(path.relative_to(PACKAGE.parent)))
    return edges


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    imported = _imports().get(package, {})
    forbidden = {
        target: files for target, files in imported.items() if target not in ALLOWED[package]
    }
    assert forbidden == {}


def test_no_two_packages_import_each_other() -> None:
    edges = _imports()
    both_ways = sorted(
        (source, target)
        for source, targets in edges.items()
        for target in targets
        if source < target and source in edges.get(target, {})
    )
    assert both_ways == []


def test_sql_is_written_only_in_storage() -> None:
    outside = [
        f"{path.relative_to(PACKAGE.parent)}:{number}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] != "storage"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if SQL_CALL.search(line)
    ]
    assert outside == []


def test_http_handlers_live_only_in_registry() -> None:
    """aiohttp's server side (`web`) belongs to registry/; `serve` only runs the app."""
    serving = [
        str(path.relative_to(PACKAGE.parent))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] != "registry"
        and re.search(r"from aiohttp import web|aiohttp\.web\b", path.read_text())
    ]
    assert serving == ["appliance/cli/serve.py"]
