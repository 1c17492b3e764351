#!/usr/bin/env python3
"""What a reviewer checks in ``src/cryopose``, read from the source with :mod:`ast` (nothing imported).

Prints three lists and exits 1 when any is non-empty (``--warn-only`` exits 0):

- source files over ``--max-lines`` lines (default 500, the house limit for a module);
- functions and methods over ``--max-function-lines`` lines (default 80), counted from the
  ``def`` line (decorators included) to the function's last line;
- import circles between modules (and, for information only, the circles that imports
  inside functions would close): the graph of module-level imports (``import a.b``,
  ``from .x import y``, ``from . import y`` where ``y`` is a module; imports inside functions
  or under ``if TYPE_CHECKING:`` are left out, since they run after both modules are loaded
  or never) and its strongly connected components of more than one module.

Usage::

    python3 scripts/review_checks.py [--root src/cryopose] [--warn-only]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "cryopose"


def module_name(path: Path, root: Path) -> str:
    """Dotted module name of ``path`` inside the package folder ``root`` (``cryopose.io.star``)."""
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def long_files(files: list[Path], max_lines: int) -> list[tuple[Path, int]]:
    """``(path, lines)`` of the files over ``max_lines`` lines, longest first."""
    out = [(p, len(p.read_text(encoding="utf-8").splitlines())) for p in files]
    return sorted([x for x in out if x[1] > max_lines], key=lambda x: -x[1])


def long_functions(files: list[Path], max_lines: int) -> list[tuple[Path, str, int, int]]:
    """``(path, qualified name, first line, lines)`` of the functions over ``max_lines`` lines."""
    found = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

        def visit(node, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                    n = child.end_lineno - first + 1
                    if n > max_lines:
                        found.append((path, prefix + child.name, first, n))
                    visit(child, prefix + child.name + ".")
                elif isinstance(child, ast.ClassDef):
                    visit(child, prefix + child.name + ".")

        visit(tree, "")
    return sorted(found, key=lambda x: -x[3])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(tree: ast.Module):
    """Import statements that run when the module is imported (module body, ``try``/``if``
    blocks other than ``if TYPE_CHECKING:``), not those inside functions or classes."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                stack += node.body
            stack += node.orelse
        elif isinstance(node, ast.Try):
            stack += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, (ast.With,)):
            stack += node.body


def _all_imports(tree: ast.Module):
    """Every import statement that can run: module level and inside functions and classes, but
    not under ``if TYPE_CHECKING:`` (those never run)."""
    skip = {id(s) for n in ast.walk(tree) if isinstance(n, ast.If) and _is_type_checking(n.test)
            for s in n.body}
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in skip]


def import_graph(files: list[Path], root: Path, *, deferred: bool = False) -> dict[str, set[str]]:
    """Module → the package's modules it imports at module level (``deferred``: also inside
    functions and classes; never under ``if TYPE_CHECKING:``)."""
    modules = {module_name(p, root): p for p in files}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = _all_imports(tree) if deferred else _module_level_imports(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                # ``from pkg import sub`` imports the module pkg.sub; ``from mod import name``, mod
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            for t in targets:
                # the deepest package module named by the import (a from-import of a name
                # that is not a module resolves to the module it comes from)
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return sorted(out)


def main(argv: list[str] | None = None) -> int:
    """Print the three lists; return 1 when any is non-empty (0 with ``--warn-only``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="package folder (default src/cryopose)")
    parser.add_argument("--max-lines", type=int, default=500)
    parser.add_argument("--max-function-lines", type=int, default=80)
    parser.add_argument("--warn-only", action="store_true", help="exit 0 even when something is listed")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    files = sorted(root.rglob("*.py"))
    base = root.parent
    big = long_files(files, args.max_lines)
    print(f"files over {args.max_lines} lines: {len(big)}")
    for p, n in big:
        print(f"  {n:5d}  {p.relative_to(base)}")
    funcs = long_functions(files, args.max_function_lines)
    print(f"functions over {args.max_function_lines} lines: {len(funcs)}")
    for p, name, line, n in funcs:
        print(f"  {n:5d}  {p.relative_to(base)}:{line}  {name}")
    cycles = import_cycles(import_graph(files, root))
    print(f"import circles (module-level imports): {len(cycles)}")
    for comp in cycles:
        print("  " + " <-> ".join(comp))
    deferred = import_cycles(import_graph(files, root, deferred=True))
    print(f"for information, circles when imports inside functions count too: {len(deferred)}")
    for comp in deferred:
        print("  " + " <-> ".join(comp))
    return 0 if args.warn_only or not (big or funcs or cycles) else 1


if __name__ == "__main__":
    sys.exit(main())
