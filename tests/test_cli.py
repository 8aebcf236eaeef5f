"""The command line: one table of subcommands, quick to start, help that says each thing once."""
import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import se_nas
from se_nas import cli
from se_nas.cli.commands import COMMANDS

PACKAGE = Path(se_nas.__file__).parent
HEAVY = ("torch", "optuna", "ray", "pandas", "matplotlib", "scipy", "sklearn")


def _loaded_after(code: str) -> set:
    """Run ``code`` in a fresh interpreter; which heavy packages and se_nas modules it imported."""
    probe = (f"import sys\n{code}\n"
             "import json; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
             f"{HEAVY!r} and '.' not in m or m.startswith('se_nas'))))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(json.loads(proc.stdout.splitlines()[-1]))


def _run_main(*argv: str) -> str:
    return f"from se_nas.cli.parser import main\ntry:\n    main({list(argv)!r})\nexcept SystemExit:\n    pass"


def test_commands_never_import_the_cli():
    """The parser imports the table, never the other way round: no cycle, nothing registers on import."""
    tree = ast.parse((PACKAGE / "cli" / "commands.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert not {"parser", "se_nas.cli.parser"} & imported
    assert "se_nas.cli.parser" not in _loaded_after("import se_nas.cli.commands")


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["cost", "--help"], ["presets", "--help"]])
def test_listing_commands_and_their_help_import_no_library(argv):
    loaded = _loaded_after(_run_main(*argv))
    assert not loaded & set(HEAVY), f"se-nas {' '.join(argv)} imported {sorted(loaded & set(HEAVY))}"
    assert not {m for m in loaded if m.startswith("se_nas.")} - {"se_nas.cli", "se_nas.cli.parser", "se_nas.cli.commands", "se_nas.errors"}


@pytest.mark.parametrize("argv", [["cost", "resnet50"], ["presets"]])
def test_cost_and_presets_do_not_import_torch(argv):
    assert "torch" not in _loaded_after(_run_main(*argv))


@pytest.mark.slow
def test_importing_the_package_is_cheap_and_its_names_load_on_use():
    assert _loaded_after("import se_nas") == {"se_nas"}
    loaded = _loaded_after("from se_nas import *\nassert callable(load_model) and Arch and count_cost")
    assert {"se_nas.products.export", "se_nas.design.arch", "se_nas.design.cost", "torch"} <= loaded
    from se_nas.products.export import load_model

    assert se_nas.load_model is load_model
    assert set(se_nas.__all__) <= set(dir(se_nas))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        se_nas.nope  # noqa: B018


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"se-nas {se_nas.__version__}\n"
    for module in ("se_nas", "se_nas.cli.parser"):  # python -m runs the same command
        out = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True).stdout
        assert out == f"se-nas {se_nas.__version__}\n", module


def test_top_level_help_is_for_users(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "se-nas search --budget-gflops" in out
    for name, command in COMMANDS.items():  # every command listed, with its one line
        assert re.search(rf"^\s+{name}\s+{re.escape(command.help[:20])}", out, re.M), name


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_option_states_its_default_once(name, capsys):
    with pytest.raises(SystemExit):
        cli.main([name, "--help"])
    text = capsys.readouterr().out
    # one block per option: its first line starts with "  -", continuation lines are indented further
    blocks = [" ".join(b.split()) for b in re.split(r"\n(?=  -)", text[text.index("options:"):])]
    for block in blocks:
        assert block.count("default") <= 1, f"se-nas {name} --help: {block}"
    bare = argparse.ArgumentParser()
    COMMANDS[name].arguments(bare)
    for action in bare._actions:  # a real default is stated, by the help text or from default=
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            (block,) = [b for b in blocks if b.startswith(action.option_strings[0])]
            assert "default" in block, f"se-nas {name} --help: {block}"


def test_presets_prints_json_that_loads_back(capsys):
    from se_nas.design.arch import PRESETS, Arch

    assert cli.main(["presets", "se_resnet50"]) == 0
    assert Arch.from_json(capsys.readouterr().out) == PRESETS["se_resnet50"]


def test_cost_prints_the_cost_models_totals(capsys):
    from se_nas.design.arch import PRESETS
    from se_nas.design.cost import count_cost

    assert cli.main(["cost", "se_resnet50", "--image-size", "64", "--num-classes", "10"]) == 0
    total = capsys.readouterr().out.splitlines()[-1].split()
    c = count_cost(PRESETS["se_resnet50"], 64, 10)
    assert total[:3] == ["total", f"{c.mparams:.3f}", f"{c.gflops:.4f}"]


@pytest.mark.parametrize("argv, words", [
    (["presets", "se_resnet5"], ["presets", "'se_resnet5'", "se_resnet50"]),
    (["cost", "nothing.json"], ["cost", "nothing.json"]),
])
def test_bad_input_is_one_line_naming_the_value(capsys, argv, words):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"se-nas {argv[0]}: error: ")
    assert all(w in err for w in words), err


def test_bad_input_is_one_line_and_a_bug_is_a_traceback_that_says_so(monkeypatch, capsys):
    """Only se-nas's own errors (SeNasError) are bad input, told in one line with exit code 2; any
    other exception is a bug: its traceback, a line saying so, and exit code 70."""
    from se_nas.cli import commands
    from se_nas.design.arch import ArchError
    from se_nas.errors import SeNasError

    assert issubclass(ArchError, SeNasError) and issubclass(SeNasError, ValueError)

    def bad_input(args):
        raise ArchError("reduction ratio must be a positive integer, got r=0")

    def bug(args):
        raise ValueError("an internal invariant broke")  # a plain ValueError is no longer 'bad input'

    import dataclasses

    presets = commands.COMMANDS["presets"]
    monkeypatch.setitem(commands.COMMANDS, "presets", dataclasses.replace(presets, run=bad_input))
    assert cli.main(["presets"]) == 2
    err = capsys.readouterr().err
    assert err == "se-nas presets: error: reduction ratio must be a positive integer, got r=0\n"
    monkeypatch.setitem(commands.COMMANDS, "presets", dataclasses.replace(presets, run=bug))
    assert cli.main(["presets"]) == 70
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ValueError: an internal invariant broke" in err
    assert "internal error in se-nas" in err and "a bug, not a problem with your input" in err


# --- hostile names and values (issues 23 and 24) --------------------------------------------------------
@pytest.mark.parametrize("name, words", [
    ("", ["study name '' is not allowed"]),
    ("safe\u202etxt.exe", ["'safe\\u202etxt.exe'", "U+202E (RIGHT-TO-LEFT OVERRIDE)"]),
    ("a\u2066b", ["U+2066 (LEFT-TO-RIGHT ISOLATE)"]),
    ("a\u200bb", ["U+200B (ZERO WIDTH SPACE)"]),
    ("a\x1b[31mred", ["U+001B"]),
    ("a\u2028b", ["U+2028 (LINE SEPARATOR)"]),
    ("x" * 300, ["is 300 characters", "at most 100 characters"]),
])
def test_bad_study_names_are_one_line_and_create_nothing(tmp_path, capsys, name, words):
    """A name with a bidi override displays reversed, a 300-character one failed with 'File name too
    long', and `--study ""` silently used the default name."""
    root = tmp_path / "trials"
    assert cli.main(["search", "--space", "tiny", "--recipe", "tiny", "--study", name, "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("se-nas search: error: ") and all(w in err for w in words), err
    assert not root.exists()


@pytest.mark.slow
def test_an_empty_study_name_does_not_pick_the_latest_study(tmp_path, capsys):
    from se_nas.record.storage import open_study

    open_study("real", root=tmp_path, create=True)
    capsys.readouterr()  # Optuna's log line of creating it
    for command in (["report", "", "--out", str(tmp_path / "reports")], ["compare", ""],
                    ["export", "", "--best", "-o", str(tmp_path / "m.senas")]):
        assert cli.main([*command, "--root", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "study name '' is not allowed" in err, err
    assert not (tmp_path / "reports").exists() and not (tmp_path / "m.senas").exists()


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_a_seed_out_of_range_names_the_flag_and_creates_nothing(tmp_path, capsys, seed):
    root = tmp_path / "trials"
    with pytest.raises(SystemExit) as e:
        cli.main(["search", "--space", "tiny", "--recipe", "tiny", "--seed", seed, "--root", str(root)])
    assert e.value.code == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == f"se-nas search: error: argument --seed: expected an integer in 0..4294967295, got {seed}"
    assert not root.exists()


def test_an_empty_recipe_file_is_an_error_as_an_empty_space_file_is(tmp_path, capsys):
    (tmp_path / "empty.yaml").write_text("")
    assert cli.main(["recipes", str(tmp_path / "empty.yaml")]) == 2
    assert "empty.yaml: the file is empty" in capsys.readouterr().err


def test_cost_bounds_the_image_size_and_keeps_its_columns_apart(capsys):
    with pytest.raises(SystemExit):
        cli.main(["cost", "se_resnet50", "--image-size", "100000000"])
    assert "argument --image-size: expected an integer in 1..4096, got 100000000" in capsys.readouterr().err
    assert cli.main(["cost", "senet154", "--image-size", "4096"]) == 0  # the largest preset at the largest size
    rows = capsys.readouterr().out.splitlines()
    stages = [r for r in rows if r.split()[0].isdigit() and len(r.split()[0]) == 1]
    assert stages and all(len(r.split()) == 6 for r in stages), rows
    assert len(rows[-1].split()) == 5 and len(rows[-2].split()) == 3, rows


def test_a_file_where_a_folder_should_be_is_one_line_and_nothing_is_made(tmp_path, capsys):
    """``--root FILE`` gave a NotADirectoryError traceback."""
    afile = tmp_path / "afile"
    afile.write_text("")
    assert cli.main(["search", "--space", "tiny", "--recipe", "tiny", "--budget-gflops", "1.815", "--n-trials", "1",
                     "--study", "s", "--root", str(afile)]) == 2
    assert capsys.readouterr().err == f"se-nas search: error: {str(afile / 's')!r}: a part of it is a file, not a folder\n"
    assert [p.name for p in tmp_path.iterdir()] == ["afile"] and afile.read_text() == ""


def test_a_command_without_a_study_name_says_which_study_or_refuses_to_guess(tmp_path, capsys):
    # The most recently modified study was picked silently: after a second search, `compare` compared it. One
    # study: used, and said so on stderr. Several: none is more plausible, so refused, listing them; nothing written.
    import os

    from se_nas.record.storage import open_study

    open_study("main", root=tmp_path, create=True)
    capsys.readouterr()
    assert cli.main(["report", "--root", str(tmp_path), "--out", str(tmp_path / "reports")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"using study main (the only one under {str(tmp_path)!r})\n") and "no completed trial" in err
    open_study("mobilenet", root=tmp_path, create=True)
    for f in (tmp_path / "main").glob("study.db*"):
        os.utime(f, (1e9, 1e9))  # 2001: the older one
    capsys.readouterr()
    for command in (["report", "--out", str(tmp_path / "reports")], ["compare"],
                    ["export", "--best", "-o", str(tmp_path / "m.senas")]):
        assert cli.main([*command, "--root", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"2 studies under {str(tmp_path)!r}: mobilenet (modified " in err, err
        assert ", main (modified 2001-09-" in err and "give the study's name (e.g. `mobilenet`)" in err
    assert not (tmp_path / "reports").exists() and not (tmp_path / "m.senas").exists()


def test_the_help_and_the_readme_suggest_the_same_compare():
    from pathlib import Path

    from se_nas.cli.parser import DESCRIPTION

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "se-nas compare --seeds 3" not in DESCRIPTION and "\n  se-nas compare    " in DESCRIPTION
    assert "\nse-nas compare          " in readme


def test_search_quiet_prints_the_summary_only(tmp_path, capsys):
    # `search` had no --quiet: with it, no bars, header or per-trial lines; the summary is still printed.
    import dataclasses

    import yaml

    from se_nas.design.recipe import load_recipe
    from se_nas.record.storage import open_study
    from se_nas.search.progress import summarize

    rfile = tmp_path / "r.yaml"
    rfile.write_text(yaml.safe_dump(dataclasses.replace(load_recipe("tiny"), epochs=1, rungs=(),
                                                        max_train_samples=32).to_dict()))
    assert cli.main(["search", "--space", "tiny", "--recipe", str(rfile), "--n-trials", "2", "--calibration-seeds", "0",
                     "--confirm-top", "0", "--study", "q", "--root", str(tmp_path / "trials"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "[trial" not in out and "search 'q':" not in out
    want = summarize(open_study("q", root=tmp_path / "trials", read_only=True), str(tmp_path / "trials"), None)
    assert out == want + "\n" and "2 trials" in out, out
