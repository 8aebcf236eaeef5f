"""Exporting a study's design: what the file holds (proxy or deployment model, trained or not), its
input preprocessing, and what the CLI says it wrote. One real one-trial study is shared by the tests."""
import os
import pickle

import numpy as np
import optuna
import pytest
import torch

from se_nas import Arch, StageSE, cli, count_cost
from se_nas.design.budget import Budget, Deploy
from se_nas.nn.data import load_data, stratified_split
from se_nas.products.export import preprocess_for, role_of
from se_nas.products.modelfile import load_model, read_model
from se_nas.design.recipe import Recipe, load_recipe
from se_nas.record.storage import open_study
from se_nas.record.study import records
from se_nas.search.trial import record_outcome, run_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)
ARCH = Arch("resnet18", (None, StageSE(4, "max"), StageSE(8, gate="hardsigmoid"), None))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A study with one trained trial, as the search writes it."""
    root = tmp_path_factory.mktemp("w") / "trials"
    recipe, budget, deploy = load_recipe("tiny"), Budget(), Deploy()
    study = open_study("st", root=root, create=True)
    for k, v in (("recipe", recipe.to_dict()), ("budget", budget.to_dict()), ("deploy", deploy.to_dict())):
        study.set_user_attr(k, v)
    record_outcome(study, study.ask(), run_trial(ARCH, recipe, budget, deploy, seed=3), budget=budget)
    return root


def _export(root, *args):
    old = os.umask(0o022)
    try:
        return cli.main(["export", "st", "--root", str(root), "--quiet", *map(str, args)])
    finally:
        os.umask(old)


def _digits_val():
    from sklearn.datasets import load_digits

    d = load_digits()
    _, va = stratified_split(d.target, 0.2)
    return d.images[va], d.target[va]


@pytest.mark.slow
def test_export_best_says_what_it_wrote_and_the_file_works_on_raw_images(root, tmp_path, capsys):
    (tmp_path / "key").write_text("a key of at least sixteen bytes\n")
    out = tmp_path / "best.senas"
    assert _export(root, "--best", "-o", out, "--sign-key-file", tmp_path / "key") == 0
    said = capsys.readouterr().out
    rec = records(open_study("st", root=root))[0]
    mf = read_model(out, key=b"a key of at least sixteen bytes")
    assert mf.authenticated and (mf.role, mf.trained) == ("proxy", True)
    for text in (f"wrote {out} (signed)", "the design chosen by study 'st'", f"accuracy {rec.accuracy:.4f} over 1 seeds",
                 ARCH.id, ARCH.label, "the search's proxy model", "not the deployment model", "; trained",
                 f"validation accuracy {mf.meta['accuracy']:.4f}", "grayscale images, values 0..16"):
        assert text in said, (text, said)
    assert oct(out.stat().st_mode & 0o777) == oct(0o644)
    # the stored preprocessing is all a user needs: raw scikit-learn digits in, the file's accuracy out
    model = load_model(out)
    images, labels = _digits_val()
    with torch.no_grad():
        pred = model(model.se_nas.preprocess(images)).argmax(1).numpy()
    assert (pred == labels).mean() == pytest.approx(mf.meta["accuracy"], abs=1e-9)


@pytest.mark.slow
def test_export_deploy_writes_the_untrained_deployment_model(root, tmp_path, capsys):
    out = tmp_path / "deploy.senas"
    assert _export(root, "--deploy", "-o", out) == 0
    said = capsys.readouterr().out
    mf = read_model(out)
    assert (mf.role, mf.trained, mf.num_classes, mf.stem, mf.width) == ("deployment", False, 1000, "imagenet", 1.0)
    assert mf.preprocess == preprocess_for(load_recipe("imagenet"))  # what `se-nas train --recipe imagenet` stores
    params = sum(v.numel() for k, v in load_model(out).named_parameters())
    assert params == count_cost(ARCH).params == round(records(open_study("st", root=root))[0].mparams * 1e6)
    for text in ("the deployment-size model the budget was checked on", "UNTRAINED", "1000 classes",
                 "shorter side resized to 256, centre 224x224 crop"):
        assert text in said, (text, said)
    assert "se-nas train st:0 --recipe imagenet" in mf.meta["note"]
    # it said UNTRAINED, then "this file is its run with seed 1000": an untrained file is no run
    assert "is its run with seed" not in said and "initial weights only (seed " in said and "never trained" in said


@pytest.mark.slow
def test_export_onnx_names_both_files_and_refuses_to_overwrite_the_model_file(root, tmp_path, capsys):
    out = tmp_path / "best.onnx"
    assert _export(root, "--format", "onnx", "-o", out) == 0
    said = capsys.readouterr().out
    assert f"wrote {tmp_path / 'best.safetensors'}:" in said and f"wrote {out}: the same model as onnx (input 'images' N x 3 x 8 x 8" in said
    assert out.stat().st_size > 0
    assert _export(root, "--format", "onnx", "-o", tmp_path / "x.safetensors") == 2
    err = capsys.readouterr().err
    assert "with --format onnx it names the onnx file (e.g. x.onnx)" in err and len(err.splitlines()) == 1


def test_role_is_deployment_only_for_the_deployment_model_itself():
    assert role_of(load_recipe("imagenet"), 1000) == "deployment"
    assert role_of(load_recipe("imagenet"), 10) == "proxy"
    assert role_of(load_recipe("digits"), 10) == "proxy"
    assert role_of(load_recipe("tiny"), 1000, Deploy(8, 1000)) == "proxy"  # small stem, narrow


@pytest.mark.parametrize("size", [8, 20])
def test_digits_preprocessing_reproduces_the_validation_inputs(size):
    recipe = Recipe(dataset="digits", image_size=size)
    images, _ = _digits_val()
    val = load_data(recipe).val
    want, _ = val.batch(torch.arange(len(val)))  # the inputs validation sees (digits are resized per batch)
    torch.testing.assert_close(preprocess_for(recipe)(images), want, atol=1e-6, rtol=0)


def test_cifar_preprocessing_reproduces_the_validation_inputs(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                         b"labels": [i % 10 for i in range(20)]}, f)
    recipe = Recipe(dataset="cifar10", data_dir=str(tmp_path), image_size=24)
    val = load_data(recipe).val
    want, _ = val.batch(torch.arange(len(val)))
    torch.testing.assert_close(preprocess_for(recipe)(val.images), want, atol=1e-6, rtol=0)


def test_imagefolder_preprocessing_matches_the_validation_transform(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        for split in ("train", "val"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)).save(tmp_path / split / c / "0.png")
    recipe = Recipe(dataset="imagefolder", data_dir=str(tmp_path), image_size=16)
    val = load_data(recipe).val
    raw = np.asarray(Image.open(val.samples[0][0]).convert("RGB")).transpose(2, 0, 1)
    # PIL rounds its resized image to 8 bits, the tensor path does not: at most 1/255 before normalising
    torch.testing.assert_close(preprocess_for(recipe)(raw)[0], val[0][0], atol=1.01 / 255 / 0.224, rtol=0)


def test_an_output_that_is_a_folder_or_a_link_is_one_line_before_any_training(root, tmp_path, capsys):
    """``export -o DIR`` trained, then raised IsADirectoryError and left DIR.tmp behind."""
    before = sorted((root / "st").rglob("*"))
    out = tmp_path / "models"
    out.mkdir()
    assert _export(root, "-o", out) == 2
    assert capsys.readouterr().err.strip() == f"se-nas export: error: {str(out)!r}: it is a folder, not a file"
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["models"]
    (tmp_path / "afile").write_text("")
    assert _export(root, "-o", tmp_path / "afile" / "m.senas") == 2
    assert capsys.readouterr().err.strip() == \
        f"se-nas export: error: {str(tmp_path / 'afile')!r}: a part of it is a file, not a folder"
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "m.senas").symlink_to(victim)
    assert _export(root, "--deploy", "-o", tmp_path / "m.senas") == 2
    assert "m.senas' is a symbolic link" in capsys.readouterr().err and victim.read_text() == "keep me"
    assert sorted((root / "st").rglob("*")) == before  # nothing trained, no checkpoint


def test_a_study_on_a_read_only_file_system_can_be_exported(root, tmp_path, tmpfs, closed_study_copy, capsys):
    """Reading needs no write: export failed there with "unable to open database file"."""
    ro = tmpfs(tmp_path / "ro", size="8m", read_only=True,
               fill=lambda d: closed_study_copy(root / "st" / "study.db", d / "trials" / "st" / "study.db"))
    before = (ro / "trials" / "st" / "study.db").read_bytes()
    assert _export(ro / "trials", "--deploy", "-o", tmp_path / "d.senas") == 0, capsys.readouterr().err
    assert load_model(tmp_path / "d.senas").se_nas.arch == ARCH
    assert (ro / "trials" / "st" / "study.db").read_bytes() == before
