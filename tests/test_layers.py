"""The package's layers import downward only, and no module imports itself round a cycle
(scripts/import_graph.py: module-level and function-level imports alike)."""
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("import_graph", Path(__file__).parents[1] / "scripts" / "import_graph.py")
ig = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ig)


def test_the_detector_finds_cycles_and_upward_imports():
    g = {"arch": {"choices"}, "choices": {"search"}, "search": {"arch"}, "cost": {"arch"}}
    assert ig.cycles(g) == [["arch", "choices", "search"]]
    assert ("choices", "search") in ig.upward(g) and ("cost", "arch") not in ig.upward(g)


def test_function_level_imports_count_and_type_checking_ones_do_not(tmp_path):
    p = tmp_path / "mod.py"
    p.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .se import X\n"
                 "def f():\n    from .search import run\n    import se_nas.cli\n")
    assert ig.imports(p) == {"search", "cli"}


def test_the_package_has_no_cycle_and_imports_only_downward():
    g = ig.graph()
    assert set(g) == set(ig.LEVEL), "a module is missing from scripts/import_graph.py's LAYERS"
    assert ig.cycles(g) == []
    assert ig.upward(g) == []
