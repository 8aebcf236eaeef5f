"""Files written before the subpackage redesign keep loading: a SQLite and a journal study, an unsigned
and a signed model file, and a latency table, all written by se-nas 0.1.0 (tests/fixtures/v0.1.0/README.md
says how). Each is read through the public surface a user has (the CLI, ``se_nas.load_model``,
``predict_latency``) and must give the answer it gave when it was written."""
import json
import shutil
from pathlib import Path

import pytest
import torch

import se_nas
from se_nas import cli

FIXTURES = Path(__file__).parent / "fixtures" / "v0.1.0"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.fixture
def copy(tmp_path):
    """A writable copy of the fixtures: reading a study must not be allowed to change the committed one."""
    shutil.copytree(FIXTURES, tmp_path / "f")
    return tmp_path / "f"


def _logits(model):
    torch.manual_seed(EXPECTED["input_seed"])
    x = torch.rand(2, 1, 8, 8) * 16
    with torch.no_grad():
        return model(model.se_nas.preprocess(x))


@pytest.mark.parametrize("name, key", [("unsigned", None), ("signed", "test.key")])
def test_model_files_of_0_1_0_load_and_give_the_same_outputs(copy, name, key):
    from se_nas.products.modelfile import read_key

    model = se_nas.load_model(copy / f"{name}.senas", key=read_key(copy / key) if key else None)
    assert model.se_nas.authenticated is (key is not None)
    assert model.se_nas.arch.id == "e471bd7c3b"
    torch.testing.assert_close(_logits(model), torch.tensor(EXPECTED[f"{name}_logits"]), atol=1e-4, rtol=0)


def test_a_latency_table_of_0_1_0_predicts_what_it_did(copy):
    from se_nas.design.latency import predict_latency

    arch = se_nas.Arch.from_json(EXPECTED["latency_arch"])
    assert predict_latency(arch, copy / "latency.json").ms == pytest.approx(EXPECTED["latency_ms"], rel=1e-9)


@pytest.mark.parametrize("study, where, chosen", [
    ("v01", ["--root", "trials"], "e471bd7c3b"),
    ("v01j", ["--storage", "journal:v01.journal"], "416b4f6c53"),
])
def test_studies_of_0_1_0_report_the_finding_they_had(copy, monkeypatch, capsys, study, where, chosen):
    monkeypatch.chdir(copy)
    assert cli.main(["report", study, *where, "--out", "out"]) == 0
    summary = (copy / "out" / study / "summary.md").read_text()
    # the finding they had, now naming the fidelity of its figures first ("On digits 8 px, ...: design ...")
    assert f"design {chosen}" in summary and "beats r=16 SE" in summary and "**Finding:** On digits" in summary
