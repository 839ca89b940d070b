"""No import cycle in ``src/archivist``: the modules' imports at module level (those that
run when a module is first imported, ``if TYPE_CHECKING:`` blocks included) form a graph
without cycles. An import inside a function runs later, when it is called, and is left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import archivist

SRC = Path(archivist.__file__).parent
PACKAGE = "archivist"


def _module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of a module's body that run at import: in the body itself
    and in its compound statements (if, try, with, class bodies), not in functions."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    stmts = [s for s in inner if isinstance(s, ast.stmt)]
                    handlers = [h for h in inner if isinstance(h, ast.ExceptHandler)]
                    yield from _module_level(stmts)
                    for handler in handlers:
                        yield from _module_level(handler.body)


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Each module's edges to the modules of ``modules`` that it imports at module level.
    ``from package import name`` is an edge to ``package.name`` when that is a module,
    else to ``package``; a relative import is resolved against the importing module."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in _module_level(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")
                    anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            edges.update(target for target in targets if target in modules and target != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as the modules along it (the first repeated at the end), or
    None when there is none: a depth-first walk that meets a module still on its path."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(module: str) -> list[str] | None:
        path.append(module)
        on_path.add(module)
        for target in sorted(graph[module]):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done:
                found = visit(target)
                if found is not None:
                    return found
        path.pop()
        on_path.discard(module)
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            found = visit(module)
            if found is not None:
                return found
    return None


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(SRC.rglob("*.py"))}


def test_no_module_of_archivist_imports_itself_through_others() -> None:
    modules = _modules()
    assert "archivist.data.commands" in modules  # the walk sees the source tree
    cycle = find_cycle(import_graph(modules))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_walk_finds_a_cycle_through_a_type_checking_import(tmp_path: Path) -> None:
    """The check itself: two modules importing each other, one only for type checking, and
    a third importing one of them inside a function (which is no edge)."""
    (tmp_path / "a.py").write_text("from archivist.b import B\n")
    (tmp_path / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from archivist import a\n"
    )
    (tmp_path / "c.py").write_text("def f():\n    from archivist import a\n")
    modules = {f"archivist.{n}": tmp_path / f"{n}.py" for n in ("a", "b", "c")}
    graph = import_graph(modules)
    assert graph == {
        "archivist.a": {"archivist.b"},
        "archivist.b": {"archivist.a"},
        "archivist.c": set(),
    }
    assert find_cycle(graph) == ["archivist.a", "archivist.b", "archivist.a"]
