"""Per-design records, measured noise, paired differences and the one-sentence finding, by hand."""
import html
import math
import re
import statistics

import pytest
from scipy import stats

from se_nas.design.arch import PRESETS, Arch, StageSE, baseline_arch, plain_arch
from se_nas.search.confirm import detectable, seeds_needed
from se_nas.record.results import (Design, Noise, best_design, design_front, finding, group_designs, measure_noise,
                            paired_difference)

PLAIN = PRESETS["resnet50"]
R16 = PRESETS["se_resnet50"]
X = Arch("resnet50", (None, StageSE(8), StageSE(16, "max"), None))


def test_group_designs_is_one_record_per_design_with_mean_and_sem():
    runs = [(X, 3.87, 26.0, 0.95, 0, 0), (PLAIN, 3.86, 25.6, 0.90, 1, 1), (X, 3.87, 26.0, 0.97, 2, 2),
            (X, 3.87, 26.0, 0.99, 2, 5)]  # seed 2 again: the same run, counted once
    x, plain = group_designs(runs)
    assert x.id == X.id and x.accuracies == (0.95, 0.97) and x.seeds == (0, 2) and x.trials == (0, 2)
    assert x.mean == pytest.approx(0.96) and x.mean != max(x.accuracies)
    assert x.std == pytest.approx(statistics.stdev([0.95, 0.97]))
    assert x.sem() == pytest.approx(x.std / math.sqrt(2))
    noise = Noise(0.03, 10, 4)
    assert x.sem(noise) == pytest.approx(0.03 / math.sqrt(2))  # the pooled noise has more degrees of freedom
    assert plain.n == 1 and math.isnan(plain.sem()) and plain.sem(noise) == pytest.approx(0.03)
    assert x.describe(noise) == "0.9600 ± 0.0212 (2 seeds)"


def test_front_and_best_use_means_never_a_lucky_seed():
    lucky = Design(X, 3.87, 26.0, (0.99, 0.90, 0.91))  # max 0.99, mean 0.933
    steady = Design(PLAIN, 3.87, 26.0, (0.95, 0.94, 0.96))  # mean 0.95, same cost
    assert [d.id for d in design_front([lucky, steady])] == [PLAIN.id]
    assert best_design([lucky, steady]).id == PLAIN.id
    assert best_design([lucky, steady], max_gflops=3.0) is None


def test_noise_is_the_pooled_within_design_std_by_hand():
    finals = {"a": [0.90, 0.92, 0.94], "b": [0.80, 0.84], "c": [0.7]}
    hists = {"a": [(0.5, 0.90), (0.6, 0.92), (0.4, 0.94)], "b": [(0.3, 0.80), (0.5, 0.84)], "c": [(0.2,)]}
    n = measure_noise(hists, finals)
    ss = (0.02 ** 2 + 0 + 0.02 ** 2) + (0.02 ** 2 * 2)  # sum of squared deviations within a and b
    assert n.df == 3 and n.designs == 2 and n.sigma == pytest.approx(math.sqrt(ss / 3))
    ss1 = (0.0 + 0.01 + 0.01) + (0.01 + 0.01)  # epoch 1: a = 0.5, 0.6, 0.4; b = 0.3, 0.5
    assert n.per_epoch[1] == pytest.approx(math.sqrt(ss1 / 3)) and n.per_epoch_df[1] == 3
    assert measure_noise({"a": [(0.5,)]}, {"a": [0.5]}).sigma is None


def test_paired_difference_against_scipy_and_hand_formula():
    a, b = [0.95, 0.96, 0.93, 0.97], [0.94, 0.93, 0.93, 0.94]
    d = paired_difference(a, b)
    diffs = [x - y for x, y in zip(a, b)]
    assert d.mean == pytest.approx(statistics.fmean(diffs))
    assert d.se == pytest.approx(statistics.stdev(diffs) / 2)
    ref = stats.ttest_rel(a, b)
    assert d.t == pytest.approx(ref.statistic) and d.p == pytest.approx(ref.pvalue) and d.n == 4
    assert paired_difference([0.5], [0.4]).p is None
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([0.5, 0.6], [0.4])


def _design(arch, accs, g=3.87, p=26.0):
    return Design(arch, g, p, tuple(accs), tuple(range(1000, 1000 + len(accs))))


def test_finding_for_a_design_that_wins():
    chosen = _design(X, [0.97, 0.98, 0.97, 0.99, 0.98], 3.865, 25.7)
    r16 = _design(R16, [0.95, 0.95, 0.96, 0.96, 0.95], 3.872, 28.07)
    plain = _design(PLAIN, [0.94, 0.95, 0.94, 0.95, 0.95], 3.858, 25.56)
    vs_r16 = paired_difference(chosen.accuracies, r16.accuracies)
    vs_plain = paired_difference(chosen.accuracies, plain.accuracies)
    s = finding(chosen, r16, plain, vs_r16, vs_plain, Noise(0.006, 20, 5))
    assert vs_r16.significant and vs_plain.significant
    assert s.startswith(f"Design {X.id}") and f"beats r=16 SE by +0.024 ± " in s and "5 seeds" in s
    assert "2.37M fewer parameters" in s and "beats the plain backbone" in s and "± 0.006" in s


def test_finding_when_nothing_is_distinguishable():
    chosen = _design(X, [0.95, 0.97, 0.94])
    r16 = _design(R16, [0.96, 0.95, 0.95])
    plain = _design(PLAIN, [0.94, 0.96, 0.96])
    s = finding(chosen, r16, plain, paired_difference(chosen.accuracies, r16.accuracies),
                paired_difference(chosen.accuracies, plain.accuracies), Noise(0.011, 8, 3))
    assert s.startswith("No SE design is distinguishable from the plain backbone or r=16 SE at this proxy's seed "
                        "noise (± 0.011)") and X.id in s and "p = " in s


def test_finding_when_the_chosen_design_is_the_plain_backbone_or_r16():
    plain = _design(PLAIN, [0.95, 0.96, 0.95])
    r16 = _design(R16, [0.95, 0.95, 0.96])
    vs = paired_difference(plain.accuracies, r16.accuracies)
    s = finding(plain, r16, plain, vs, None, Noise(0.011, 8, 3))
    assert s.startswith("The best design is the plain backbone (no SE)") and "no SE design is distinguishable" in s
    s = finding(r16, r16, plain, None, paired_difference(r16.accuracies, plain.accuracies), Noise(0.011, 8, 3))
    assert s.startswith("The best design is the fixed r=16 SE,")
    bad16 = _design(R16, [0.91, 0.92, 0.90])  # r=16 clearly worse than no SE
    s = finding(plain, bad16, plain, paired_difference(plain.accuracies, bad16.accuracies), None, Noise(0.011, 8, 3))
    assert "r=16 SE is worse by -0.043" in s and "does not pay" in s


def test_finding_names_mobilenet_v3s_own_se_never_r16():
    # MobileNetV3-Large is compared against its own SE (r=4, hard-sigmoid, after the depthwise, in the stages
    # Howard et al. chose), not the paper's r=16: every form of the sentence must say so.
    own = baseline_arch(PRESETS["mobilenet_v3_large_plain"])
    assert own.stages[2].reduction == 4 and own.stages[2].gate == "hardsigmoid" and own.stages[0] is None
    plain = _design(plain_arch(own), [0.94, 0.95, 0.94, 0.95, 0.95], 0.217, 5.48)
    ref = _design(own, [0.95, 0.95, 0.96, 0.96, 0.95], 0.219, 5.48)
    x = _design(Arch("mobilenet_v3_large", (None,) * 5 + (StageSE(8),)), [0.97, 0.98, 0.97, 0.99, 0.98], 0.218, 5.2)
    bad = _design(own, [0.91, 0.92, 0.90, 0.91, 0.90], 0.219, 5.48)
    pd = paired_difference
    sentences = [
        finding(x, ref, plain, pd(x.accuracies, ref.accuracies), pd(x.accuracies, plain.accuracies), Noise(0.006, 20, 5)),
        finding(x, ref, plain, pd(x.accuracies, x.accuracies[::-1]), pd(x.accuracies, x.accuracies[1:] + x.accuracies[:1]),
                Noise(0.011, 8, 3)),
        finding(x, ref, plain, None, None, Noise(None, 0, 0)),
        finding(plain, ref, plain, pd(plain.accuracies, ref.accuracies), None, Noise(0.011, 8, 3)),
        finding(plain, bad, plain, pd(plain.accuracies, bad.accuracies), None, Noise(0.011, 8, 3)),
        finding(plain, ref, plain, None, None, Noise(0.011, 8, 3)),
        finding(ref, ref, plain, None, pd(ref.accuracies, plain.accuracies), Noise(0.011, 8, 3)),
    ]
    for s in sentences:
        assert "r=16" not in s and "MobileNetV3's own SE" in s, s
    assert "beats MobileNetV3's own SE by +0.024" in sentences[0]
    assert sentences[-1].startswith("The best design is the fixed MobileNetV3's own SE,")


def test_seeds_needed_and_detectable_effect():
    assert seeds_needed(Noise(None, 0, 0)) == 5
    assert seeds_needed(Noise(0.001, 10, 3)) == 3  # quiet proxy: the minimum
    assert seeds_needed(Noise(0.011, 10, 3)) == 5  # digits-like noise: capped
    assert seeds_needed(Noise(0.006, 10, 3), hi=8) == math.ceil((2.8 * math.sqrt(2) * 0.006 / 0.01) ** 2) == 6
    assert detectable(Noise(0.011, 10, 3), 5) == pytest.approx(2.8 * math.sqrt(2) * 0.011 / math.sqrt(5))


@pytest.mark.slow
def test_a_mobilenet_v3_search_compare_and_report_name_its_own_se(tmp_path, capsys):
    # A real MobileNetV3-Large search (calibration, trials, confirmation; the tiny recipe on a tiny space),
    # its summary, compare and report: every text names the design it is compared against, MobileNetV3's
    # own SE, and none says r=16.
    import dataclasses

    from se_nas.design.budget import Budget
    from se_nas.products.compare import compare
    from se_nas.design.recipe import load_recipe
    from se_nas.products.report import make_report
    from se_nas.search.stages import SearchConfig, run_search

    space = tmp_path / "mb.yaml"
    space.write_text("name: mb\nbackbone: mobilenet_v3_large\nse_bias: true\nchoices:\n  enabled: [true, false]\n"
                     "  reduction: [8]\n  squeeze: [avg]\n  gate: [sigmoid]\n  position: [standard]\n")
    # the smallest tiny-recipe variant found on which MobileNetV3 learns (on the tiny recipe itself it
    # scores chance, 0.100, and a trial at chance is no result: nothing to confirm or compare)
    recipe = dataclasses.replace(load_recipe("tiny"), epochs=3, rungs=(), max_train_samples=800, image_size=16,
                                 width=0.25, optimizer="adamw", lr=0.003)
    run_search(SearchConfig(study="mb", space=str(space), recipe=recipe, budget=Budget(), n_trials=2, root=tmp_path,
                            progress=True, calibration_seeds=2, confirm_top=1, confirm_min_seeds=2,
                            confirm_max_seeds=2))
    summary_out = capsys.readouterr().out
    res = compare("mb", root=tmp_path, out=tmp_path / "reports", latency_repeats=1, log=lambda *_: None)
    arms = {a["role"]: a for a in res["arms"]}
    own = baseline_arch(Arch.from_dict(res["arms"][0]["arch"]))
    assert own.stages[2] == StageSE(4, gate="hardsigmoid", position="after_3x3")  # what the name claims
    assert arms["r16"]["arch_id"] == own.id and arms["r16"]["name"] == "MobileNetV3's own SE baseline"
    assert "vs_r16" in res  # the stored keys stay
    md = (tmp_path / "reports" / "mb" / "compare.md").read_text()
    rep, paths = make_report("mb", root=tmp_path, out=tmp_path / "reports")
    assert [m.name for m in rep.markers] == ["MobileNetV3's own SE baseline", "plain backbone"]  # the plots' legends
    page, summary = paths["report.html"].read_text(), paths["summary.md"].read_text()
    assert re.search(rf"\n  MobileNetV3's own SE {own.id} ", summary_out)  # the confirmed designs after the search
    assert "Δ acc vs MobileNetV3's own SE |" in md and "against the fixed MobileNetV3's own SE baseline" in md
    assert "Δ accuracy vs MobileNetV3&#x27;s own SE" in page and f"(MobileNetV3's own SE) |" in summary
    page = html.unescape(re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page))  # figures: via rep.markers
    for text in (res["finding"], summary_out, md, page, summary):
        assert "MobileNetV3's own SE" in text and "r=16" not in text and "r16" not in text.replace("vs_r16", "")


# --- the confirmed front: a choice another confirmed design dominates is not the answer ------------------------
def test_the_default_searchs_confirmed_choice_is_not_dominated_and_its_finding_is_unchanged():
    # The default search's confirmation (reports/example/compare.json, 5 seeds each): ebefee2350 beats r=16 by
    # +0.037 and the plain backbone by +0.006, and the next front designs cost more: nothing dominates it.
    from se_nas.record.results import dominators

    chosen = Arch("resnet50", (None, StageSE(2, "avgmax", "sigmoid", "after_3x3"),
                               StageSE(2, "avgmax", "tanh", "after_3x3"), None))
    assert chosen.id == "ebefee2350"
    seeds = (1000, 1001, 1002, 1003, 1004)
    c = Design(chosen, 3.860639744, 26.015784, (0.9498607242339833, 0.9637883008356546, 0.9665738161559888,
                                                0.9665738161559888, 0.9554317548746518), seeds)
    r16 = Design(R16, 3.871627264, 28.071976, (0.9052924791086351, 0.9192200557103064, 0.9275766016713092,
                                              0.9275766016713092, 0.9387186629526463), seeds)
    plain = Design(PLAIN, 3.8580736, 25.557032, (0.9498607242339833, 0.9498607242339833, 0.9526462395543176,
                                                0.958217270194986, 0.9637883008356546), seeds)
    f2 = Design(Arch("resnet50", (StageSE(4, "avgmax", "hardsigmoid", "pre"), None, None, None)), 3.8636, 25.625,
                (0.9582,) * 5, seeds)
    f3 = Design(Arch("resnet50", (None, StageSE(32, "none", "tanh", "identity"), None, None)), 3.9111, 25.623,
                (0.9554,) * 5, seeds)
    designs = [c, f2, f3, r16, plain]
    assert dominators(c, design_front(designs)) == [] and c in design_front(designs)
    noise = Noise(0.008794548065911591, 22, 7)
    vs_r16, vs_plain = paired_difference(c.accuracies, r16.accuracies), paired_difference(c.accuracies, plain.accuracies)
    assert finding(c, r16, plain, vs_r16, vs_plain, noise) == (
        "Design ebefee2350 (resnet50 - | r2/amx/sig/3x3 | r2/amx/tanh/3x3 | -) beats r=16 SE by +0.037 ± 0.005 "
        "(p = 0.0021, 5 seeds) with 2.06M fewer parameters and 0.011 fewer GFLOPs; it is not distinguishable from "
        "the plain backbone (+0.006 ± 0.004 (p = 0.27, 5 seeds), with 0.46M more parameters and 0.003 more GFLOPs). "
        "Seed noise of the proxy: ± 0.009.")


def test_a_choice_the_plain_backbone_dominates_is_said_so_and_never_called_the_best():
    from se_nas.record.results import dominators

    chosen = _design(X, [0.93, 0.94, 0.935], 3.865, 25.7)
    r16 = _design(R16, [0.95, 0.955, 0.95], 3.872, 28.07)  # more accurate, but costs more: on the front too
    plain = _design(PLAIN, [0.945, 0.95, 0.948], 3.858, 25.56)  # more accurate AND cheaper: dominates X
    front = design_front([chosen, r16, plain])
    assert chosen not in front and dominators(chosen, front) == [plain]
    vs_r16, vs_plain = paired_difference(chosen.accuracies, r16.accuracies), paired_difference(chosen.accuracies, plain.accuracies)
    s = finding(chosen, r16, plain, vs_r16, vs_plain, Noise(0.006, 20, 5), plain,
                paired_difference(plain.accuracies, chosen.accuracies), best_design(front))
    assert s.startswith(f"The search's choice, design {X.id} ({X.label}), is dominated on the confirmed front: the "
                        "plain backbone is more accurate by +0.013") and "0.14M fewer parameters" in s, s
    assert "the answer, is the fixed r=16 SE, 0.952" in s and "the best" not in s.lower()


def _confirmed_study(confirmed_study, accs: dict):
    """X, then r=16 and the plain backbone as search trials, X the most accurate in the search; then a
    stored confirmation of the three over 3 seeds with accuracies ``accs``."""
    return confirmed_study("dom", (X, R16, PLAIN), accs)


def test_a_study_whose_baseline_dominates_its_choice_says_so_and_exports_the_front(tmp_path, confirmed_study):
    # The search chose X (0.97 on one seed); under the confirmation's fresh seeds the plain backbone, cheaper in
    # GFLOPs and parameters, is more accurate: the finding says the choice lost, and --best takes the plain backbone.
    from se_nas.search.confirm import chosen_design, export_choice, read_confirmation

    study = _confirmed_study(confirmed_study, {"chosen": [0.93, 0.94, 0.935], "r16": [0.90, 0.905, 0.91],
                                        "plain": [0.945, 0.95, 0.948]})
    conf = read_confirmation(study)
    assert conf.chosen.arch == X and conf.dominated_by.arch == PLAIN and X.id not in {d.id for d in conf.front}
    # the finding names the fidelity its figures come from: the study's recipe, tiny
    assert conf.sentence.startswith(f"On digits (400 training images) 8 px, width 0.125, 2 epochs: the search's "
                                    f"choice, design {X.id}") and "dominated" in conf.sentence
    assert "the answer is the plain backbone" in conf.sentence and "the best" not in conf.sentence.lower()
    assert chosen_design(study)[0].arch == X  # compare still measures the search's choice against the baselines
    design, why = chosen_design(study, front=True)
    assert design.arch == PLAIN and "confirmed front" in why and f"{X.id} is dominated by {PLAIN.id}" in why
    arch, seed, tag, info = export_choice(study)
    assert arch == PLAIN and seed == 1000 and tag == f"design-{PLAIN.id}-s1000"
    assert info["design_accuracy"] == pytest.approx(statistics.fmean([0.945, 0.95, 0.948]))
    # compare measures the search's choice against the baselines (the stored runs: nothing trained), and its
    # finding, which the report leads with, says the same
    from se_nas.products.compare import compare

    res = compare("dom", root=tmp_path, out=tmp_path / "reports", latency_repeats=1, log=lambda *_: None)
    assert res["arms"][0]["arch_id"] == X.id and res["finding"].startswith(f"On digits (400 training images) 8 px, "
                                                                           f"width 0.125, 2 epochs: the search's choice, design {X.id}")
    assert "the answer is the plain backbone" in res["finding"]


def test_a_study_whose_choice_is_on_the_confirmed_front_exports_the_choice(tmp_path, confirmed_study):
    from se_nas.search.confirm import chosen_design, export_choice, read_confirmation

    study = _confirmed_study(confirmed_study, {"chosen": [0.96, 0.965, 0.97], "r16": [0.90, 0.905, 0.91],
                                        "plain": [0.945, 0.95, 0.948]})
    conf = read_confirmation(study)
    assert conf.dominated_by is None and "dominated" not in conf.sentence
    assert chosen_design(study)[0].arch == X and export_choice(study)[0] == X
