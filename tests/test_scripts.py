"""The scripts under ``scripts/``: they share one helper module (``scripts/benchlib.py``: the load, CPU
and wall-time envelope and the rank benchmarks' recipe and designs) instead of rewriting it or
importing each other through ``sys.path``; they use se_nas's public names, but for the few listed
here that have no public equivalent yet; and every one answers ``--help``."""
import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parents[1] / "scripts"
HELPER = "benchlib"
# (script, se_nas module, private name) with no public equivalent in se_nas yet
PRIVATE_LEFT: set = set()


def scripts() -> list[Path]:
    return sorted(p for p in SCRIPTS.glob("*.py") if p.stem != HELPER)


def _dotted(node) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else None


def private_uses(path: Path) -> set[tuple[str, str, str]]:
    """The ``_``-prefixed names of se_nas that ``path`` imports or reads as an attribute of a se_nas module."""
    tree = ast.parse(path.read_text())
    modules, uses = {}, set()  # local name -> the se_nas module (or name) it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "se_nas":
            for a in node.names:
                if a.name.startswith("_"):
                    uses.add((path.name, node.module, a.name))
                modules[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "se_nas":
                    modules[a.asname or "se_nas"] = a.name if a.asname else "se_nas"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = _dotted(node.value)
            if base and base[0] in modules:
                uses.add((path.name, ".".join([modules[base[0]], *base[1:]]), node.attr))
    return uses


def test_scripts_share_the_helper_module_and_never_touch_sys_path():
    names = {p.stem for p in scripts()}
    for path in scripts():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _dotted(node) == ["sys", "path"]:
                pytest.fail(f"{path.name}:{node.lineno} uses sys.path: a script's own folder is on it already")
            imported = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in imported:
                assert name not in names, f"{path.name}:{node.lineno} imports the script {name}: share it through {HELPER}"
        # the envelope (load average, process CPU time) is benchlib's
        text = path.read_text()
        assert "os.getloadavg" not in text and "time.process_time()" not in text, path.name


def test_scripts_use_public_se_nas_names_but_the_listed_ones():
    found = set().union(*(private_uses(p) for p in scripts()))
    assert found == PRIVATE_LEFT


def test_the_private_name_check_sees_imports_and_module_attributes(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("import se_nas.search\nfrom se_nas.nn import profile as P\nfrom se_nas.search.confirm import _key\n"
                      "P._stats([1.0])\nse_nas.search.oneshot._x\nP.measure_interleaved\n")
    assert private_uses(script) == {("s.py", "se_nas.search.confirm", "_key"), ("s.py", "se_nas.nn.profile", "_stats"),
                                    ("s.py", "se_nas.search.oneshot", "_x")}


def test_benchlib_envelope_and_results_file(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import benchlib

    out, env = benchlib.timed(lambda: sum(i * i for i in range(200_000)))
    assert out == sum(i * i for i in range(200_000))
    assert set(env) == {"cpu_s", "wall_s", "load_start", "load_end"} and env["cpu_s"] > 0 and env["wall_s"] > 0
    # a resumed measurement adds to what an interrupted one stored and keeps its start load
    later = benchlib.Envelope({"wall_s": 100.0, "cpu_s": 50.0, "load_start": 7.5}).now()
    assert later["wall_s"] >= 100.0 and later["cpu_s"] >= 50.0 and later["load_start"] == 7.5
    m = benchlib.machine()
    assert m["cores"] == os.cpu_count() and m["cpu"] and "torch" in m and "optuna" in m
    # a results file cut mid-line by an interruption: that row is skipped, to be run again
    rows = tmp_path / "r.jsonl"
    rows.write_text('{"a": 1}\n\n{"a": 2}\n{"a": ')
    assert benchlib.read_jsonl(rows) == [{"a": 1}, {"a": 2}] and benchlib.read_jsonl(tmp_path / "none") == []


@pytest.mark.slow
def test_every_script_answers_help():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = {p.name: subprocess.Popen([sys.executable, str(p), "--help"], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env, cwd=p.parents[1])
             for p in scripts()}
    end = time.time() + 300
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=max(1, end - time.time()))
        assert proc.returncode == 0 and "usage:" in out, f"{name} --help: {err.strip()[-500:]}"


def test_the_transfer_table_pairs_seeds_within_and_across_recipes():
    # issue 21: a recipe's seed-vs-seed tau (each unordered pair once) beside the tau between one seed of
    # it and one of the reference (every pair), and r=16 minus plain paired by seed
    sys.path.insert(0, str(SCRIPTS))  # the test, not a script, puts the folder on the path
    try:
        import rank_fidelity as rf
        import zero_cost_baselines as zc
    finally:
        sys.path.remove(str(SCRIPTS))
    a = {"x": {0: 0.9, 1: 0.8}, "y": {0: 0.8, 1: 0.9}, "z": {0: 0.7, 1: 0.7}}
    assert rf.pair_taus(a, a, None, True) == pytest.approx([1 / 3])  # one pair of seeds: (0, 1)
    assert len(rf.pair_taus(a, {k: {5: v[0]} for k, v in a.items()}, None, False)) == 2  # seeds 0 and 1 x 5
    by = {rf.R16: {0: 0.93, 1: 0.95}, rf.PLAIN: {0: 0.95, 1: 0.96}}
    assert rf.paired(by, rf.R16, rf.PLAIN) == "-0.015 (sd 0.007, n=2)"
    # the stored per-design tables the zero-cost comparison ranks against
    sets = zc.stored_sets(SCRIPTS.parent / "docs" / "oneshot.md")
    assert {k: len(v) for k, v in sets.items()} == {"default set": 23, "held-out set": 24}
    assert sets["default set"]["ec21f0d190"] == (0.889, [0.958, 0.947, 0.972])
