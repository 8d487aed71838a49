"""No package of src/arclens imports another in a circle, lazily (inside a function) or not.

Every ``import``/``from ... import`` statement anywhere in a module counts, at any depth of the
code. A node of the graph is a package (``arclens/store/``) or a top-level module
(``arclens/errors.py``, ``arclens/cli.py``), or ``arclens`` itself for ``arclens/__init__.py``.
New packages are picked up as they appear.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "arclens"


def _node(module: str) -> str:
    """``arclens.store.writer`` -> ``store``; ``arclens`` -> ``arclens``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _module_of(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (SRC / rel).is_dir() or (SRC / rel).with_suffix(".py").is_file()


def _imports(path: Path) -> set[str]:
    """Every arclens module this file imports (relative imports resolved)."""
    module = _module_of(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            found.add(base)
            # `from arclens import store` imports a package; `from arclens import __version__` a name
            found |= {f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}")}
    return {m for m in found if m == "arclens" or m.startswith("arclens.")}


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        here = _node(_module_of(path))
        graph.setdefault(here, set())
        graph[here] |= {_node(target) for target in _imports(path)} - {here}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_detector_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_packages():
    graph = package_graph()
    assert {"store", "pipeline", "distributed", "model", "prompts", "data", "errors"} <= set(graph)
    assert graph["store"] and "errors" in graph["store"]  # the walk sees imports, lazy ones included
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)
    # The layering the team agreed on (common brief): base packages never import the jobs.
    for base in ("data", "prompts", "model", "store", "distributed"):
        assert not graph[base] & {"pipeline", "sae", "features"}, (base, graph[base])
