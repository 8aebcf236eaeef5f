"""Two fidelities: search on a cheap proxy, confirm under another recipe (``--confirm-recipe``).

The confirmation's runs are stored under their own recipe key, its seed noise is its own, the finding
names the fidelity its figures come from and, with a confirmation recipe, how the two rankings agree
and whether the search's choice is still the best confirmed design; ``compare``, ``report`` and
``export --best`` follow the confirmation. Real studies, real training on the tiny space."""
import math
import statistics

import pytest
import yaml

from se_nas import cli
from se_nas.design.arch import Arch, StageSE
from se_nas.design.recipe import Recipe, RecipeError, load_recipe
from se_nas.record.results import Design, Noise, kendall_tau, rank_agreement


def test_a_recipe_names_its_fidelity():
    assert load_recipe("digits").fidelity == "digits 16 px, width 0.125, 5 epochs"
    assert load_recipe("tiny").fidelity == "digits (400 training images) 8 px, width 0.125, 2 epochs"
    assert Recipe(epochs=1, warmup_epochs=0).fidelity == "digits 16 px, width 0.125, 1 epoch"


def test_the_paired_recipes_are_wider_and_longer_than_their_searches():
    digits, wide = load_recipe("digits"), load_recipe("digits-wide")
    assert (wide.dataset, wide.width, wide.epochs) == ("digits", 0.5, 15)
    # otherwise like digits.yaml: only the proxy's width, the length and the rungs differ
    same = {k for k, v in digits.to_dict().items() if wide.to_dict()[k] != v}
    assert same == {"width", "epochs", "rungs"}
    cifar, full = load_recipe("cifar10"), load_recipe("cifar10-full")
    assert full.dataset == "cifar10" and full.width == 1.0 and full.epochs > cifar.epochs


def test_kendall_tau_and_its_bootstrap():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(2 / 3)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    a = _designs([0.90, 0.92, 0.94, 0.96])
    far = rank_agreement(a, Noise(0.001, 10, 3), a, Noise(0.001, 10, 3))
    assert far.tau == 1.0 and far.low == 1.0 and far.n == 4  # differences 20x the noise: no doubt
    near = rank_agreement(a, Noise(0.05, 10, 3), a, Noise(0.05, 10, 3))
    assert near.tau == 1.0 and near.low < 0.5 and near.sd > 0.1  # within the noise: a wide interval
    assert near == rank_agreement(a, Noise(0.05, 10, 3), a, Noise(0.05, 10, 3))  # fixed generator seed
    assert "90% bootstrap interval" in near.describe()
    assert rank_agreement(a[:2], None, a[:2], None) is None  # two designs rank nothing worth a tau


def _designs(means, seeds=(1000, 1001, 1002)):
    archs = [Arch("resnet18", (None, StageSE(reduction=r), None, None)) for r in (2, 4, 8, 16, 32)]
    return [Design(archs[i], 1.8, 11.7, (m,) * len(seeds), tuple(seeds)) for i, m in enumerate(means)]


# --- a stored two-fidelity study: the judge is the confirmation ------------------------------------
X = Arch("resnet50", (None, StageSE(reduction=2), StageSE(reduction=2, gate="tanh"), None))
R16 = Arch("resnet50", tuple(StageSE() for _ in range(4)))
PLAIN = Arch("resnet50", (None,) * 4)


WIDE = Recipe.from_dict({**load_recipe("tiny").to_dict(), "epochs": 3})  # the confirmation's fidelity


def _two_fidelity_study(confirmed_study, accs: dict, name: str = "two"):
    """A real study searched under ``tiny`` (X best in the search) and confirmed under ``WIDE`` (tiny, 3
    epochs) with accuracies ``accs``; the plan names the confirmation recipe as `se-nas search` stores it."""
    return confirmed_study(name, (X, R16, PLAIN), accs, confirm=WIDE), WIDE


def test_a_confirmation_recipe_that_prefers_another_design_makes_it_the_answer(tmp_path, confirmed_study):
    # X won the search; on the wider fidelity r=16 SE (dearer, so X is not dominated) is the most accurate:
    # the finding says the choice is no longer the best, and --best follows the confirmation, under its recipe.
    from se_nas.search.confirm import chosen_design, export_choice, read_confirmation, study_noise

    study, wide = _two_fidelity_study(confirmed_study, {"chosen": [0.93, 0.94, 0.935], "r16": [0.96, 0.965, 0.97],
                                                 "plain": [0.90, 0.905, 0.91]})
    conf = read_confirmation(study)
    assert conf.two_fidelity and conf.dominated_by is None and conf.best.arch == R16
    assert conf.fidelity == wide.fidelity and conf.search_fidelity == load_recipe("tiny").fidelity
    assert conf.sentence.startswith(f"On {wide.fidelity}: design {X.id}")
    assert f"The search (on {load_recipe('tiny').fidelity}) and the confirmation rank" in conf.sentence
    # the search ranks X > plain > r16, the confirmation r16 > X > plain: tau -1/3
    assert conf.agreement.tau == pytest.approx(-1 / 3) and conf.agreement.n == 3
    assert "the search's choice is not the best confirmed design: the fixed r=16 SE is" in conf.sentence
    assert chosen_design(study)[0].arch == X  # compare still measures the search's choice
    design, why = chosen_design(study, front=True)
    assert design.arch == R16 and f"on {wide.fidelity}" in why
    arch, seed, tag, info = export_choice(study)
    assert arch == R16 and seed == 1000 and tag.startswith(f"design-{R16.id}-s1000-r")
    assert Recipe.from_dict(info["recipe"]) == wide  # trained as its figures were
    assert info["design_accuracy"] == pytest.approx(statistics.fmean([0.96, 0.965, 0.97]))
    # the confirmation recipe's noise is its own runs' only, never the search trials'
    noise = study_noise(study, wide)
    assert noise.designs == 3 and noise.df == 6 and conf.noise == noise
    assert study_noise(study).sigma is None  # the search trials: one seed each, no calibration runs


def test_a_confirmation_recipe_that_agrees_keeps_the_choice(tmp_path, confirmed_study):
    from se_nas.search.confirm import chosen_design, read_confirmation

    study, wide = _two_fidelity_study(confirmed_study, {"chosen": [0.97, 0.975, 0.98], "r16": [0.90, 0.905, 0.91],
                                                 "plain": [0.95, 0.955, 0.96]})
    conf = read_confirmation(study)
    assert conf.best.arch == X and conf.agreement.tau == 1.0
    assert conf.sentence.endswith("the search's choice is still the best confirmed design.")
    assert chosen_design(study, front=True)[0].arch == X


# --- end to end ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_two_fidelity_search_from_python_then_compare_report_export_and_another_confirm_recipe(
        tiny_search, tmp_path, capsys):
    from se_nas.products.compare import compare
    from se_nas.products.export import export_study, read_model
    from se_nas.products.report import make_report
    from se_nas.record.storage import open_study
    from se_nas.search.confirm import CONFIRM_SEED, read_confirmation, recipe_key, stored_runs
    from se_nas.search.progress import summarize
    from se_nas.search.stages import run_search

    search = load_recipe("tiny")
    wide = tmp_path / "tiny3.yaml"  # the second fidelity: tiny trained 3 epochs instead of 2
    wide.write_text(yaml.safe_dump({**search.to_dict(), "epochs": 3}))
    wide_r = load_recipe(str(wide))
    study = run_search(tiny_search(study="f", n_trials=4, calibration_seeds=2, confirm_top=2, confirm_min_seeds=2,
                                   confirm_max_seeds=2, confirm_recipe=str(wide)))
    conf = read_confirmation(study)
    seeds = [CONFIRM_SEED, CONFIRM_SEED + 1]
    assert conf.two_fidelity and conf.recipe_name == "tiny3" and conf.fidelity == wide_r.fidelity
    assert conf.seeds == tuple(seeds) and conf.complete
    # every confirmed design under the confirmation's key; the search recipe's runs are the calibration's only
    confirmed = stored_runs(study, recipe_key(wide_r))
    assert {(d.id, s) for d in conf.designs for s in seeds} == set(confirmed)
    assert {aid for aid, _ in stored_runs(study, recipe_key(search))} == {conf.r16.id, conf.plain.id}
    assert conf.sentence.startswith(f"On {wide_r.fidelity}: ")
    assert ("rank the confirmed designs with Kendall tau" in conf.sentence
            or "Fewer than 3 confirmed designs" in conf.sentence)
    assert "best confirmed design" in conf.sentence
    text = summarize(study, tmp_path)
    assert f"search front (per-design mean over its search seeds on {search.fidelity}" in text
    assert f"confirmed under the same 2 fresh seeds on {wide_r.fidelity}" in text
    assert f"two fidelities: search on {search.fidelity}, confirmation on {wide_r.fidelity}" in text
    assert f"finding: {conf.sentence}" in text
    # report: both fidelities
    rep, paths = make_report("f", root=tmp_path, out=tmp_path / "reports")
    md = paths["summary.md"].read_text()
    assert f"confirmation recipe (tiny3): {wide_r.fidelity}" in md and f"on {search.fidelity}" in md
    assert "Two fidelities: the search ranked designs on" in md and "Two fidelities" in paths["report.html"].read_text()
    # compare: the confirmation's recipe, its runs reused (nothing trained)
    before = {k for k in open_study("f", root=tmp_path).user_attrs if k.startswith("run:")}
    res = compare("f", root=tmp_path, out=tmp_path / "reports", latency_repeats=1, log=lambda *_: None)
    assert res["recipe"]["epochs"] == 3 and res["recipe_name"] == "tiny3" and res["seeds"] == seeds
    assert res["finding"].startswith(f"On {wide_r.fidelity}: ")
    assert {k for k in open_study("f", root=tmp_path).user_attrs if k.startswith("run:")} == before
    # export --best: the confirmation's answer, retrained under the confirmation's recipe: that run exactly
    answer = conf.best
    mf = read_model(export_study("f", tmp_path / "best.senas", root=tmp_path))
    assert mf.arch == answer.arch and mf.meta["recipe"]["epochs"] == 3 and mf.meta["seed"] == CONFIRM_SEED
    assert mf.meta["accuracy"] == answer.accuracies[0]
    # continued with another confirmation recipe: confirmed again under it; the first one's runs untouched
    other = tmp_path / "tiny3b.yaml"
    other.write_text(yaml.safe_dump({**wide_r.to_dict(), "max_train_samples": 300}))
    other_r = load_recipe(str(other))
    capsys.readouterr()
    run_search(tiny_search(study="f", n_trials=4, calibration_seeds=2, confirm_top=2, confirm_min_seeds=2,
                           confirm_max_seeds=2, confirm_recipe=str(other)))
    study = open_study("f", root=tmp_path)
    again = read_confirmation(study)
    assert again.recipe_name == "tiny3b" and again.fidelity == other_r.fidelity and again.complete
    assert stored_runs(study, recipe_key(wide_r)) == confirmed
    assert {(d.id, s) for d in again.designs for s in seeds} == set(stored_runs(study, recipe_key(other_r)))


@pytest.mark.slow
def test_a_two_fidelity_search_from_the_command_line(tmp_path, capsys):
    wide = tmp_path / "tiny3.yaml"
    wide.write_text(yaml.safe_dump({**load_recipe("tiny").to_dict(), "epochs": 3}))
    argv = ["search", "--space", "tiny", "--recipe", "tiny", "--n-trials", "3", "--calibration-seeds", "2",
            "--confirm-top", "1", "--confirm-max-seeds", "3", "--confirm-recipe", str(wide), "--study", "cli",
            "--root", str(tmp_path), "--quiet"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    fid = load_recipe(str(wide)).fidelity
    assert f"finding: On {fid}: " in out and "two fidelities: search on digits (400 training images) 8 px" in out
    assert cli.main(["report", "cli", "--root", str(tmp_path), "--out", str(tmp_path / "reports")]) == 0
    assert f"finding: On {fid}: " in capsys.readouterr().out


def test_a_bad_confirm_recipe_is_one_line_naming_the_flag(tmp_path, capsys):
    argv = ["search", "--space", "tiny", "--recipe", "tiny", "--confirm-recipe", "no-such-recipe",
            "--root", str(tmp_path)]
    assert cli.main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--confirm-recipe" in err and "no-such-recipe" in err
    assert "digits-wide" in err  # what is allowed
    with pytest.raises(RecipeError, match="confirm_recipe"):
        from se_nas.search.stages import SearchConfig

        SearchConfig(space="tiny", recipe="tiny", confirm_recipe="no-such-recipe", root=tmp_path)


def test_a_tie_keeps_the_choice_unless_the_tied_design_dominates_it(tmp_path, confirmed_study):
    # r=16 SE (dearer) ties X on the confirmation: no reason to change the answer. The plain backbone (cheaper)
    # tying X dominates it: a dominated choice is never the answer, at either fidelity.
    from se_nas.search.confirm import chosen_design, read_confirmation

    same = [0.96, 0.965, 0.97]
    study, _ = _two_fidelity_study(confirmed_study, {"chosen": same, "r16": list(same), "plain": [0.90, 0.905, 0.91]})
    conf = read_confirmation(study)
    assert conf.best.arch == X and "still the best confirmed design" in conf.sentence
    assert chosen_design(study, front=True)[0].arch == X
    study, _ = _two_fidelity_study(confirmed_study, {"chosen": same, "r16": [0.90, 0.905, 0.91], "plain": list(same)},
                                   "two-b")
    conf = read_confirmation(study)
    assert conf.dominated_by.arch == PLAIN and conf.best.arch == PLAIN
    assert chosen_design(study, front=True)[0].arch == PLAIN


def test_search_help_shows_the_two_fidelity_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["search", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "se-nas search --budget-gflops 4 --confirm-recipe digits-wide" in out and "--confirm-recipe RECIPE" in out
