"""The house's rules, read from the code: every import of ours (top of a module, inside a function or under
TYPE_CHECKING) is an edge; no circle among modules, no import across the layers of DEVELOPERS.md (core and
storage import nothing of ours, indexer and search_api never each other), no room importing what its
`__init__.py` docstring says it must not, and no package with more than 12 modules."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "storage", "indexer", "search_api")
MAX_MODULES = 12

# what a top-level package may import of ours
LAYERS = {"core": {"core"}, "storage": {"storage"}, "indexer": {"core", "storage", "indexer"},
          "search_api": {"core", "storage", "search_api"}}
# room -> what nothing inside it may import (each room's __init__.py says the same in words)
FORBIDDEN = {
    "core.imaging": ("core.model", "core.maps", "core.sources", "core.reports", "core.settings", "core.deid"),
    "core.model": ("core.maps", "core.sources", "core.reports", "core.settings"),
    "core.maps": ("core.imaging", "core.sources", "core.reports", "core.settings"),
    "core.sources": ("core.imaging", "core.model", "core.maps", "core.reports", "core.settings"),
    "core.reports": ("core.imaging", "core.model", "core.maps", "core.sources", "core.settings"),
    "storage.vectors": ("storage.store", "storage.opening", "storage.verify", "storage.probe_cache",
                        "storage.exact_scan", "storage.access", "storage.reports"),
    "storage.sql": ("storage.vectors", "storage.store", "storage.opening", "storage.verify", "storage.probe_cache",
                    "storage.exact_scan", "storage.access"),
    "storage.reports": ("storage.vectors", "storage.store", "storage.opening", "storage.verify",
                        "storage.probe_cache", "storage.exact_scan", "storage.access", "storage.sql.repository"),
    "indexer.pipeline": ("indexer.engines", "indexer.cli", "indexer.build", "indexer.evaluation", "indexer.probes"),
    "indexer.engines": ("indexer.cli", "indexer.build", "indexer.evaluation", "indexer.probes"),
    "indexer.probes": ("indexer.cli", "indexer.build", "indexer.evaluation", "indexer.pipeline", "indexer.engines"),
    "indexer.evaluation": ("indexer.cli", "indexer.build", "indexer.pipeline", "indexer.engines"),
    "search_api.security": ("search_api.routes", "search_api.services", "search_api.schemas", "search_api.app"),
    "search_api.services": ("search_api.routes", "search_api.schemas", "search_api.security", "search_api.app",
                            "search_api.cli"),
    "search_api.schemas": ("search_api.routes", "search_api.services", "search_api.security", "search_api.app"),
    "search_api.routes": ("search_api.app", "search_api.cli"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" not in path.parts:
                found[module_name(path)] = path
    return found


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module of ours an imported name is (a module, or a name inside one), or None."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


@cache
def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        targets: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
            else:
                continue
            for candidate in candidates:
                target = resolve(candidate, known)
                if target and target != name and not (isinstance(node, ast.ImportFrom) and target == package
                                                       and f"{package}.{candidate.rpartition('.')[2]}" in known):
                    targets.add(target)
        edges[name] = targets
    return edges


def test_the_graph_sees_the_imports():
    edges = graph()
    assert len(edges) > 100
    assert "storage.vectors.index" in edges["storage.store"]
    assert "search_api.services.search" in edges["search_api.routes.search"]


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                circles.append([*trail[trail.index(target):], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_no_import_across_the_layers():
    wrong = [f"{name} imports {target}" for name, targets in graph().items() for target in targets
             if target.split(".")[0] not in LAYERS[name.split(".")[0]]]
    assert not wrong, wrong


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_a_room_imports_only_what_it_may(room):
    wrong = [f"{name} imports {target}" for name, targets in graph().items()
             if name == room or name.startswith(room + ".")
             for target in targets for banned in FORBIDDEN[room]
             if target == banned or target.startswith(banned + ".")]
    assert not wrong, wrong
    docstring = ast.get_docstring(ast.parse(modules()[room].read_text())) or ""
    assert "never" in docstring, f"{room}/__init__.py must say what the room must not import"


def test_every_package_says_what_it_is_for_and_stays_small():
    for name, path in modules().items():
        if path.name != "__init__.py":
            continue
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no docstring"
        inside = [p for p in path.parent.glob("*.py") if p.name != "__init__.py"]
        assert len(inside) <= MAX_MODULES, f"{name} holds {len(inside)} modules (at most {MAX_MODULES})"


def test_the_tests_mirror_the_rooms():
    for folder in (ROOT / "tests").glob("*/*/"):
        if folder.is_dir() and folder.name not in ("fixtures", "__pycache__") and folder.parent.name in PACKAGES:
            room = ROOT / folder.parent.name / folder.name
            assert (room / "__init__.py").is_file(), f"{folder} mirrors no room of {folder.parent.name}"
