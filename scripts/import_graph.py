"""The package's import graph, its layers and its cycles (module-level and function-level imports alike;
imports under ``if TYPE_CHECKING:`` are annotations only and are left out).

    python scripts/import_graph.py                 # layers, edges going up, cycles; exit 1 if any
    python scripts/import_graph.py --dot graph.dot # also the drawing (Graphviz: dot -Tpng graph.dot)

The layers follow the flow of the README: domain values and functions -> the study layer (the result
format, per-design results, storage, samplers) -> runs (the trial function, calibration and
confirmation, the search and its backends, progress) -> products (model file, export, compare,
report) -> the command line. A module may import its own layer or lower ones, never a higher one.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "se_nas"
LAYERS = {
    "domain": ["builtin", "choices", "arch", "inception", "geometry", "se", "fused", "build", "cost", "space", "budget",
               "recipe", "data", "train", "pareto", "earlystop", "latency", "supernet"],
    "study": ["study", "results", "storage", "samplers"],
    "runs": ["trial", "confirm", "progress", "optuna_backend", "ray_backend", "ray_watchdog", "ray_runs", "search", "oneshot"],
    "products": ["modelfile", "export", "compare", "comparison", "report_value", "report_plots", "report_text",
                 "report_html", "report"],
    "cli": ["commands", "cli", "__main__", "__init__"],
}
LEVEL = {m: i for i, mods in enumerate(LAYERS.values()) for m in mods}


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports(path: Path) -> set[str]:
    """The se_nas modules that ``path`` imports anywhere (module level or inside functions)."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    out = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                out.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x
                out.update(a.name for a in node.names)
            elif node.module and node.module.startswith("se_nas."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("se_nas."))
    out.discard(path.stem)
    return out


def graph() -> dict[str, set[str]]:
    return {p.stem: imports(p) for p in sorted(PACKAGE.glob("*.py"))}


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
    """Imports from a lower layer to a higher one (and modules missing from LAYERS, as ('?', name))."""
    bad = [("?", m) for m in g if m not in LEVEL]
    bad += [(a, b) for a, deps in g.items() for b in sorted(deps) if a in LEVEL and b in LEVEL and LEVEL[b] > LEVEL[a]]
    return bad


def dot(g: dict[str, set[str]]) -> str:
    lines = ["digraph se_nas {", "  rankdir=BT; node [shape=box, fontsize=10];"]
    for i, (layer, mods) in enumerate(LAYERS.items()):
        lines.append(f'  subgraph cluster_{i} {{ label="{layer}"; ' + " ".join(f'"{m}";' for m in mods if m in g) + " }")
    for a, deps in g.items():
        lines += [f'  "{a}" -> "{b}";' for b in sorted(deps)]
    return "\n".join(lines + ["}"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dot", help="write the drawing as a Graphviz file")
    args = ap.parse_args()
    g = graph()
    for layer, mods in LAYERS.items():
        print(f"{layer:<9} " + ", ".join(m for m in mods if m in g))
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
