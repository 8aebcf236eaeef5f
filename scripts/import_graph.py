"""The package's import graph, its floors and its cycles: module-level, function-level and
``if TYPE_CHECKING:`` imports alike (an annotation-only import is still a tie between two modules).

    python scripts/import_graph.py                 # floors, edges going up, cycles; exit 1 if any
    python scripts/import_graph.py --dot graph.dot # also the drawing (Graphviz: dot -Tpng graph.dot)

The floors are the subpackages of ``se_nas/``, in the order of the flow: design (values, no torch) ->
nn (torch) -> record (the study) -> search (stages and executors) -> products (model file, export,
compare, report) -> cli. A module may import its own floor or lower ones, never a higher one. The
package's ``__init__`` (its version; public names it loads lazily) and ``errors`` (the one base class
of se-nas's errors) are the root below them all, and ``__main__`` stands on top.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "se_nas"
FLOORS = ["root", "design", "nn", "record", "search", "products", "cli", "top"]


def module_name(path: Path) -> str:
    """``se_nas/design/arch.py`` -> ``design.arch``; ``se_nas/__init__.py`` -> ``__init__``."""
    return path.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".")


def floor(module: str) -> str:
    """A subpackage's modules stand on its floor. The package's ``__init__`` (the version, and public
    names loaded lazily on first use) is the root every floor may read; ``__main__`` is on top."""
    head = module.split(".")[0]
    return head if head in FLOORS else {"__init__": "root", "errors": "root", "__main__": "top"}[head]


def _resolve(module: str, level: int, name: str | None) -> str:
    """The dotted module (relative to se_nas) that ``from <level dots><name>`` in ``module`` names."""
    parts = module.split(".")[:-1]  # the importing module's package
    base = parts[: len(parts) - (level - 1)] if level > 1 else parts
    return ".".join([*base, *([name] if name else [])])


def imports(path: Path) -> set[str]:
    """The se_nas modules (dotted, relative to se_nas) that ``path`` imports anywhere."""
    tree = ast.parse(path.read_text())
    me = module_name(path)
    known = {module_name(p) for p in PACKAGE.rglob("*.py")}
    out = set()

    def add(target: str):
        if target in known:
            out.add(target)
        elif f"{target}.__init__" in known:
            out.add(f"{target}.__init__")

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = _resolve(me, node.level, node.module)
            elif node.module and node.module.startswith("se_nas"):
                target = node.module.partition(".")[2]
            else:
                continue
            for a in node.names:  # from .pkg import module
                sub = f"{target}.{a.name}" if target else a.name
                if sub in known:
                    out.add(sub)
                    break
            else:
                add(target or "__init__")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("se_nas."):
                    add(a.name.partition(".")[2])
    out.discard(me)
    return out


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle's strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def upward(g: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports from a lower floor to a higher one. A subpackage's ``__init__`` may re-export its own
    modules, which is sideways."""
    level = {f: i for i, f in enumerate(FLOORS)}
    return [(a, b) for a, deps in g.items() for b in sorted(deps) if level[floor(b)] > level[floor(a)]]


def dot(g: dict[str, set[str]]) -> str:
    lines = ["digraph se_nas {", "  rankdir=BT; node [shape=box, fontsize=10];"]
    for i, f in enumerate(FLOORS):
        lines.append(f'  subgraph cluster_{i} {{ label="{f}"; ' + " ".join(f'"{m}";' for m in g if floor(m) == f) + " }")
    for a, deps in g.items():
        lines += [f'  "{a}" -> "{b}";' for b in sorted(deps)]
    return "\n".join(lines + ["}"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dot", help="write the drawing as a Graphviz file")
    args = ap.parse_args()
    g = graph()
    for f in FLOORS:
        mods = sorted(m.split(".", 1)[-1] for m in g if floor(m) == f)
        print(f"{f:<9} " + ", ".join(mods))
    print(f"{len(g)} modules, {sum(map(len, g.values()))} import edges")
    cyc, up = cycles(g), upward(g)
    for c in cyc:
        print("cycle: " + " <-> ".join(c))
    for a, b in up:
        print(f"upward import: {a} -> {b}")
    if args.dot:
        Path(args.dot).write_text(dot(g))
    print("no cycle, every import goes down or sideways" if not (cyc or up) else "")
    return 1 if cyc or up else 0


if __name__ == "__main__":
    sys.exit(main())
