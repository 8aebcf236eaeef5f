"""Train, export from a study and compare, on a real study whose trials ran through run_trial.

One small study (resnet18 proxies on the digits data, a few seconds per run) is shared by the tests.
"""
import dataclasses
import json
import math

import optuna
import pytest
import yaml
from torch.utils.data import DataLoader

from se_nas import cli
from se_nas.design.arch import Arch, StageSE, baseline_arch, plain_arch
from se_nas.design.budget import Budget, Deploy
from se_nas.products.compare import compare, paired_test
from se_nas.search.confirm import CONFIRM_SEED
from se_nas.products.export import load_model, read_model, export_study, train_arch
from se_nas.design.recipe import load_recipe
from se_nas.products.report import build_report
from se_nas.record.storage import open_study
from se_nas.record.study import records
from se_nas.nn.train import evaluate
from se_nas.search.trial import record_outcome, run_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)
ARCHS = [
    Arch("resnet18", (None, StageSE(4, "max"), StageSE(8), None)),
    Arch("resnet18", (StageSE(2, gate="hardsigmoid"), None, None, StageSE(16, position="pre"))),
    Arch("resnet18", (StageSE(8, "avgmax", "tanh", "post"), StageSE(4), StageSE(2, "none"), StageSE(8))),
]


@pytest.fixture(scope="module")
def recipe():
    return dataclasses.replace(load_recipe("tiny"), width=0.25, epochs=3, rungs=())


@pytest.fixture(scope="module")
def world(tmp_path_factory, recipe):
    """A study of three trained trials, as the search would write it."""
    root = tmp_path_factory.mktemp("w")
    study = open_study("st", root=root / "trials", create=True)
    budget, deploy = Budget(), Deploy()
    for k, v in (("recipe", recipe.to_dict()), ("budget", budget.to_dict()), ("deploy", deploy.to_dict())):
        study.set_user_attr(k, v)
    for i, arch in enumerate(ARCHS):
        trial = study.ask()
        record_outcome(study, trial, run_trial(arch, recipe, budget, deploy, seed=10 + i), budget=budget)
    return root


@pytest.mark.slow
def test_export_reproduces_the_trial_and_the_file_holds_it(world, recipe):
    recs = records(open_study("st", root=world / "trials"))
    best = max((r for r in recs if r.status == "complete"), key=lambda r: r.accuracy)
    out = export_study("st", world / "best.safetensors", root=world / "trials")
    mf = read_model(out)
    assert mf.arch == best.arch and mf.meta["trial"] == best.number and mf.meta["study"] == "st"
    # retraining with the trial's seed and the study's recipe gives the trial's own numbers
    assert mf.meta["history"] == pytest.approx(list(best.history), abs=0)
    assert mf.meta["recipe"] == recipe.to_dict() and mf.meta["torch"] and mf.meta["se_nas"]
    # and the weights in the file really are that model: evaluate them independently
    from se_nas.nn.data import load_data

    data = load_data(recipe)
    model = load_model(out)
    acc = evaluate(model, DataLoader(data.val, batch_size=100), "cpu")
    assert acc == pytest.approx(mf.meta["accuracy"], abs=1e-9)


@pytest.mark.slow
def test_export_cli_formats_and_bad_trial(world, capsys):
    onnx_path = world / "t0.onnx"
    assert cli.main(["export", "st", "--root", str(world / "trials"), "--trial", "0", "-o", str(onnx_path),
                     "--format", "onnx", "--quiet"]) == 0
    assert onnx_path.stat().st_size > 0 and read_model(onnx_path.with_suffix(".safetensors")).meta["trial"] == 0
    assert cli.main(["export", "st", "--root", str(world / "trials"), "--trial", "7", "-o", str(world / "x")]) == 2
    assert "no trial 7 in this study" in capsys.readouterr().err
    assert cli.main(["export", "st", "--root", str(world / "trials"), "--max-gflops", "0.5", "-o", str(world / "x")]) == 2
    assert "trained to the end is within 0.5 GFLOPs; the cheapest has 1.8" in capsys.readouterr().err


@pytest.mark.slow
def test_train_cli_resumes_from_its_checkpoint(world, recipe, tmp_path):
    rfile = tmp_path / "r.yaml"
    rfile.write_text(yaml.safe_dump(recipe.to_dict()))
    arch_file = tmp_path / "a.json"
    ARCHS[2].save(arch_file)
    out = tmp_path / "m.safetensors"
    args = ["train", str(arch_file), "--recipe", str(rfile), "-o", str(out), "--checkpoint-dir", str(tmp_path / "ck"),
            "--quiet"]
    assert cli.main(args) == 0
    first = read_model(out).meta
    assert (tmp_path / "ck" / "m.ckpt").exists()
    assert cli.main(args) == 0  # finds the finished checkpoint: no new training, same run
    again = read_model(out).meta
    assert again["train_seconds"] == first["train_seconds"] and again["history"] == first["history"]
    # a trial reference works too, and its origin is recorded
    out2 = tmp_path / "t1.safetensors"
    assert cli.main(["train", "st:1", "--recipe", str(rfile), "-o", str(out2), "--root", str(world / "trials"),
                     "--quiet"]) == 0
    assert read_model(out2).arch == ARCHS[1] and read_model(out2).meta["trial"] == 1


@pytest.mark.slow
def test_compare_two_seeds_stored_and_reported(world, recipe):
    logs = []
    res = compare("st", root=world / "trials", out=world / "reports", seeds=2, log=logs.append,
                  latency_repeats=5)
    st = open_study("st", root=world / "trials")
    recs = records(st)
    # one seed per design in this study: the chosen design is the best per-design mean
    best = max((r for r in recs if r.status == "complete"), key=lambda r: r.accuracy)
    arms = {a["role"]: a for a in res["arms"]}
    assert arms["chosen"]["arch_id"] == best.arch.id and res["same_as"] is None
    assert arms["r16"]["arch_id"] == baseline_arch(best.arch).id and arms["plain"]["arch_id"] == plain_arch(best.arch).id
    assert arms["plain"]["mparams"] < arms["r16"]["mparams"]
    assert res["seeds"] == [CONFIRM_SEED, CONFIRM_SEED + 1]
    # an arm's run is an ordinary training run with that seed: reproduce one independently
    s1 = CONFIRM_SEED + 1
    _, r, _ = train_arch(plain_arch(best.arch), dataclasses.replace(recipe, seed=s1), seed=s1)
    assert arms["plain"]["accuracy"][1] == r.accuracy
    # the paired tests against the hand formula t = mean(d) / (sd(d) / sqrt(K)), against r=16 and plain
    for ref in ("r16", "plain"):
        d = [a - b for a, b in zip(arms["chosen"]["accuracy"], arms[ref]["accuracy"])]
        test = res[f"vs_{ref}"]["chosen"]["accuracy"]
        assert test["diff_mean"] == pytest.approx(sum(d) / 2)
        if d[0] != d[1]:
            sd = abs(d[0] - d[1]) / math.sqrt(2)
            assert test["diff_se"] == pytest.approx(sd / math.sqrt(2))
            assert test["t"] == pytest.approx((sum(d) / 2) / (sd / math.sqrt(2)))
            assert 0 <= test["p"] <= 1
    assert all(a["latency_mean"] > 0 for a in res["arms"]) and res["finding"]
    # rerun: nothing is trained again (the stored runs stay untouched)
    runs = {k: v for k, v in st.user_attrs.items() if k.startswith("run:")}
    assert len(runs) == 6
    res2 = compare("st", root=world / "trials", out=world / "reports", seeds=2, log=logs.append, latency_repeats=5)
    again = {k: v for k, v in open_study("st", root=world / "trials").user_attrs.items() if k.startswith("run:")}
    assert again == runs
    assert [a["accuracy"] for a in res2["arms"]] == [a["accuracy"] for a in res["arms"]]
    # the report marks the baseline and plain backbone from compare, and includes its table and finding
    rep = build_report("st", root=world / "trials", out=world / "reports")
    assert {m.name for m in rep.markers} == {"r=16 SE baseline", "plain backbone"}
    assert "Comparison against the fixed r=16 SE baseline" in rep.compare_md and rep.finding == res["finding"]
    saved = json.loads((world / "reports" / "st" / "compare.json").read_text())
    assert saved["seeds"] == [CONFIRM_SEED, CONFIRM_SEED + 1]


@pytest.mark.slow
def test_compare_never_writes_through_a_planted_link(world, tmp_path):
    """Links at the old, predictable compare.json.tmp / compare.md.tmp made compare overwrite the files
    they pointed to; a link at reports/STUDY sent the results outside the reports folder."""
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    out = tmp_path / "reports"
    (out / "st").mkdir(parents=True)
    for name in ("compare.json.tmp", "compare.md.tmp"):
        (out / "st" / name).symlink_to(victim)
    compare("st", root=world / "trials", out=out, seeds=2, log=lambda *_: None, latency_repeats=3)
    assert victim.read_text() == "keep me"
    for name in ("compare.json", "compare.md"):
        assert not (out / "st" / name).is_symlink() and (out / "st" / name).stat().st_size > 100
    elsewhere, out2 = tmp_path / "elsewhere", tmp_path / "r2"
    elsewhere.mkdir()
    out2.mkdir()
    (out2 / "st").symlink_to(elsewhere)
    with pytest.raises(ValueError, match=r"r2/st' is a symbolic link .*elsewhere"):
        compare("st", root=world / "trials", out=out2, seeds=2, log=lambda *_: None, latency_repeats=3)
    assert not any(elsewhere.iterdir())


@pytest.mark.slow
def test_compare_says_when_the_chosen_design_is_the_plain_backbone(world):
    plain = plain_arch(ARCHS[0])
    res = compare("st", root=world / "trials", out=world / "reports", seeds=2, arch=plain, latency_repeats=3,
                  log=lambda *_: None)
    assert res["same_as"] == "plain" and [a["role"] for a in res["arms"]] == ["chosen", "r16"]
    assert "plain backbone" in res["arms"][0]["name"] and "plain backbone" in res["finding"]
    assert "is** the plain backbone" in (world / "reports" / "st" / "compare.md").read_text()


def test_paired_test_edge_cases():
    assert "no test possible with 1 seed" in paired_test([0.5], [0.4])["note"]
    same = paired_test([0.5, 0.6], [0.4, 0.5])
    assert same["p"] is None and "same on every seed" in same["note"]
    with pytest.raises(ValueError, match="--seeds must be a positive integer"):
        compare("st", seeds=0)


@pytest.mark.slow
def test_compare_shows_predicted_beside_measured_latency(world, recipe, tmp_path):
    from se_nas.design.latency import LatencyError, predict_latency
    from se_nas.nn.profile import profile
    from se_nas.design.space import load_space

    plain = plain_arch(ARCHS[0])
    path = tmp_path / "proxy.json"  # a table of the recipe's proxy (10 digit classes), for these designs
    profile(load_space("tiny"), path, archs=[plain, baseline_arch(plain)], stem=recipe.stem, width=recipe.width,
            image_size=recipe.image_size, num_classes=10, rounds=3, warmup=1)
    res = compare("st", root=world / "trials", out=world / "reports", seeds=2, arch=plain, latency_repeats=3,
                  log=lambda *_: None, latency=str(path))
    arms = {a["role"]: a for a in res["arms"]}
    for role, arch in (("chosen", plain), ("r16", baseline_arch(plain))):
        assert arms[role]["latency_predicted_ms"] == predict_latency(arch, str(path)).ms > 0
    assert "(predicted " in (world / "reports" / "st" / "compare.md").read_text()
    assert "latency_runtime" not in res  # eager torch, as before
    # a table of ONNX Runtime: compare measures there too (issue 22)
    pytest.importorskip("onnxruntime")
    ort = tmp_path / "ort.json"
    profile(load_space("tiny"), ort, archs=[plain, baseline_arch(plain)], stem=recipe.stem, width=recipe.width,
            image_size=recipe.image_size, num_classes=10, rounds=2, warmup=1, runtime_="onnxruntime", check=0)
    res = compare("st", root=world / "trials", out=world / "reports", seeds=2, arch=plain, latency_repeats=3,
                  log=lambda *_: None, latency=str(ort))
    assert res["latency_runtime"] == "onnxruntime" and all(a["latency_mean"] > 0 for a in res["arms"])
    assert "in onnxruntime, mean" in (world / "reports" / "st" / "compare.md").read_text()
    other = tmp_path / "other.json"
    big = 2 * recipe.image_size
    profile(load_space("tiny"), other, archs=[plain], stem=recipe.stem, width=recipe.width, image_size=big,
            num_classes=10, rounds=2, warmup=1)
    with pytest.raises(LatencyError, match=rf"profiled for .* {big}px.*compare measures the recipe's proxy .*"
                                           rf"--image-size {recipe.image_size} --num-classes 10"):
        compare("st", root=world / "trials", out=world / "reports", seeds=2, arch=plain, latency_repeats=3,
                log=lambda *_: None, latency=str(other))
