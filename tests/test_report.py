"""The study report: built from a real Optuna study, checked against hand counts and a plain loop,
and the written page opened in a real headless browser where Chromium is installed."""
import html
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

from se_nas.design.arch import Arch, StageSE, baseline_arch, plain_arch
from se_nas.design.cost import count_cost
from se_nas.record.storage import latest_study, open_study
from se_nas.record.study import StudyError, TrialOutcome
from se_nas.products.report import build_report, choice_frequencies, make_report
from se_nas.products.report_plots import _choice_plot, _pareto_plot, _plt

optuna.logging.set_verbosity(optuna.logging.WARNING)
CAT = optuna.distributions.CategoricalDistribution
R = [4, 8, 16, 32]
SQ = ["avg", "max"]


def _arch_params(rng):
    params, dists, stages = {}, {}, []
    for s in range(4):
        on = rng.random() < 0.7
        params[f"s{s}_se"], dists[f"s{s}_se"] = on, CAT([True, False])
        if on:
            r, q = rng.choice(R), rng.choice(SQ)
            params[f"s{s}_r"], dists[f"s{s}_r"] = r, CAT(R)
            params[f"s{s}_squeeze"], dists[f"s{s}_squeeze"] = q, CAT(SQ)
            stages.append(StageSE(r, q))
        else:
            stages.append(None)
    return Arch("resnet50", tuple(stages)), params, dists


def add(study, arch, params, dists, status, accuracy=None, reason="", seed=None):
    c = count_cost(arch)
    o = TrialOutcome(arch=arch, status=status, gflops=c.gflops, mparams=c.mparams, accuracy=accuracy,
                     epochs=2 if status == "complete" else 0, reason=reason,
                     seed=len(study.trials) if seed is None else seed)
    state = optuna.trial.TrialState.FAIL if status == "failed" else optuna.trial.TrialState.COMPLETE
    study.add_trial(optuna.trial.create_trial(values=o.values, user_attrs=o.to_attrs(), params=params,
                                              distributions=dists, state=state))


def make_study(tmp_path, name="s1", n=24, seed=0):
    rng = random.Random(seed)
    study = open_study(name, root=tmp_path / "trials", create=True)
    study.set_user_attr("budget", {"max_gflops": None, "max_mparams": 30.0})
    study.set_user_attr("deploy", {"image_size": 224, "num_classes": 1000})
    for i in range(n):
        arch, p, d = _arch_params(rng)
        c = count_cost(arch)
        if c.mparams > 30.0:
            add(study, arch, p, d, "over_budget", reason=f"over budget ({c.mparams:.2f}M > 30M params), not trained")
        elif i % 7 == 3:
            add(study, arch, p, d, "failed", reason="loss became nan at epoch 1 step 3")
        elif i % 5 == 4:
            add(study, arch, p, d, "stopped_early", accuracy=rng.uniform(0.1, 0.5), reason="stopped early at epoch 1")
        else:
            add(study, arch, p, d, "complete", accuracy=round(rng.uniform(0.5, 0.95), 3))
    return study


def test_no_completed_trial_is_a_clear_error(tmp_path):
    study = open_study("empty", root=tmp_path / "trials", create=True)
    with pytest.raises(StudyError, match="no completed trial"):
        build_report("empty", root=tmp_path / "trials", out=tmp_path / "reports")
    arch, p, d = _arch_params(random.Random(1))
    add(study, arch, p, d, "failed", reason="out of memory")
    with pytest.raises(StudyError, match=r"no completed trial yet \(1 failed\)"):
        build_report("empty", root=tmp_path / "trials", out=tmp_path / "reports")


def test_front_is_over_completed_trials_only(tmp_path):
    study = make_study(tmp_path)
    # an over-budget design that would dominate everything if it counted
    big = Arch("resnet50", (StageSE(1, "none"),) * 4)
    c = count_cost(big)
    o = TrialOutcome(arch=big, status="over_budget", gflops=0.01, mparams=0.01, accuracy=None)
    study.add_trial(optuna.trial.create_trial(values=[0.99, 0.01, 0.01], user_attrs={**o.to_attrs(), "accuracy": 0.99},
                                              params={}, distributions={}))
    rep = build_report("s1", root=tmp_path / "trials", out=tmp_path / "reports")
    f = rep.frame
    done = f[f.status == "complete"]
    # plain loop: a completed trial is on the front unless another completed trial is at least as
    # accurate, no more expensive in both costs, and strictly better in one
    want = []
    for _, a in f.iterrows():
        if a.status != "complete":
            want.append(False)
            continue
        beaten = any(b.accuracy >= a.accuracy and b.gflops <= a.gflops and b.mparams <= a.mparams
                     and (b.accuracy > a.accuracy or b.gflops < a.gflops or b.mparams < a.mparams)
                     for _, b in done.iterrows())
        want.append(not beaten)
    assert f.pareto.tolist() == want
    assert rep.n_best >= 1
    # hypervolume never decreases, and is 0 until the first completed trial
    assert np.all(np.diff(rep.hypervolume) >= -1e-12)
    first = int(np.argmax((f.status == "complete").to_numpy()))
    assert np.all(rep.hypervolume[:first] == 0) and rep.hypervolume[first] > 0
    assert 0 < rep.hypervolume[-1] <= 1
    assert rep.reference[2] == 30.0  # the budget bounds the hypervolume box
    assert (f.status == "over_budget").sum() >= 2 and not f[f.status == "over_budget"].pareto.any()


def test_choice_frequencies_by_hand():
    a = Arch("resnet18", (StageSE(8), None, StageSE(16, "max"), None))
    b = Arch("resnet18", (StageSE(8, "max"), StageSE(4), None, None))
    c = Arch("resnet18", (None, StageSE(4), StageSE(16), None))
    freq = choice_frequencies([a, b, c], [True, True, False])
    def get(stage, axis, value, col="best"):
        row = freq[(freq.stage == stage) & (freq.axis == axis) & (freq.value == value)]
        return float(row[col].iloc[0]) if len(row) else 0.0
    assert get(1, "reduction", "8") == 1.0 and get(1, "reduction", "off") == 0.0
    assert get(1, "squeeze", "avg") == 0.5 and get(1, "squeeze", "max") == 0.5
    assert get(2, "reduction", "off") == 0.5 and get(2, "reduction", "4") == 0.5
    assert get(1, "reduction", "off", "all") == pytest.approx(1 / 3)
    assert get(4, "gate", "off") == 1.0
    # shares of one stage and axis add up to 1
    assert np.allclose(freq.groupby(["stage", "axis"]).best.sum(), 1.0)


@pytest.mark.slow
def test_written_report_is_complete_and_offline(tmp_path):
    make_study(tmp_path, "older", n=6, seed=5)
    make_study(tmp_path, "s1")
    assert latest_study(tmp_path / "trials") == "s1"
    rep, paths = make_report("s1", root=tmp_path / "trials", out=tmp_path / "reports")  # two studies: named
    out = tmp_path / "reports" / "s1"
    for name in ("report.html", "summary.md", "trials.csv", "pareto_gflops.png", "pareto_mparams.png",
                 "hypervolume.png", "choices.png", "importance.png"):
        assert (out / name).stat().st_size > 0, name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    # offline: nothing fetched from elsewhere; every image inline
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<link" not in page and page.count("data:image/png;base64,") == 5
    trials = page[page.index("<h2>All trials"):]
    assert trials.count("<tr") == len(rep.frame) + 1  # every trial plus the header
    # the search's front is a table on the page too, as in summary.md: its designs plus the header
    front = page[page.index("<h2>Search front (per design)"):page.index("<h2>Pareto front")]
    assert front.count("<tr") == rep.n_best + 1
    assert "loss became nan at epoch 1 step 3" in page and "over budget" in page and "stopped early" in page
    csv = (out / "trials.csv").read_text().splitlines()
    assert len(csv) == len(rep.frame) + 1 and csv[0].startswith("trial,status,arch_id,stage1")
    md = (out / "summary.md").read_text()
    assert md.count("\n| ") >= rep.n_best and "![accuracy against GFLOPs](pareto_gflops.png)" in md
    assert rep.importances and abs(sum(rep.importances.values()) - 1) < 1e-6
    # the importances carry the caveat that the digits proxy cannot separate working designs
    for text in (page, md):
        assert "not working SE designs from each other" in text and "What the built-in data can and cannot tell" in text


def test_baseline_and_plain_marked_from_compare_or_trials(tmp_path):
    study = make_study(tmp_path)
    base = baseline_arch(Arch.uniform("resnet50", None))
    add(study, base, {}, {}, "complete", accuracy=0.777)
    add(study, base, {}, {}, "complete", accuracy=0.701)  # a second seed of it: the marker is their mean
    rep = build_report("s1", root=tmp_path / "trials", out=tmp_path / "reports")
    assert [(m.name, m.accuracy, m.source) for m in rep.markers] == [
        ("r=16 SE baseline", pytest.approx(0.739), "mean of 2 search trials")]
    # once compare has run, its multi-seed means are used instead
    cmp = tmp_path / "reports" / "s1" / "compare.json"
    cmp.parent.mkdir(parents=True)
    plain = plain_arch(base)
    arms = [{"role": role, "arch_id": a.id, "accuracy_mean": acc, "gflops": count_cost(a).gflops,
             "mparams": count_cost(a).mparams} for role, a, acc in (("r16", base, 0.8), ("plain", plain, 0.7))]
    cmp.write_text(json.dumps({"seeds": [0, 1], "arms": arms}))
    cmp.with_suffix(".md").write_text("## Comparison\n\nchosen beats r=16\n")
    rep = build_report("s1", root=tmp_path / "trials", out=tmp_path / "reports")
    assert [(m.name, m.accuracy) for m in rep.markers] == [("r=16 SE baseline", 0.8), ("plain backbone", 0.7)]
    assert "chosen beats r=16" in make_report("s1", tmp_path / "trials", tmp_path / "reports")[1]["summary.md"].read_text()


@pytest.mark.slow
def test_cli(tmp_path, capsys):
    from se_nas import cli

    make_study(tmp_path, "s1", n=8)
    assert cli.main(["report", "--root", str(tmp_path / "trials"), "--out", str(tmp_path / "r")]) == 0
    assert "on the Pareto front" in capsys.readouterr().out and (tmp_path / "r" / "s1" / "report.html").exists()
    open_study("nothing", root=tmp_path / "trials", create=True)
    assert cli.main(["report", "nothing", "--root", str(tmp_path / "trials"), "--out", str(tmp_path / "r")]) == 2
    assert "has no completed trial yet" in capsys.readouterr().err


# --- the page as people read it ------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # .ci/run installs Debian's


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A small real study (the README's commands on the tiny space and recipe), compared and reported."""
    from se_nas import cli

    d = tmp_path_factory.mktemp("demo")
    trials, out = str(d / "trials"), str(d / "reports")
    assert cli.main(["search", "--space", "tiny", "--recipe", "tiny", "--budget-gflops", "1.815", "--n-trials", "6",
                     "--study", "demo", "--root", trials]) == 0
    assert cli.main(["compare", "demo", "--root", trials, "--out", out, "--seeds", "2", "--quiet"]) == 0
    assert cli.main(["report", "demo", "--root", trials, "--out", out]) == 0
    return d / "reports" / "demo"


@pytest.mark.slow
def test_comparison_is_html_tables_rendered_from_compare_json(demo, tmp_path):
    page = (demo / "report.html").read_text()
    cmp = json.loads((demo / "compare.json").read_text())
    section = page[page.index("<h2>Comparison"):page.index("<h2>All trials")]
    # no Markdown shows through: no <pre>, table pipes, headings or backticks
    assert "<pre" not in page and "|---" not in page and "| design |" not in page and "##" not in page
    assert "`" not in page
    rows = re.findall(r"<tr>(.*?)</tr>", section[section.index("<tbody>"):])
    assert len(rows) == len(cmp["arms"]) == 3
    for row, arm in zip(rows, cmp["arms"]):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        assert arm["arch_id"] in cells[1] and cells[2] == f"{arm['accuracy_mean']:.4f} ± {arm['accuracy_sem']:.4f}"
        assert cells[3] == str(arm["n"]) == str(len(cmp["seeds"]))  # every design over the same seeds
        assert cells[4] == f"{arm['gflops']:.4f}" and cells[6].startswith(f"{arm['latency_mean']:.3f}")
        for col, ref in ((7, "vs_r16"), (9, "vs_plain")):
            test = cmp[ref].get(arm["role"])
            assert cells[col] == ("" if test is None else
                                  f"{test['accuracy']['diff_mean']:+.4f} ± {test['accuracy']['diff_se']:.4f}")
    assert f"Finding:</strong> {html.escape(cmp['finding'])}" in section
    # the latency column says whose latency it is: the small proxy's, not the deployment model's
    assert f"proxy latency ms, {cmp['recipe']['image_size']} px, {cmp['threads']} thread" in section
    assert "times the small proxy, not the deployment model" in section
    # the intro is rendered from the data too: the trial count, the front's size
    rep = build_report("demo", root=demo.parents[1] / "trials", out=demo.parent)
    intro = page[page.index("</h1>"):page.index("<ul>")]
    assert f"{len(rep.frame)} trials:" in intro and f"front over per-design means: {rep.n_best} designs" in intro
    # the page reads compare.json, not compare.md: a different Markdown file changes nothing
    (demo / "compare.md").write_text("## something else\n\n| a | b |\n")
    rep2, paths = make_report("demo", root=demo.parents[1] / "trials", out=tmp_path)
    assert "Comparison against the fixed r=16 SE baseline" not in paths["report.html"].read_text()  # no compare here
    shutil.copy(demo / "compare.json", tmp_path / "demo" / "compare.json")
    rep2, paths = make_report("demo", root=demo.parents[1] / "trials", out=tmp_path)
    assert re.findall(r"<tr>.*?</tr>", paths["report.html"].read_text().split("<h2>Comparison")[1].split("<h2>")[0]) \
        == re.findall(r"<tr>.*?</tr>", section)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install "
                    "chromium); the report's browser check (scripts/check_report_browser.py) needs it")
def test_report_in_headless_chromium(demo, tmp_path):
    script = [sys.executable, str(REPO / "scripts" / "check_report_browser.py"), "--chromium", CHROMIUM]
    run = subprocess.run([*script, str(demo / "report.html"), "--screenshot", str(tmp_path / "shot.png")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    png = (tmp_path / "shot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 1400
    # the checker sees what it is there for: a copy that fetches an image and has a 3000 px line fails
    bad = (demo / "report.html").read_text().replace(
        "<h2>All trials", '<img src="http://127.0.0.1:9/x.png"><pre>' + "x" * 3000 + "</pre><h2>All trials")
    (tmp_path / "bad.html").write_text(bad)
    run = subprocess.run([*script, str(tmp_path / "bad.html"), "--screenshot", str(tmp_path / "bad.png")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "horizontal overflow at 1400 px" in run.stderr and "pre (" in run.stderr
    assert "requested 1 resource(s): http://127.0.0.1:9/x.png" in run.stderr
    # ... and so does a table cut off in its scrolling box (a 3000 px trial state)
    clipped = (demo / "report.html").read_text().replace('<td class="state">complete', '<td>' + "y" * 3000, 1)
    (tmp_path / "clipped.html").write_text(clipped)
    run = subprocess.run([*script, str(tmp_path / "clipped.html"), "--screenshot", str(tmp_path / "c.png")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "a table is cut off at 1400 px (it scrolls sideways): All trials (" in run.stderr


# --- figures -------------------------------------------------------------------------------------
def _pixels(fig):
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)


@pytest.mark.slow
def test_a_trial_under_a_reference_marker_stays_visible(tmp_path):
    study = make_study(tmp_path)
    plain = plain_arch(Arch.uniform("resnet50", None))
    add(study, plain, {}, {}, "complete", accuracy=0.99)  # cheapest and most accurate: on the front
    rep = build_report("s1", root=tmp_path / "trials", out=tmp_path / "reports")
    marker = next(m for m in rep.markers if m.name == "plain backbone")
    plt = _plt()
    for col in ("gflops", "mparams"):
        fig = _pareto_plot(plt, rep, col, col)
        ax = fig.axes[0]
        img = _pixels(fig)
        x, y = ax.transData.transform((getattr(marker, col), marker.accuracy))
        centre = img[img.shape[0] - int(round(y)), int(round(x))]
        # the front's red (#c0392b) shows at the marker's centre
        assert np.abs(centre - (0xc0, 0x39, 0x2b)).max() < 40, (col, centre)
        plt.close(fig)


def test_legends_sit_outside_the_axes(tmp_path):
    study = make_study(tmp_path)
    add(study, baseline_arch(Arch.uniform("resnet50", None)), {}, {}, "complete", accuracy=0.6)
    rep = build_report("s1", root=tmp_path / "trials", out=tmp_path / "reports")
    plt = _plt()
    for col in ("gflops", "mparams"):
        fig = _pareto_plot(plt, rep, col, col)
        fig.canvas.draw()
        ax = fig.axes[0]
        legend = ax.get_legend().get_window_extent()
        assert not legend.overlaps(ax.get_window_extent()), col
        plt.close(fig)


def test_choice_heatmaps_list_every_value_the_space_allows(tmp_path):
    from se_nas.design.space import load_space

    study = make_study(tmp_path)  # samples r in {4, 8, 16, 32}, squeeze avg/max, always the sigmoid gate
    space = load_space("resnet50-per-stage").to_dict()
    space["stages"][3]["reduction"] = [4, 8, 16, 32]  # as `s4: {reduction: [4, 8, 16, 32]}` stores it
    study.set_user_attr("space", space)
    rep = build_report("s1", root=tmp_path / "trials", out=tmp_path / "reports")
    assert "hardsigmoid" not in set(rep.choices.value) and "2" not in set(rep.choices.value)
    plt = _plt()
    fig = _choice_plot(plt, rep)
    labels = {ax.get_title(): [t.get_text() for t in ax.get_yticklabels()] for ax in fig.axes}
    for axis in ("reduction", "squeeze", "gate", "position"):
        allowed = {str(v) for st in space["stages"] for v in st[axis]} | {"off"}
        assert set(labels[axis]) == allowed, axis
    # a value one stage does not allow is marked there, not shown as 0%: r=2 in stage 4
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts.count("not allowed") == 1
    assert texts[labels["reduction"].index("2") * 4 + 3] == "not allowed"
    plt.close(fig)


# --- writing -------------------------------------------------------------------------------------
KILL_ON_SECOND_WRITE = """
import os, pathlib, signal, sys
from se_nas.products.report import make_report
writes = 0
real = {"bytes": pathlib.Path.write_bytes, "text": pathlib.Path.write_text}
def counting(kind):
    def write(self, data, *a, **k):
        global writes
        writes += 1
        if writes == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real[kind](self, data, *a, **k)
    return write
pathlib.Path.write_bytes, pathlib.Path.write_text = counting("bytes"), counting("text")
make_report("s1", root=sys.argv[1], out=sys.argv[2])
"""


@pytest.mark.slow
def test_a_killed_report_never_looks_complete(tmp_path):
    make_study(tmp_path, n=6)  # few completed trials: no importances, a quick report
    out = tmp_path / "reports"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = [sys.executable, "-c", KILL_ON_SECOND_WRITE, str(tmp_path / "trials"), str(out)]
    assert subprocess.run(child, env=env, capture_output=True).returncode == -signal.SIGKILL
    # killed while writing its second file: nothing of the new report is visible
    assert [p.name for p in (out / "s1").iterdir() if not p.name.startswith(".")] == []
    # a report that exists stays whole when a rewrite is killed
    rep, paths = make_report("s1", root=tmp_path / "trials", out=out)
    before = {p.name: p.read_bytes() for p in paths.values()}
    assert subprocess.run(child, env=env, capture_output=True).returncode == -signal.SIGKILL
    assert {p.name: p.read_bytes() for p in (out / "s1").iterdir() if not p.name.startswith(".")} == before
    # a finished run leaves no temporary files behind
    hidden = {p.name for p in (out / "s1").iterdir() if p.name.startswith(".")}
    make_report("s1", root=tmp_path / "trials", out=out)
    assert {p.name for p in (out / "s1").iterdir() if p.name.startswith(".")} == hidden


def test_study_names_outside_the_reports_folder_are_refused(tmp_path, capsys):
    from se_nas import cli

    base = tmp_path / "a" / "b"
    esc = (base / "trials" / "../../esc").resolve()  # a study that exists there (se-nas refuses to make one)
    esc.mkdir(parents=True)
    optuna.create_study(study_name="../../esc", storage=f"sqlite:///{esc}/study.db")
    for name in ("../../esc", ".hidden", "a/b", "a\\b"):
        assert cli.main(["report", name, "--root", str(base / "trials"), "--out", str(base / "reports")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and repr(name) in err and "must not be empty, contain '/'" in err
    assert not list(tmp_path.rglob("report.html")) and not list(tmp_path.rglob("*.png"))


# --- hostile and corrupted input -----------------------------------------------------------------
class _Elements(__import__("html.parser").parser.HTMLParser):
    """The element names of a page, as a browser's parser sees them."""

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


def _tags(page: str) -> list[str]:
    p = _Elements()
    p.feed(page)
    return p.tags


XSS = '<script>alert("x")</script>'


def _hostile_compare(base, plain) -> dict:
    def diff():
        return {"diff_mean": 0.01, "diff_se": 0.002, "t": 5.0, "p": 0.01, "note": XSS}
    arms = [{"role": role, "name": XSS, "arch_id": XSS, "label": XSS, "arch": {"backbone": XSS}, "trial": 3,
             "accuracy_mean": acc, "accuracy_sem": 0.01, "n": 2, "gflops": count_cost(a).gflops,
             "mparams": count_cost(a).mparams, "latency_mean": 1.0, "latency_std": 0.1}
            for role, a, acc in (("chosen", base, 0.81), ("r16", base, 0.8), ("plain", plain, 0.7))]
    return {"seeds": [0, 1], "arms": arms, "finding": XSS, "recipe_name": XSS, "machine": XSS, "device": XSS,
            "recipe": {"dataset": XSS, "stem": XSS, "image_size": 16, "width": 0.125, "epochs": 2},
            "deploy": {"image_size": 224, "num_classes": 1000}, "threads": 2,
            "vs_r16": {"chosen": {"accuracy": diff(), "latency_ms": diff()}},
            "vs_plain": {"chosen": {"accuracy": diff(), "latency_ms": None}}}


@pytest.mark.slow
def test_no_value_from_a_file_or_a_study_becomes_markup(tmp_path):
    study = make_study(tmp_path)
    base = baseline_arch(Arch.uniform("resnet50", None))
    add(study, base, {}, {}, "failed", reason=XSS)
    cmp = tmp_path / "reports" / "s1" / "compare.json"
    cmp.parent.mkdir(parents=True)
    cmp.write_text(json.dumps(_hostile_compare(base, plain_arch(base))))
    cmp.with_suffix(".md").write_text(f"## Comparison\n\n{XSS}\n")
    rep, paths = make_report("s1", root=tmp_path / "trials", out=tmp_path / "reports")
    page = paths["report.html"].read_text()
    assert "Comparison against the fixed" in page and page.count("&lt;script&gt;") >= 10
    # one script element: the page's own sorting script, which comes last
    assert _tags(page).count("script") == 1 and page.count("<script") == 1
    assert page.rindex("<script>") > page.rindex("&lt;script&gt;")


@pytest.mark.slow
@pytest.mark.parametrize("content, field", [
    ('{"seeds": [0], "arms": [{}]}', "arms[0].role is missing"),
    ('{"seeds": [0], "arms": [{"role": "r16", "arch_id": "a", "accuracy_mean": "0.8", "gflops": 1, "mparams": 1}]}',
     "arms[0].accuracy_mean must be a number, got '0.8'"),
    ('{"seeds": [0], "arms": [{"role": "r16", "arch_id": "a", "accuracy_mean": 0.8, "gflops": 1, "mparams": 1, '
     '"n": "<script>alert(1)</script>"}]}', "arms[0].n must be an integer, got '<script>alert(1)</script>'"),
    ('{"seeds": [0], "arms": [{"role": "boss", "arch_id": "a"}]}', "arms[0].role must be one of chosen, r16, plain"),
    ('{"seeds": "0", "arms": []}', "seeds must be a list of integers"),
    ('{"arms": {}}', "arms must be a list"),
    ('[1, 2]', "the file must hold an object"),
    ('{"arms": [], "vs_r16": {"chosen": {"accuracy": {"diff_mean": "big"}}}}',
     "vs_r16.chosen.accuracy.diff_mean must be a number"),
    ('{"arms": [], "recipe": {"dataset": "digits"}}', "recipe.stem is missing"),
    ('{"arms": [', "malformed JSON"),
])
def test_a_malformed_compare_json_is_one_line_naming_the_file(tmp_path, capsys, content, field):
    from se_nas import cli

    make_study(tmp_path, n=8)
    cmp = tmp_path / "reports" / "s1" / "compare.json"
    cmp.parent.mkdir(parents=True)
    cmp.write_text(content)
    assert cli.main(["report", "s1", "--root", str(tmp_path / "trials"), "--out", str(tmp_path / "reports")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and repr(str(cmp)) in err and field in err, err
    assert not (tmp_path / "reports" / "s1" / "report.html").exists()


def test_a_corrupted_trial_record_is_skipped_and_named(tmp_path, capsys):
    from se_nas import cli

    study = make_study(tmp_path, n=8)
    arch = Arch.uniform("resnet50", None)
    good = TrialOutcome(arch=arch, status="complete", gflops=4.0, mparams=25.0, accuracy=0.9, epochs=2).to_attrs()
    # records as a crash or a hand edit leaves them: an arch that is not JSON, an accuracy that is text
    for attrs in ({**good, "arch": '{"backbone": "resnet50", "stages": ['}, {**good, "accuracy": "0.8"}):
        study.add_trial(optuna.trial.create_trial(values=[0.9, 4.0, 25.0], user_attrs=attrs))
    assert cli.main(["report", "s1", "--root", str(tmp_path / "trials"), "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "warning: trial 8: its stored record is corrupted (arch: malformed JSON" in err
    assert "warning: trial 9: its stored record is corrupted (accuracy must be a number, got '0.8')" in err
    page = (tmp_path / "r" / "s1" / "report.html").read_text()
    md = (tmp_path / "r" / "s1" / "summary.md").read_text()
    for text in (page, md):
        assert "left out of this report" in text and "trial 8: its stored record is corrupted" in text
        assert "trial 9: its stored record is corrupted" in text
    assert "8 trials:" in md  # the other trials are all there
    # elsewhere the error names the trial instead of a bare parse error
    from se_nas.record.study import records
    with pytest.raises(StudyError, match="trial 8: its stored record is corrupted"):
        records(open_study("s1", root=tmp_path / "trials"))


@pytest.mark.slow
def test_every_renderer_shows_the_same_sections(demo):
    from se_nas.products.report_value import section_titles

    rep = build_report("demo", root=demo.parents[1] / "trials", out=demo.parent)
    page = (demo / "report.html").read_text()
    md = (demo / "summary.md").read_text()
    html_titles = [html.unescape(t) for t in re.findall(r"<h2>(.*?)</h2>", page)]
    md_titles = [line[3:] for line in md.splitlines() if line.startswith("## ")]
    assert html_titles == md_titles == section_titles(rep)
    assert "Search front (per design)" in html_titles and "All trials" in html_titles
    if rep.confirmation is not None:
        assert html_titles[0] == "Confirmed front"
        confirmed = page[page.index("<h2>Confirmed front"):page.index("<h2>Search front")]
        assert confirmed.count("<tr") == len(rep.confirmation.designs) + 1


def test_pareto_plots_zoom_on_the_front_when_broken_designs_stretch_the_axis(tmp_path):
    rng = random.Random(4)
    study = open_study("z", root=tmp_path / "trials", create=True)
    study.set_user_attr("deploy", {"image_size": 224, "num_classes": 1000})
    for i in range(16):  # designs that train (0.90-0.95) and designs that broke (about chance)
        arch, p, d = _arch_params(rng)
        add(study, arch, p, d, "complete", accuracy=round(rng.uniform(0.90, 0.95), 3) if i % 4 else 0.1 + i / 1000)
    rep = build_report("z", root=tmp_path / "trials", out=tmp_path / "reports")
    plt = _plt()
    fig = _pareto_plot(plt, rep, "gflops", "GFLOPs")
    assert len(fig.axes) == 2  # the full view, then the zoom
    lo, hi = fig.axes[1].get_ylim()
    # every front design that trained is in the zoom (a broken one can be on the front by being cheap)
    assert lo > 0.5 and all(lo < d.mean < hi for d in rep.front if d.mean > 0.5) and hi - lo < 0.2
    assert fig.axes[0].get_ylim()[0] < 0.11  # the full view still shows the broken designs
    plt.close(fig)


def _report_cli(capsys, *args):
    from se_nas import cli

    rc = cli.main(["report", *map(str, args)])
    return rc, capsys.readouterr()


def test_a_symlinked_study_folder_in_reports_is_refused(tmp_path, capsys):
    """A link at reports/STUDY sent the report outside the reports folder while se-nas printed
    "wrote reports/STUDY/": refused in one line, the place it points to untouched."""
    make_study(tmp_path, n=6)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "s1").symlink_to(elsewhere)
    rc, io = _report_cli(capsys, "s1", "--root", tmp_path / "trials", "--out", tmp_path / "reports")
    assert rc == 2 and io.out == "" and len(io.err.splitlines()) == 1
    assert "reports/s1' is a symbolic link" in io.err and "elsewhere" in io.err
    assert not any(elsewhere.iterdir())


@pytest.mark.slow
def test_a_link_at_a_report_file_is_not_written_through(tmp_path, capsys):
    make_study(tmp_path, n=6)
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "reports" / "s1").mkdir(parents=True)
    (tmp_path / "reports" / "s1" / "summary.md").symlink_to(victim)
    rc, io = _report_cli(capsys, "s1", "--root", tmp_path / "trials", "--out", tmp_path / "reports")
    assert rc == 2 and "summary.md' is a symbolic link" in io.err and victim.read_text() == "keep me"
    assert [p.name for p in (tmp_path / "reports" / "s1").iterdir()] == ["summary.md"]


def test_an_empty_study_file_is_no_study_and_stays_empty(tmp_path, capsys):
    """report and export on an empty study.db wrote Optuna's schema into it."""
    from se_nas import cli

    db = tmp_path / "trials" / "e" / "study.db"
    db.parent.mkdir(parents=True)
    db.touch()
    rc, io = _report_cli(capsys, "e", "--root", tmp_path / "trials", "--out", tmp_path / "reports")
    assert rc == 2 and len(io.err.splitlines()) == 1 and "no study 'e'" in io.err and "it is empty" in io.err
    assert cli.main(["export", "e", "--root", str(tmp_path / "trials"), "-o", str(tmp_path / "m.senas")]) == 2
    assert "no study 'e'" in capsys.readouterr().err
    assert db.stat().st_size == 0 and [p.name for p in db.parent.iterdir()] == ["study.db"]
    assert not (tmp_path / "reports").exists() and not (tmp_path / "m.senas").exists()
    # a --storage file that does not exist is not created by reading it
    rc, io = _report_cli(capsys, "--storage", f"sqlite:///{tmp_path}/none.db", "--out", tmp_path / "reports")
    assert rc == 2 and "does not exist" in io.err and not (tmp_path / "none.db").exists()


@pytest.mark.slow
def test_a_study_on_a_read_only_file_system_is_reported_and_nothing_is_written_there(tmp_path, tmpfs, capsys,
                                                                                       closed_study_copy):
    """Reading a study needs no write: report worked nowhere read-only ("unable to open database file")."""
    make_study(tmp_path, n=6)
    ro = tmpfs(tmp_path / "ro", size="4m", read_only=True,
               fill=lambda d: closed_study_copy(tmp_path / "trials" / "s1" / "study.db", d / "trials" / "s1" / "study.db"))
    before = (ro / "trials" / "s1" / "study.db").read_bytes()
    rc, io = _report_cli(capsys, "s1", "--root", ro / "trials", "--out", tmp_path / "reports")
    assert rc == 0 and (tmp_path / "reports" / "s1" / "report.html").exists(), io.err
    assert (ro / "trials" / "s1" / "study.db").read_bytes() == before
    # writing there is one line naming the path: a report, a new study
    rc, io = _report_cli(capsys, "s1", "--root", ro / "trials", "--out", ro / "reports")
    assert rc == 2 and io.err.strip() == f"se-nas report: error: {str(ro / 'reports')!r}: read-only file system"
    from se_nas import cli

    assert cli.main(["search", "--space", "tiny", "--recipe", "tiny", "--budget-gflops", "1.815", "--n-trials", "1",
                     "--study", "new", "--root", str(ro / "trials")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"se-nas search: error: {str(ro / 'trials' / 'new')!r}: read-only file system"


def test_a_full_disk_or_a_file_as_the_reports_folder_is_one_line(tmp_path, tmpfs, capsys):
    make_study(tmp_path, n=6)
    (tmp_path / "afile").write_text("")
    rc, io = _report_cli(capsys, "s1", "--root", tmp_path / "trials", "--out", tmp_path / "afile")
    assert rc == 2 and io.err.strip() == \
        f"se-nas report: error: {str(tmp_path / 'afile' / 's1')!r}: a part of it is a file, not a folder"
    full = tmpfs(tmp_path / "full", size="256k", fill=lambda d: (d / "s1").mkdir(), full=True)
    rc, io = _report_cli(capsys, "s1", "--root", tmp_path / "trials", "--out", full)
    assert rc == 2 and len(io.err.splitlines()) == 1 and "disk full" in io.err and str(full / "s1") in io.err
    assert [p.name for p in (full / "s1").iterdir()] == []  # no .writing-* folder, no half a report
