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
    recipe = dataclasses.replace(load_recipe("tiny"), epochs=1, rungs=(), max_train_samples=64)
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
