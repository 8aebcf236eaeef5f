"""The package's floors import downward only, and no module imports itself round a cycle
(scripts/import_graph.py: module-level, function-level and annotation-only imports alike)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("import_graph", Path(__file__).parents[1] / "scripts" / "import_graph.py")
ig = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ig)


def test_the_detector_finds_cycles_and_upward_imports():
    g = {"design.arch": {"design.choices"}, "design.choices": {"search.stages"}, "search.stages": {"design.arch"},
         "design.cost": {"design.arch"}}
    assert ig.cycles(g) == [["design.arch", "design.choices", "search.stages"]]
    assert ("design.choices", "search.stages") in ig.upward(g) and ("design.cost", "design.arch") not in ig.upward(g)


def test_every_kind_of_import_counts_type_checking_ones_too(tmp_path, monkeypatch):
    pkg = tmp_path / "se_nas"
    for f in ["__init__", "nn/__init__", "nn/se", "nn/fused", "search/__init__", "search/stages", "cli/parser"]:
        (pkg / f"{f}.py").parent.mkdir(parents=True, exist_ok=True)
        (pkg / f"{f}.py").touch()
    (pkg / "nn" / "fused.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .se import X\n"
        "def f():\n    from ..search.stages import run\n    import se_nas.cli.parser\n    from . import se\n"
        "from .. import __version__\n")
    monkeypatch.setattr(ig, "PACKAGE", pkg)
    assert ig.imports(pkg / "nn" / "fused.py") == {"nn.se", "search.stages", "cli.parser", "__init__"}


def test_the_package_has_no_cycle_and_imports_only_downward():
    g = ig.graph()
    assert {ig.floor(m) for m in g} == set(ig.FLOORS), "a floor is empty or a module stands outside the floors"
    assert ig.cycles(g) == []
    assert ig.upward(g) == []


def test_the_design_floor_reads_without_torch():
    """design/ is values and pure functions: importing every module of it loads no torch."""
    mods = sorted(m for m in ig.graph() if ig.floor(m) == "design")
    code = "import sys\n" + "".join(f"import se_nas.{m.removesuffix('.__init__')}\n" for m in mods) + \
        "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
