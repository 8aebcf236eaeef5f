"""The SE supernet (se_nas/nn/supernet.py): every design of the space is a path, and extracting it gives
exactly build_model's module with the inherited weights."""
import itertools
import random
import re
from dataclasses import replace

import pytest
import torch
from torch import nn

from se_nas.design.arch import Arch, ArchError, StageSE, se_hidden
from se_nas.nn.build import build_model
from se_nas.design.choices import GATES, POSITIONS, SQUEEZES
from se_nas.nn.fused import set_fast_se
from se_nas.design.space import load_space
from se_nas.nn.supernet import (GATE_WEIGHTS, SuperSE, Supernet, extract, narrowest_path, recalibrate_bn,
                             sample_path, widest_path)

WIDTH = 0.125
SPACE = load_space("resnet50-per-stage")
REDUCTIONS = SPACE.stages[0]["reduction"]


def _randomized(net: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter and BatchNorm statistic random: zero-initialised last BatchNorms would hide
    the residual branch (and the SE slots on it) from the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    scale = t[0].numel() ** -0.5 if t.dim() > 1 else 0.2  # about unit gain per layer
                    t.copy_(torch.randn(t.shape, generator=g) * scale
                            + (1.0 if name.endswith(".weight") and t.dim() == 1 else 0.0))
    return net


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as every search process runs (two threads on a busy 2-core machine are 10x slower)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def supernet():
    """Each gate with its own excitation in every slot (every tensor random: a wrong gate's weights show)."""
    return _randomized(Supernet(SPACE, 10, "small", WIDTH, gate_weights="per-gate"))


def _registered(net: Supernet, arch: Arch, key: str) -> torch.Tensor:
    """The supernet's registered tensor that ``key`` of ``arch``'s model reads on that path (the chosen
    gate's excitation, whole, for an SE slot)."""
    net.set_path(arch)
    owner, _, name = key.rpartition(".")
    return net.get_submodule(owner)._parameters[name]


def _covering_designs() -> list[Arch]:
    """Every (position, squeeze, gate) combination in some stage, every value of every axis in every
    stage, and stages switched off."""
    combos = random.Random(0).sample(list(itertools.product(POSITIONS, SQUEEZES, GATES)), 80)
    designs = []
    for k in range(20):
        stages = tuple(StageSE(REDUCTIONS[(k + s) % len(REDUCTIONS)], sq, g, p)
                       for s, (p, sq, g) in ((s, combos[20 * s + k]) for s in range(4)))
        designs.append(Arch("resnet50", stages))
    designs += [SPACE.plain(), SPACE.baseline(), SPACE.plain().with_stage(2, StageSE(2, "none", "relu", "identity"))]
    return designs


@pytest.mark.slow
@pytest.mark.parametrize("gate_weights", ["per-gate", "shared"])
def test_extracted_path_is_build_model_with_the_same_forward(supernet, gate_weights):
    """Bit for bit, in eval mode, with the fast SE code (matrix products) and the reference one; with
    each gate's own excitation and with one excitation shared by the gates."""
    if gate_weights != "per-gate":
        supernet = _randomized(Supernet(SPACE, 10, "small", WIDTH, gate_weights=gate_weights))
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    supernet.eval()
    seen = set()
    for arch in _covering_designs():
        model = extract(supernet, arch).eval()
        ref = build_model(arch, 10, stem="small", width=WIDTH)
        assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
        supernet.set_path(arch)
        for fast in (True, False):
            set_fast_se(supernet, fast), set_fast_se(model, fast)
            with torch.no_grad():
                want = model(x)
                got = supernet(x)
            assert torch.isfinite(want).all() and want.std() > 0.1, arch.label
            assert torch.equal(got, want), (arch.label, fast)
        seen.update((i, s) for i, s in enumerate(arch.stages))
    assert len({(s.position, s.squeeze, s.gate) for _, s in seen if s is not None}) == 80
    # the designs above did exercise every choice of every stage
    for i in range(4):
        for axis, values in (("position", POSITIONS), ("squeeze", SQUEEZES), ("gate", GATES),
                             ("reduction", REDUCTIONS)):
            assert {getattr(s, axis) for j, s in seen if j == i and s is not None} == set(values)


def test_training_step_of_a_path_is_the_extracted_models(supernet):
    """In training mode (the fused kernels, BatchNorm in batch statistics) a path gives the extracted
    model's loss and gradients; the hidden units it does not use get none."""
    arch = Arch("resnet50", (StageSE(8, "avg", "sigmoid", "standard"), StageSE(4, "max", "tanh", "pre"),
                             StageSE(2, "avgmax", "hardsigmoid", "after_3x3"), StageSE(32, "avg", "relu", "identity")))
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.arange(8) % 10
    net = _randomized(Supernet(SPACE, 10, "small", WIDTH, gate_weights="per-gate"), seed=3)
    model = extract(net, arch).train()
    net.set_path(arch).train()
    nn.functional.cross_entropy(net(x), y).backward()
    nn.functional.cross_entropy(model(x), y).backward()
    used = set()
    for name, p in model.named_parameters():
        reg = _registered(net, arch, name)
        used.add(id(reg))
        full = reg.grad
        part = full[tuple(slice(0, n) for n in p.shape)]
        torch.testing.assert_close(part, p.grad, rtol=1e-4, atol=1e-6, msg=name)
        if part.shape != full.shape:  # a sliced excitation: the unused hidden units get no gradient
            rest = full.clone()
            rest[tuple(slice(0, n) for n in p.shape)] = 0
            assert not rest.any(), name
    # the other slots and the other gates' excitations get none
    unused = [n for n, p in net.named_parameters() if id(p) not in used]
    assert any(".excite.sigmoid." in n for n in unused) and any(".excite.relu." in n for n in unused)
    assert all(p.grad is None or not p.grad.any() for n, p in net.named_parameters() if id(p) not in used)


def test_each_gate_has_its_own_excitation_and_extraction_copies_the_chosen_gates(supernet):
    """Every gate in every slot (each slot in another stage): the extracted model's fc1/fc2 are that
    gate's excitation (its prefix), under the builder's keys; gates of one range share one under
    ``per-range``, all gates under ``shared``."""
    for i, position in enumerate(POSITIONS):
        stage = i % 4
        unit, slot = f"stages.{stage}.0", f"se_{POSITIONS[position]}"
        got = {}
        for gate in GATES:
            arch = SPACE.plain().with_stage(stage, StageSE(4, "avg", gate, position))
            before = supernet.path
            model = extract(supernet, arch).state_dict()
            assert supernet.path is before  # extraction leaves the supernet's path alone
            own = getattr(supernet.get_submodule(f"{unit}.{slot}").excite, gate)
            w = model[f"{unit}.{slot}.fc1.weight"]
            h = w.shape[0]
            assert h == se_hidden(own.fc1.in_channels, 4) < own.fc1._parameters["weight"].shape[0]
            assert torch.equal(w, own.fc1._parameters["weight"][:h]), (stage, position, gate)
            assert torch.equal(model[f"{unit}.{slot}.fc2.weight"], own.fc2._parameters["weight"][:, :h])
            got[gate] = w
        assert len({w.sum().item() for w in got.values()}) == len(GATES)  # four different excitations
    keys = lambda gw: {k.split(".excite.")[1].split(".")[0] for k in  # noqa: E731
                       Supernet(SPACE, 10, "small", WIDTH, gate_weights=gw).state_dict() if ".excite." in k}
    assert keys("per-range") == {"sigmoid", "tanh", "relu"} and keys("per-gate") == set(GATES)
    assert keys("shared") == set() and set(GATE_WEIGHTS) == {"per-gate", "per-range", "shared"}
    with pytest.raises(ArchError, match=r"^unknown gate weights 'bogus'; allowed: per-gate, per-range, shared$"):
        Supernet(SPACE, 10, "small", WIDTH, gate_weights="bogus")


def test_a_smaller_ratio_uses_a_prefix_of_the_larger_ones_hidden_units(supernet):
    se = supernet.stages[1][0].se_residual
    assert isinstance(se, SuperSE)
    c = se.fc1.in_channels
    big, small = StageSE(2), StageSE(8)
    a_big, a_small = (Arch("resnet50", (None, s, None, None)) for s in (big, small))
    w_big = extract(supernet, a_big).stages[1][0].se_residual
    w_small = extract(supernet, a_small).stages[1][0].se_residual
    h = se_hidden(c, 8)
    assert w_small.fc1.weight.shape[0] == h < w_big.fc1.weight.shape[0] == se_hidden(c, 2)
    assert torch.equal(w_small.fc1.weight, w_big.fc1.weight[:h])
    assert torch.equal(w_small.fc2.weight, w_big.fc2.weight[:, :h])
    # a hidden unit beyond C/8 changes the r=2 path, never the r=8 one
    x = torch.rand(2, c, 4, 4, generator=torch.Generator().manual_seed(6)) + 0.5  # z > 0: +10 wakes a unit
    se.choose(small)
    full = dict(se.fc1.named_parameters())["weight"]  # the registered parameter, not the path's slice
    before_small = se(x)
    se.choose(big)
    before_big = se(x)
    with torch.no_grad():
        full[h] += 10.0
    try:
        after_big = se(x)
        se.choose(small)
        assert torch.equal(se(x), before_small)
        assert not torch.equal(after_big, before_big)
        with torch.no_grad():
            full[h - 1] += 10.0  # the last unit the r=8 path uses
        assert not torch.equal(se(x), before_small)
    finally:
        with torch.no_grad():
            full[h] -= 10.0
            full[h - 1] -= 10.0


def test_the_sampler_reaches_every_choice_of_the_space():
    space = load_space("resnet50-per-stage")
    rng = random.Random(0)
    seen = {(i, a): set() for i in range(4) for a in ("enabled", "reduction", "squeeze", "gate", "position")}
    for _ in range(400):
        arch = sample_path(space, rng)
        for i, se in enumerate(arch.stages):
            seen[(i, "enabled")].add(se is not None)
            if se is not None:
                for a in ("reduction", "squeeze", "gate", "position"):
                    seen[(i, a)].add(getattr(se, a))
    for (i, a), values in seen.items():
        assert values == set(space.stages[i][a]), (i, a)
    wide, narrow = widest_path(space, rng), narrowest_path(space, rng)
    assert all(s is not None and s.reduction == 2 for s in wide.stages)
    assert narrow == space.plain()
    # a stage that must have SE keeps it in the narrowest path, at its largest r
    fixed = replace(space, stages=tuple({**st, "enabled": (True,)} for st in space.stages))
    assert all(s.reduction == 32 for s in narrowest_path(fixed, rng).stages)


def test_bn_recalibration_changes_only_the_paths_statistics():
    arch = Arch("resnet50", (StageSE(4, "avg", "sigmoid", "pre"), None, StageSE(16, "max", "relu", "post"), None))
    net = _randomized(Supernet(SPACE, 10, "small", WIDTH), seed=4).set_path(arch)
    g = torch.Generator().manual_seed(5)
    batches = [torch.randn(16, 3, 8, 8, generator=g) for _ in range(3)]
    params = {k: v.clone() for k, v in net.named_parameters()}
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    standalone = extract(net, arch)
    assert recalibrate_bn(net.eval(), batches) == 3
    assert not net.training
    assert all(torch.equal(v, params[k]) for k, v in net.named_parameters())
    changed = [k for k, v in net.named_buffers() if not torch.equal(v, buffers[k])]
    assert changed and all(k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")
                           for k in changed)
    # the statistics are the path's own: those of the extracted model on the same batches
    recalibrate_bn(standalone, batches)
    for k, v in standalone.state_dict().items():
        if "running" in k:
            torch.testing.assert_close(net.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)
    # and they are the plain average over the batches, independent of the momentum
    assert all(m.momentum == 0.1 for m in net.modules() if isinstance(m, nn.BatchNorm2d))


def test_a_design_outside_the_space_or_a_backbone_without_residual_units_is_refused(supernet):
    with pytest.raises(ArchError, match=r"stage s2 reduction 3, allowed: 2, 4, 8, 16, 32"):
        supernet.set_path(Arch("resnet50", (None, StageSE(3), None, None)))
    with pytest.raises(ArchError, match="backbone 'resnet18', the space has 'resnet50'"):
        extract(supernet, Arch.uniform("resnet18", None))
    tiny = load_space("tiny")
    with pytest.raises(ArchError, match="stage s4 reduction 4, allowed: 16"):
        Supernet(tiny, 10, "small", WIDTH).set_path(Arch.uniform("resnet18", StageSE(4)))
    fake = replace(tiny, backbone="vit_b16")
    with pytest.raises(ArchError, match=r"^the supernet supports the residual backbones \(resnet18, .*"
                                        r"has backbone 'vit_b16'$"):
        Supernet(fake, 10, "small", WIDTH)


# --- training, ranking and the one-shot search (se_nas/search/oneshot.py) --------------------------------
from se_nas.design.budget import Budget  # noqa: E402
from se_nas.design.cost import count_cost  # noqa: E402
from se_nas.design.recipe import load_recipe  # noqa: E402

TINY = load_space("tiny")


@pytest.fixture(scope="module")
def tiny_data():
    from se_nas.nn.data import load_data

    return load_data(load_recipe("tiny"))


def _stop_at(epoch: int):
    def on_progress(p):
        if p.epoch == epoch and p.step == 1:
            raise KeyboardInterrupt  # as Ctrl-C in the middle of an epoch
    return on_progress


def test_supernet_training_resumes_where_it_stopped_and_ends_as_an_uninterrupted_run(tmp_path, tiny_data):
    from se_nas.search.oneshot import train_supernet

    recipe = load_recipe("tiny")
    whole, res, draw = train_supernet(TINY, recipe, tiny_data, epochs=2, seed=7, sampling="uniform")
    ckpt = tmp_path / "supernet.pt"
    with pytest.raises(KeyboardInterrupt):
        train_supernet(TINY, recipe, tiny_data, epochs=2, seed=7, sampling="uniform", checkpoint=ckpt,
                       on_progress=_stop_at(2))
    assert ckpt.is_file()
    resumed, res2, draw2 = train_supernet(TINY, recipe, tiny_data, epochs=2, seed=7, sampling="uniform",
                                          checkpoint=ckpt)
    steps = len(draw.drawn) // 2
    assert draw2.drawn == draw.drawn[steps:]  # only the last epoch ran again, on the same paths
    assert res2.history == res.history
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    # a finished training is read back, not run again
    again, res3, draw3 = train_supernet(TINY, recipe, tiny_data, epochs=2, seed=7, sampling="uniform",
                                        checkpoint=ckpt)
    assert draw3.drawn == [] and res3.history == res.history
    assert torch.equal(again.fc.weight, whole.fc.weight)
    # different paths were trained, and a different seed draws others
    assert len({a.id for a in draw.drawn}) > steps
    _, _, other = train_supernet(TINY, recipe, tiny_data, epochs=1, seed=8, sampling="uniform")
    assert other.drawn[:steps] != draw.drawn[:steps]


@pytest.mark.slow
def test_no_design_over_budget_is_trained_or_evaluated(tmp_path, tiny_data, monkeypatch):
    from se_nas.nn import pathscore
    from se_nas.search import oneshot
    from se_nas.search.stages import SearchConfig, run_search
    from se_nas.record.study import Status, records

    deploy = TINY.deploy
    gflops = lambda a: count_cost(a, deploy.image_size, deploy.num_classes).gflops  # noqa: E731
    plain, widest = gflops(TINY.plain()), gflops(Arch.uniform("resnet18", StageSE(4)))
    budget = Budget(max_gflops=(plain + widest) / 2)
    net, _, draw = oneshot.train_supernet(TINY, load_recipe("tiny"), tiny_data, budget=budget, epochs=1,
                                          sampling="sandwich")
    assert draw.drawn and all(gflops(a) <= budget.max_gflops for a in draw.drawn)
    assert TINY.plain() in draw.drawn  # the sandwich's narrowest path

    evaluated = []
    real = pathscore.PathEvaluator.__call__

    def spy(self, arch):
        evaluated.append(arch)
        return real(self, arch)

    monkeypatch.setattr(pathscore.PathEvaluator, "__call__", spy)
    config = SearchConfig(study="os", space=TINY, recipe="tiny", budget=budget, n_trials=14, sampler="nsga2",
                          root=tmp_path, progress=False, calibration_seeds=0, confirm_top=1, confirm_min_seeds=2,
                          confirm_max_seeds=2, strategy="oneshot", supernet_epochs=1)
    study = run_search(config)
    recs = records(study)
    over = [r for r in recs if r.status is Status.OVER_BUDGET]
    assert over and evaluated
    assert all(gflops(a) <= budget.max_gflops for a in evaluated)
    assert {r.arch.id for r in over}.isdisjoint(a.id for a in evaluated)
    ranked = [r for r in recs if r.status is Status.COMPLETE]
    assert len(ranked) == len(evaluated) and all(r.fidelity == "supernet" for r in ranked)
    # each value is the path's accuracy discounted by its initialisation signal, both in the reason
    assert all(re.fullmatch(r"supernet path accuracy [01]\.\d{4} \(BatchNorm recalibrated\) x [01]\.\d{3}: its model at "
                            r"initialisation passes \d+\.\d{3} of the plain backbone's signal; not a standalone training",
                            r.reason) for r in ranked)
    # the supernet ranking never counts as a standalone result; the confirmation is all standalone
    from se_nas.search.confirm import read_confirmation
    from se_nas.record.results import designs_of

    assert designs_of(recs) == []
    conf = read_confirmation(study)
    ranking = oneshot.supernet_designs(recs)
    best = next(d for d in ranking if d.id == conf.chosen.id)
    assert best.mean == max(d.mean for d in ranking)  # the supernet's best (ties: results.best_design's rule)
    assert conf.chosen.n == 2 and conf.complete
    # the report of a one-shot study shows its supernet ranking (the trials' own format)
    from se_nas.products.report import build_report

    rep = build_report("os", root=tmp_path, out=tmp_path / "reports")
    assert {d.id for d in rep.designs} == {r.arch.id for r in ranked}
    # ... labelled as supernet scores, never as trained accuracies with seed noise
    from se_nas.products.report import summary_md

    md = summary_md(rep)
    assert rep.supernet and f"{len(ranked)} designs ranked through the supernet (each a supernet score, not a " \
                             "training)" in md and "trials trained to the end" not in md
    section = md.split("## Supernet ranking front (per design)")[1].split("\n\n")[2]
    head, rule, *rows = section.splitlines()
    assert "| supernet score |" in head and rows and not any("±" in row or "seed" in row for row in rows)
    # the summary printed after the search shows the ranking's front, not "no front", before the confirmed one
    from se_nas.search.progress import summarize

    text = summarize(study, tmp_path)
    assert "no front" not in text and "supernet ranking front (supernet scores: a ranking, not trainings)" in text
    assert text.index("supernet ranking front") < text.index("confirmed under the same 2 fresh seeds")


@pytest.mark.slow
def test_the_oneshot_strategy_from_the_command_line_continues_and_keeps_its_study_apart(tmp_path, capsys):
    from se_nas import cli
    from se_nas.record.storage import open_study
    from se_nas.record.study import records

    argv = ["search", "--strategy", "oneshot", "--space", "tiny", "--recipe", "tiny", "--budget-gflops", "1.9",
            "--calibration-seeds", "0", "--confirm-top", "0", "--supernet-epochs", "1", "--root", str(tmp_path)]
    assert cli.main([*argv, "--n-trials", "5"]) == 0
    study = open_study("tiny-1.9gflops-oneshot", root=tmp_path)
    first = [(r.number, r.arch.id, r.accuracy) for r in records(study)]
    assert cli.main([*argv, "--n-trials", "7"]) == 0  # continues: the supernet is read back, not retrained
    out = capsys.readouterr().out
    assert "supernet trained: 1 epochs" in out and "(this run: " in out
    assert "sampler nsga2" in out  # the one-shot's default: TPE re-proposes ranked designs thousands of times
    recs = records(study)
    paths = sum(r.status.value == "complete" for r in recs)
    assert f"{paths} supernet paths evaluated (not trained), 0 trained to the end" in out
    assert [(r.number, r.arch.id, r.accuracy) for r in recs][:len(first)] == first
    assert sum(r.status.value != "repeat" for r in recs) == 7
    # the multi-trial search does not continue a one-shot study
    assert cli.main(["search", "--study", "tiny-1.9gflops-oneshot", *argv[3:7], "--budget-gflops", "1.9",
                     "--n-trials", "9", "--root", str(tmp_path)]) == 2
    assert "holds a oneshot search; continue it with --strategy oneshot" in capsys.readouterr().err


def test_a_path_that_breaks_is_drawn_again_and_never_trained():
    """Hidden units only r=4 uses are NaN: every path with r=4 in stage 1 breaks, the others do not."""
    from se_nas.search.oneshot import PathDraw

    net = Supernet(TINY, 10, "small", WIDTH).train()
    for m in net.stages[0]:
        for name, w in m.se_residual.named_parameters():  # every gate's excitation
            if name.endswith("fc1.weight"):
                with torch.no_grad():
                    w[se_hidden(w.shape[1], 16):] = float("nan")
    draw = PathDraw(TINY, Budget(), TINY.deploy, "uniform")
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 10
    torch.manual_seed(0)
    for _ in range(12):
        loss = draw(net, x, y, nn.functional.cross_entropy)
        assert torch.isfinite(loss)
        loss.backward()
    breaks = lambda a: a.stages[0] is not None and a.stages[0].reduction == 4  # noqa: E731
    assert draw.broken and all(breaks(a) for a in draw.broken)
    assert draw.drawn and not any(breaks(a) for a in draw.drawn)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_a_path_is_evaluated_on_the_first_validation_images_after_recalibrating_on_the_calibration_batches(
        tiny_data):
    """PathEvaluator's accuracy is the extracted model's, recalibrated on the same batches, on the
    first ``val_fraction`` of the validation images (the cheaper settings of docs/oneshot.md)."""
    from se_nas.nn.pathscore import PathEvaluator
    from se_nas.record.study import SearchError
    from se_nas.nn.train import evaluate

    recipe = load_recipe("tiny")
    net = Supernet(TINY, tiny_data.num_classes, recipe.stem, recipe.width)
    arch = Arch.uniform("resnet18", StageSE(16, "avg", "hardsigmoid", "standard"))
    full = PathEvaluator(net, recipe, tiny_data, device="cpu", batches=3, val_fraction=1)
    ev = PathEvaluator(net, recipe, tiny_data, device="cpu", batches=1, val_fraction=37 / len(tiny_data.val))
    assert len(full.calibration) == 3 and sum(len(y) for _, y in full.val) == len(tiny_data.val) > 37
    assert len(ev.calibration) == 1 and torch.equal(ev.calibration[0], full.calibration[0])
    assert sum(len(y) for _, y in ev.val) == 37
    other = PathEvaluator(net, recipe, tiny_data, device="cpu", batches=1, calibration_seed=recipe.seed + 1)
    assert not torch.equal(other.calibration[0], ev.calibration[0])
    acc = ev(arch).accuracy
    model = extract(net, arch)
    recalibrate_bn(model, ev.calibration)
    x = torch.cat([x for x, _ in full.val])[:37]
    y = torch.cat([y for _, y in full.val])[:37]
    assert acc == evaluate(model, [(x, y)], "cpu")
    with pytest.raises(SearchError, match=r"^a path's validation fraction must be in \(0, 1\], got val_fraction=0$"):
        PathEvaluator(net, recipe, tiny_data, device="cpu", val_fraction=0)


def test_the_initialisation_check_discounts_only_designs_that_shrink_the_plain_backbones_signal(tiny_data):
    """A path's score is its supernet accuracy times min(1, signal), the signal being the logit scale of
    the plain backbone with the design's SE added, over the plain backbone's, under the same seeds:
    exactly 1 for the plain backbone and for SE on the residual branch (its last BatchNorm starts at
    zero), far less for a tanh or ReLU gate that scales the stream in every unit."""
    from se_nas.nn.pathscore import INIT_SEEDS, PathEvaluator, discounted, logit_scale

    recipe = load_recipe("tiny")
    net = Supernet(TINY, tiny_data.num_classes, recipe.stem, recipe.width)
    rng = torch.get_rng_state()
    ev = PathEvaluator(net, recipe, tiny_data, device="cpu")
    plain = ev(TINY.plain())
    assert torch.equal(torch.get_rng_state(), rng)  # the models are built without moving torch's random state
    assert plain.signal == 1.0 and plain.score == plain.accuracy and set(ev.check.reference) == set(INIT_SEEDS)
    assert not set(INIT_SEEDS) & {*range(100), *(1000 + k for k in range(100))}  # no trial's or confirmation's seed
    for position in ("standard", "after_3x3"):
        for gate in ("sigmoid", "tanh", "relu"):
            assert ev.check(Arch.uniform("resnet18", StageSE(4, "max", gate, position))) == 1.0
    for gate in ("tanh", "relu"):
        for position in ("pre", "post", "identity"):
            assert ev.check(Arch.uniform("resnet18", StageSE(16, "avg", gate, position))) < 0.3
    # the model measured: the plain backbone of that seed, plus the design's SE drawn under the same seed
    arch = Arch.uniform("resnet18", StageSE(4, "avg", "tanh", "post"))
    ratios = []
    for seed, ref in ev.check.reference.items():
        torch.manual_seed(seed)
        plain_model = build_model(TINY.plain(), tiny_data.num_classes, stem=recipe.stem, width=recipe.width)
        torch.manual_seed(seed)
        own = build_model(arch, tiny_data.num_classes, stem=recipe.stem, width=recipe.width)
        model = ev.check.model(arch, seed)
        state, p, o = model.state_dict(), plain_model.state_dict(), own.state_dict()
        assert all(torch.equal(v, p[k] if k in p else o[k]) for k, v in state.items())
        assert any(".se_" in k for k in state) and ref == logit_scale(plain_model, ev.calibration[0])
        before = {k: v.clone() for k, v in state.items()}
        ratios.append(logit_scale(model, ev.calibration[0]) / ref)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # running statistics too
    assert ev.check(arch) == sorted(ratios)[1]
    # the discount only lowers a score, and never below what the signal leaves of the accuracy
    assert discounted(0.8, 1.7) == (0.8, 0.8, 1.7) and discounted(0.8, 0.25).score == pytest.approx(0.2)
    assert discounted(0.8, None).score == 0.8
    # an evaluator without the check scores by the accuracy alone
    bare = PathEvaluator(net, recipe, tiny_data, device="cpu", init_seeds=())
    arch = Arch.uniform("resnet18", StageSE(16, "avg", "hardsigmoid", "standard"))
    assert bare.check is None and bare(arch) == (ev(arch).accuracy, ev(arch).accuracy, None)


def test_a_ranking_continues_only_under_the_score_that_started_it(tmp_path):
    """A one-shot study ranked before the initialisation check holds bare accuracies: continuing it
    would mix them with discounted scores, so it stops in one line; a study of today's score continues."""
    from se_nas.search import oneshot
    from se_nas.record.samplers import make_sampler
    from se_nas.record.storage import open_study
    from se_nas.record.study import SearchError

    study = open_study("old", root=tmp_path, sampler=make_sampler("random", 0), create=True)
    oneshot.rank(study, TINY, Budget(), TINY.deploy, lambda a: 0.5, 3)  # ranked, as before the check
    with pytest.raises(SearchError, match=r"^study 'old' ranked its designs by supernet accuracy; this se-nas ranks "
                                          r"by supernet accuracy x min\(1, initialisation signal\) \(docs/oneshot.md\): "
                                          r"continuing would mix the two, start a new study with --study NAME$"):
        oneshot.check_score(study, "old")
    new = open_study("new", root=tmp_path, sampler=make_sampler("random", 0), create=True)
    oneshot.check_score(new, "new")
    oneshot.rank(new, TINY, Budget(), TINY.deploy, lambda a: 0.5, 3)
    oneshot.check_score(new, "new")  # continues
    assert new.user_attrs["supernet_score"] == oneshot.SCORE
