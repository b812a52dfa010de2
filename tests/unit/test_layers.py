"""The layer rules, checked by folder on the source (ast), not by importing anything.

The folders, bottom to top (docs/decisions/0003-layout.md):

    events/                     pure facts and value types
    commands/                   pure schema, options, the one codec   (commands/client/: I/O)
    engine/core/                the pure decider
    engine/                     the single writer's shell (Redis), keys, errors
    projections/views/          pure read folds      projections/: their Redis runners
    workers/                    host side effects (storage/, net/, proc/) and rq entry points
    moor/                       every program and the wiring: CLI, up, API server, embedded Redis

1. A pure folder imports no infrastructure, clock or randomness: not directly, and not
   through any project module it imports.
2. engine/ imports neither projections/, workers/ nor moor/.
3. Nothing imports moor/ (the programs) but moor/ itself.
4. Only workers/ and moor/ import workers/ (the engine names jobs by dotted strings).
5. projections/ imports neither workers/ nor moor/.
Tests and bench/ are exempt: they exercise and clean up the host side directly.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("events", "commands", "engine", "projections", "workers", "moor")
PURE_FOLDERS = ("events", "commands", "engine/core", "projections/views")
IO_SUBFOLDERS = ("commands/client",)  # the control plane's Redis client sits beside its schema
FORBIDDEN = frozenset({"redis", "rq", "pyroute2", "aiohttp", "time", "uuid", "logging",
                       "random", "socket", "os", "subprocess", "importlib", "secrets",
                       "threading", "asyncio", "workers", "moor"})


def module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def files_under(folder: str, exclude: tuple[str, ...] = ()) -> list[Path]:
    return [p for p in sorted((ROOT / folder).rglob("*.py"))
            if not any(p.is_relative_to(ROOT / x) for x in exclude)]


def pure_modules() -> list[str]:
    return [module_of(p) for folder in PURE_FOLDERS for p in files_under(folder, IO_SUBFOLDERS)]


def path_of(module: str) -> Path | None:
    """Return the file of a project module, or None when it is not ours."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


@cache
def imports_of(module: str) -> tuple[str, ...]:
    """Return the absolute names a module imports, anywhere in its body (lazy ones too)."""
    path = path_of(module)
    assert path is not None, module
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            found.append(base)
            # `from engine.core import names` imports the module engine.core.names
            found += [f"{base}.{alias.name}" for alias in node.names
                      if path_of(f"{base}.{alias.name}") is not None]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "__import__"):
            found.append("__import__")
    return tuple(found)


def closure(module: str) -> dict[str, tuple[str, ...]]:
    """Return every project module reachable from `module`, with its imports."""
    seen: dict[str, tuple[str, ...]] = {}
    todo = [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen[current] = imports_of(current)
        todo += [name for name in seen[current] if path_of(name) is not None]
    return seen


def forbidden(name: str) -> bool:
    return name == "__import__" or name.split(".")[0] in FORBIDDEN


def top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("module", pure_modules())
def test_pure_folders_import_no_infrastructure(module: str) -> None:
    bad = {f"{where} imports {name}" for where, names in closure(module).items()
           for name in names if forbidden(name)}
    assert not bad, sorted(bad)


RULES = [  # (folder, packages it must not import, why)
    ("engine", ("projections", "workers", "moor"), "the engine is below every reader and host"),
    ("projections", ("workers", "moor"), "projections read the journal, never the host"),
    ("events", ("commands", "engine", "projections", "workers", "moor"), "events are the bottom"),
    ("commands", ("engine.core", "engine.reducer", "projections", "workers", "moor"),
     "commands sit below the decider"),
]
for _package in PACKAGES:
    if _package not in ("workers", "moor"):
        RULES.append((_package, ("workers",), "the engine names jobs by dotted strings"))
    if _package != "moor":
        RULES.append((_package, ("moor",), "nothing imports the programs"))


def rule_cases() -> list[tuple[Path, tuple[str, ...], str]]:
    return [(path, banned, why) for folder, banned, why in RULES for path in files_under(folder)]


@pytest.mark.parametrize("path,banned,why", rule_cases(),
                         ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else "")
def test_folder_rules(path: Path, banned: tuple[str, ...], why: str) -> None:
    bad = [name for name in imports_of(module_of(path))
           if any(name == b or name.startswith(b + ".") for b in banned)]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}: {why}"


def test_every_source_file_is_in_a_layer() -> None:
    # A new top-level package must be placed in a layer (and in this test) on purpose.
    found = {p.name for p in ROOT.iterdir()
             if p.is_dir() and (p / "__init__.py").exists() and p.name not in ("tests", "bench")}
    assert found == set(PACKAGES)


def test_the_rule_sees_what_it_should() -> None:
    # Guard the checker itself: it resolves `from x import y` submodules and follows them.
    assert "engine.core.names" in imports_of("engine.core.decide")
    assert "engine.errors" in closure("engine.core.decide")
    assert forbidden("redis.client") and forbidden("os") and not forbidden("osmium")
    assert "engine.core.decide" in pure_modules() and "commands.schema" in pure_modules()
    assert "commands.client.session" not in pure_modules()
    assert "projections.views.ps" in pure_modules() and "projections.stream" not in pure_modules()
    assert len(rule_cases()) > 100
