"""The package's rooms (docs/architecture.md): each imports only the rooms below it, and no
module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "hpo"

#: What each room may not import (anywhere in its modules, functions included).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "hpo.spec": ("hpo.engine", "hpo.service", "hpo.results"),
    "hpo.engine": ("hpo.service", "hpo.results"),
    "hpo.service": ("hpo.results",),
}
#: The entry points that sit on top of every room: the CLI, ``hpo run`` (which writes the
#: results' CSV when the workers are done) and the Python API (``hpo``, ``hpo.api``).
ENTRY_POINTS = frozenset({"hpo", "hpo.api", "hpo.service.cli", "hpo.service.runner"})


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, module_level_only: bool) -> set[str]:
    """The hpo modules ``path`` imports; at module level only (what runs on import), or
    anywhere. Imports under ``if TYPE_CHECKING:`` never run."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("hpo"))
            elif isinstance(child, ast.ImportFrom) and (child.module or "").startswith("hpo"):
                found.add(child.module or "")
            inner = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if not (module_level_only and inner):
                visit(child, top and not inner)

    visit(tree, True)
    return found


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_room_imports_only_the_rooms_below_it(name: str) -> None:
    if name in ENTRY_POINTS:
        return
    for room, forbidden in FORBIDDEN.items():
        if name == room or name.startswith(room + "."):
            wrong = sorted(
                target
                for target in imports(MODULES[name], module_level_only=False)
                if target.startswith(forbidden)
            )
            assert not wrong, (
                f"{name} (room {room}) imports {', '.join(wrong)}: a room imports only the "
                "rooms below it (docs/architecture.md)"
            )


def test_no_module_imports_itself_back() -> None:
    graph = {
        name: {t for t in imports(path, module_level_only=True) if t in MODULES}
        for name, path in MODULES.items()
    }
    # A module imported also imports its packages' __init__ modules first.
    circles: list[list[str]] = []

    def walk(name: str, trail: list[str]) -> None:
        for target in sorted(graph[name]):
            if target in trail:
                circles.append([*trail[trail.index(target) :], target])
            elif target not in done:
                walk(target, [*trail, target])
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            walk(name, [name])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)
