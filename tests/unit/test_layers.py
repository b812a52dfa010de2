"""The import rule, checked on the source (ast), not by importing anything.

1. The pure core (events, the command schema, the decider, names/IPAM/validation, errors,
   keys, and the pure projections) imports no infrastructure, no clock and no randomness:
   not directly, and not through any project module it imports.
2. Nothing outside `workers/` imports `workers` (the engine names jobs by dotted strings).
   Tests and bench/ are exempt: they exercise and clean up the host side directly.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "commands", "events", "workers", "projections")
FORBIDDEN = frozenset({"redis", "rq", "pyroute2", "time", "uuid", "logging", "random", "socket",
                       "os", "subprocess", "workers", "importlib"})
ENGINE_PURE = ("state", "decide", "evolve", "decider", "react", "names", "ipam", "validate",
               "errors", "keys")
PROJECTIONS_PURE = ("ps", "inspect", "feed")


def pure_modules() -> list[str]:
    mods = [f"events.{p.stem}" for p in sorted((ROOT / "events").glob("*.py"))]
    mods.append("commands.schema")
    mods += [f"engine.{name}" for name in ENGINE_PURE]
    mods += [f"projections.{name}" for name in PROJECTIONS_PURE
             if (ROOT / "projections" / f"{name}.py").exists()]
    return mods


def path_of(module: str) -> Path | None:
    """Return the file of a project module, or None when it is not ours."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


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
            # `from engine import names` imports the module engine.names
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


@pytest.mark.parametrize("module", pure_modules())
def test_pure_core_imports_no_infrastructure(module: str) -> None:
    bad = {f"{where} imports {name}" for where, names in closure(module).items()
           for name in names if forbidden(name)}
    assert not bad, sorted(bad)


def project_files_outside_workers() -> list[Path]:
    files = sorted(ROOT.glob("*.py"))
    for package in PACKAGES:
        if package not in ("workers", "api"):  # api: a host daemon, like dockerd
            files += sorted((ROOT / package).rglob("*.py"))
    return files


@pytest.mark.parametrize("path", project_files_outside_workers(),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_outside_workers_imports_workers(path: Path) -> None:
    bad = [name for name in imports_of(module_of(path)) if name.split(".")[0] == "workers"]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}; name jobs by dotted strings"


def test_the_rule_sees_what_it_should() -> None:
    # Guard the checker itself: it resolves `from x import y` submodules and follows them.
    assert "engine.names" in imports_of("engine.decide")
    assert "engine.errors" in closure("engine.decide")
    assert forbidden("redis.client") and forbidden("os") and not forbidden("osmium")
    assert len(pure_modules()) >= 16
