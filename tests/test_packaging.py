"""A wheel, not only the editable checkout: the built-in search spaces and recipes travel inside it
and load from an installed copy that has no repository around it."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import se_nas

ROOT = Path(__file__).resolve().parent.parent


def _run(*args, **kw):
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{args[:3]} failed:\n{proc.stderr[-3000:]}"
    return proc


def _clean_copy(dest: Path) -> Path:
    """The repository's tracked files only: no build/ left over from an earlier build to hide a
    packaging mistake, and nothing written into the checkout."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], check=True, capture_output=True,
                           text=True).stdout.split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    return dest


@pytest.mark.slow
def test_wheel_carries_and_loads_the_builtin_spaces_and_recipes(tmp_path):
    src = _clean_copy(tmp_path / "src")
    _run("-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src), "-w", str(tmp_path / "dist"))
    (wheel,) = (tmp_path / "dist").glob("se_nas-*.whl")
    assert wheel.name.startswith(f"se_nas-{se_nas.__version__}-")  # one version: se_nas.__version__
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, packaged in (("search_spaces", "builtin_spaces"), ("trials", "builtin_recipes")):
        files = {f"se_nas/{packaged}/{p.name}" for p in (ROOT / folder).glob("*.yaml")}
        assert files and files <= names
    # only the recipes: studies that live under trials/<study>/ stay out of the wheel
    assert {n for n in names if n.startswith("se_nas/builtin_recipes/")} == {
        f"se_nas/builtin_recipes/{p.name}" for p in (ROOT / "trials").glob("*.yaml")}

    site = tmp_path / "site"
    _run("-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(site), str(wheel))
    code = ("import se_nas, se_nas.design.space as s, se_nas.design.recipe as r\n"
            "print(se_nas.__file__)\n"
            "print(','.join(s.list_spaces()), ','.join(r.builtin_recipes()), sep='\\n')\n"
            "print(s.load_space().name, s.load_space('tiny').backbone, r.load_recipe('digits').dataset)\n")
    out = _run("-c", code, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)}).stdout.splitlines()
    assert Path(out[0]).is_relative_to(site)  # the installed copy, not this checkout
    assert out[1].split(",") == sorted(p.stem for p in (ROOT / "search_spaces").glob("*.yaml"))
    assert out[2].split(",") == sorted(p.stem for p in (ROOT / "trials").glob("*.yaml"))
    assert out[3] == "resnet50-per-stage resnet18 digits"
