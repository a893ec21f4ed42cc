"""A stage's code version: the hash of every project module its definition imports, transitively.

Derived, not declared: a module list kept by hand drifts, and a changed module that a stage uses but
does not list would let the stage reuse outputs the new code would not produce. The imports are read
from the source (function-level imports included, since stages import heavy libraries lazily), so
nothing is imported to compute it. Package `__init__` files count only where a module imports the
package by name: `kontext_core.stages` re-exports every stage, and importing one stage module does
not make it depend on the others.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import cache
from pathlib import Path

PROJECT_PACKAGES = ("kontext_core",)


def _in_project(module: str) -> bool:
    return module.split(".")[0] in PROJECT_PACKAGES


@cache
def _package_root(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # a top-level name: nothing is imported
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).parent


@cache
def module_file(module: str) -> Path | None:
    """The source file of a project module or package (None for a name that is an attribute).

    Resolved on the file system: `importlib.util.find_spec` would import every parent package.
    """
    root = _package_root(module.split(".")[0])
    if root is None:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def _imports_of(module: str, path: Path) -> frozenset[str]:
    # Cached like `import_closure`: the ten stages' closures share most modules, parsed once each.
    tree = ast.parse(path.read_bytes(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from pkg import name`: name may be a submodule.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(name for name in found if _in_project(name) and module_file(name) is not None)


@cache
def import_closure(module: str) -> tuple[str, ...]:
    """Every project module that importing `module` (and calling what it defines) can load."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_file(name)
        if path is None:
            raise RuntimeError(f"module {name} not found")
        seen.add(name)
        todo.extend(_imports_of(name, path) - seen)
    return tuple(sorted(seen))


def code_version(module: str) -> str:
    """sha256 (16 hex) over the sources of the import closure of `module`, names included."""
    digest = hashlib.sha256()
    for name in import_closure(module):
        path = module_file(name)
        assert path is not None
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def clear_caches() -> None:
    """For a process that edits sources and asks again (tests, long-lived workers after a deploy)."""
    _package_root.cache_clear()
    module_file.cache_clear()
    import_closure.cache_clear()
    _imports_of.cache_clear()
