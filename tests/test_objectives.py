"""Latency as an objective (``--objectives accuracy,latency``): a study setting fixed at creation (its
directions), read by everything that tells values or builds a front. Real trials of the tiny space priced
by a real table of this machine (conftest's ``tiny_latency``)."""
import dataclasses

import optuna
import pytest

from se_nas.design.budget import Budget
from se_nas.record.results import Design, best_design, design_front, designs_of
from se_nas.search.stages import SearchConfig, prepare_study
from se_nas.design.space import load_space
from se_nas.record.study import OBJECTIVES, SearchError, StudySettings, check_objectives, records

LATENCY = ("accuracy", "latency")


def test_objectives_are_checked_and_put_in_one_order():
    assert check_objectives("latency, accuracy") == LATENCY == check_objectives(["accuracy", "latency"])
    assert check_objectives("accuracy,gflops,mparams") == OBJECTIVES
    for bad, extra in (("accuracy,flops", " (unknown: flops)"), ("gflops,latency", ""), ("accuracy", ""),
                       ("accuracy,latency,latency", "")):
        with pytest.raises(SearchError) as e:
            check_objectives(bad)
        assert str(e.value) == ("--objectives must name accuracy and at least one of gflops, mparams, latency, "
                                f"each once, got {bad!r}{extra}")


def test_a_faster_design_as_accurate_dominates_whatever_its_gflops():
    """The front and the choice read the study's objectives, not the fixed triple."""
    space = load_space("tiny")
    a, b = space.baseline(), space.plain()
    fast = Design(a, gflops=2.0, mparams=12.0, accuracies=(0.9, 0.8), latency_ms=1.0)  # more GFLOPs, faster
    lean = Design(b, gflops=1.0, mparams=11.0, accuracies=(0.8, 0.9), latency_ms=2.0)
    assert [d.id for d in design_front([fast, lean], LATENCY)] == [fast.id]
    assert best_design([lean, fast], objectives=LATENCY).id == fast.id  # equal means: the faster one
    assert [d.id for d in design_front([fast, lean])] == [lean.id]  # by GFLOPs and params: the other way round
    assert best_design([fast, lean]).id == lean.id
    unpriced = dataclasses.replace(fast, latency_ms=None)  # no latency: not placeable on a latency front
    assert [d.id for d in design_front([unpriced, lean], LATENCY)] == [lean.id]


def _dominated(d, others):
    """By hand: another design at least as accurate and at least as fast, better in one."""
    return any(o.mean >= d.mean and o.latency_ms <= d.latency_ms and (o.mean > d.mean or o.latency_ms < d.latency_ms)
               for o in others if o.id != d.id)


@pytest.mark.slow
def test_search_with_accuracy_and_latency(latency_deploy, learning_recipe, tmp_path, tiny_latency):
    from se_nas.search.confirm import confirm
    from se_nas.nn.data import load_data
    from se_nas.design.latency import predictor
    from se_nas.search.optuna_backend import run_one
    from se_nas.search.progress import summarize
    from se_nas.products.report import build_report, summary_md

    p = predictor(tiny_latency)
    cfg = SearchConfig(study="fast", space=load_space("tiny"), recipe=learning_recipe, budget=Budget(latency=tiny_latency),
                       deploy=latency_deploy, n_trials=6, sampler="random", root=tmp_path, progress=False,
                       objectives="accuracy,latency")
    data = load_data(cfg.recipe)
    study = prepare_study(cfg)
    for _ in range(6):
        run_one(study, cfg, data=data)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == list(LATENCY) and StudySettings.of(study).objectives == LATENCY
    recs = records(study)
    for t, r in zip(study.trials, recs):  # the sampler is told accuracy and predicted latency, nothing else
        assert r.latency_ms == pytest.approx(p.ms(r.arch))
        assert t.values == pytest.approx([r.accuracy if r.trained or r.status == "repeat" else 0.0, r.latency_ms])
    ds = designs_of(recs)
    front = design_front(ds, LATENCY)
    assert front and {d.id for d in front} == {d.id for d in ds if not _dominated(d, ds)}

    conf = confirm(study, StudySettings.of(study), top=2, min_seeds=2, max_seeds=2, data=data)
    assert all(d.latency_ms == pytest.approx(p.ms(d.arch)) for d in conf.designs)  # r=16 and plain priced too
    assert {d.id for d in conf.front} == {d.id for d in conf.designs if not _dominated(d, conf.designs)}

    text = summarize(study, tmp_path)
    assert "accuracy up, latency down" in text
    rep = build_report("fast", root=tmp_path, out=tmp_path / "reports")
    assert rep.objectives == LATENCY and [d.id for d in rep.front] == [d.id for d in front]
    assert len(rep.reference) == 2 and rep.reference[1] == pytest.approx(1.1 * max(r.latency_ms for r in recs
                                                                                       if r.is_result))
    md = summary_md(rep)
    assert "latency (ms, predicted)" in md and "![accuracy against latency](pareto_latency_ms.png)" in md
    assert "pareto_gflops.png" not in md  # the plots are the study's objectives
    from se_nas.products.report import write_report

    paths = write_report(rep, tmp_path / "reports")
    assert paths["pareto_latency_ms.png"].stat().st_size > 0 and "pareto_gflops.png" not in paths
    assert '<img alt="accuracy against latency"' in paths["report.html"].read_text()

    # the objectives are fixed with the study: continuing under the default ones is refused in one line
    with pytest.raises(SearchError) as e:
        prepare_study(dataclasses.replace(cfg, objectives=OBJECTIVES))
    assert str(e.value) == ("study 'fast' was created with a different objectives (value: ['accuracy', 'latency'] in "
                            "the study, ['accuracy', 'gflops', 'mparams'] now); continue it with the same settings, "
                            "or start a new study with --study NEW_NAME")


def test_a_study_from_before_objectives_has_the_default_ones(latency_deploy, short_recipe, tmp_path, tiny_latency):
    """A study stored without the key was created with accuracy, GFLOPs and parameters: it continues so,
    and refuses latency."""
    from se_nas.record.storage import open_study

    cfg = SearchConfig(study="old", space=load_space("tiny"), recipe=short_recipe, budget=Budget(latency=tiny_latency),
                       deploy=latency_deploy, root=tmp_path, progress=False)
    old = open_study("old", root=tmp_path, create=True)
    for k, v in cfg.settings.to_attrs().items():
        if k != "objectives":
            old.set_user_attr(k, v)
    assert StudySettings.of(old).objectives == OBJECTIVES
    with pytest.raises(SearchError, match=r"different objectives \(value: \['accuracy', 'gflops', 'mparams'\] in the "
                                          r"study, \['accuracy', 'latency'\] now\)"):
        prepare_study(dataclasses.replace(cfg, objectives=LATENCY))
    prepare_study(cfg)  # the default continues it


def test_cli_latency_objective_needs_the_table_in_one_line(tmp_path, capsys):
    from se_nas import cli

    argv = ["search", "--recipe", "tiny", "--space", "tiny", "--root", str(tmp_path), "--objectives"]
    assert cli.main([*argv, "accuracy,latency"]) == 2
    assert capsys.readouterr().err.strip() == ("se-nas search: error: --objectives latency needs the device's latency "
                                               "table: --latency TABLE (written by `se-nas latency profile`)")
    assert cli.main([*argv, "accuracy,speed"]) == 2
    assert capsys.readouterr().err.strip().endswith("got 'accuracy,speed' (unknown: speed)")
    assert not any(tmp_path.iterdir())  # refused before any study was created


@pytest.mark.slow
def test_ray_backend_tells_accuracy_and_latency(latency_deploy, short_recipe, tmp_path, tiny_latency):
    """Ray's searcher gets the study's metrics and modes, and its trials report the predicted latency."""
    pytest.importorskip("ray")
    from se_nas.design.latency import predictor
    from se_nas.search.stages import run_search

    p = predictor(tiny_latency)
    study = run_search(SearchConfig(study="ray", space=load_space("tiny"), recipe=short_recipe, deploy=latency_deploy,
                                    budget=Budget(latency=tiny_latency), objectives=LATENCY, n_trials=2,
                                    backend="ray", cpus_per_trial=1, early_stop="none", root=tmp_path,
                                    progress=False, calibration_seeds=0, confirm_top=0))
    recs = records(study)
    assert len(recs) >= 2 and {r.backend for r in recs} == {"ray"} and len(study.directions) == 2
    for t, r in zip(study.trials, recs):
        assert t.values == pytest.approx([r.accuracy, p.ms(r.arch)])
