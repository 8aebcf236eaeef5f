"""What a user takes away from a search: the Pareto report of a study.

``build_report(study)`` computes everything once into a ``Report`` value (the trials as a frame, the
Pareto mask, hypervolume after every trial, how often each per-stage choice appears among the best
designs, parameter importances, and the fixed r=16 SE baseline and the plain backbone where they
have been evaluated); ``write_report(report, out_dir)`` then renders it as a self-contained HTML page
(figures inlined as base64 PNG, inline CSS and JS: it opens offline), the same figures as PNG files,
``trials.csv`` and ``summary.md``. Compute, then render, as Optuna's visualisation does.

A design's accuracy is the mean over its seeds (``se_nas.results``), never one trial's number: the
front is over per-design means of completed, within-budget trials (candidates stopped early were
judged on fewer epochs, over-budget ones were never trained), and where the search confirmed its
result (``se_nas.confirm``) the report leads with the confirmed front and its one-sentence finding.
Accuracy is the proxy's validation accuracy; GFLOPs and parameters are the deployment model's.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .arch import PAPER_SE, Arch, baseline_arch, baseline_name, plain_arch
from .budget import predicted_latencies
from .compare import DEFAULT_OUT, compare_path, compared_baseline
from .confirm import Confirmation, read_confirmation, role_name, study_noise
from .pareto import hypervolume_history, pareto_front
from .results import Design, Noise, design_front, designs_of
from .storage import DEFAULT_ROOT, check_study_name, latest_study, open_study
from .study import (OBJECTIVE_TABLE, OBJECTIVES, Status, StudyError, StudySettings, directions, objective_values,
                    records, to_frame)

AXES = ("reduction", "squeeze", "gate", "position")
STATUS_TEXT = {s.value: s.text for s in Status}


@dataclass(frozen=True)
class Marker:
    """A reference design placed on the Pareto plots (the r=16 baseline, the plain backbone)."""

    name: str
    arch_id: str
    accuracy: float
    gflops: float
    mparams: float
    source: str  # where the accuracy comes from: "compare (K seeds)" or "trial N"


@dataclass
class Report:
    study: str
    frame: Any  # pandas DataFrame, one row per trial; column "pareto" marks the front
    reference: tuple[float, ...]  # hypervolume reference point (accuracy, then the study's other objectives)
    ideal: tuple[float, ...]  # with ``reference``, the box the hypervolume is normalised by
    hypervolume: np.ndarray  # normalised hypervolume after each trial, in [0, 1]
    choices: Any  # DataFrame: stage, axis, value, best (share among Pareto designs), all (among complete)
    importances: dict[str, float]
    importance_note: str
    markers: list[Marker] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # recipe, budget, deploy, space of the study
    compare_md: str = ""
    designs: list[Design] = field(default_factory=list)  # one per design trained to the end, by the search
    front: list[Design] = field(default_factory=list)  # the search's per-design front
    noise: Noise | None = None
    confirmation: Confirmation | None = None
    comparison: dict[str, Any] | None = None  # compare.json as ``se-nas compare`` wrote it
    latency: dict[str, float] = field(default_factory=dict)  # predicted ms by design id (a study with a table)
    objectives: tuple[str, ...] = OBJECTIVES  # the study's: the front and the hypervolume are over these
    supernet: bool = False  # a one-shot study: ``designs`` and ``front`` are supernet scores, not trainings

    @property
    def value_label(self) -> str:
        """What the search's values are: trained accuracies, or a one-shot study's supernet scores."""
        return "supernet score" if self.supernet else "accuracy"

    @property
    def baseline(self) -> str:
        """What this study's reference SE is called (``baseline_name``: "r=16 SE", "MobileNetV3's own SE")."""
        return baseline_name(self.designs[0].arch.backbone) if self.designs else PAPER_SE

    @property
    def finding(self) -> str:
        if self.comparison and self.comparison.get("finding"):
            return self.comparison["finding"]
        return self.confirmation.sentence if self.confirmation is not None else ""

    @property
    def n_best(self) -> int:
        return len(self.front)


# --- compute -------------------------------------------------------------------------------------
def build_report(study_name: str, root: str | Path = DEFAULT_ROOT, out: str | Path = DEFAULT_OUT,
                 storage: str | None = None) -> Report:
    """Read ``study_name`` and compute the report. Raises ``StudyError`` if no trial has completed."""
    study = open_study(study_name, storage=storage, root=root, read_only=True)
    recs = records(study)
    frame = to_frame(recs)
    done = [r for r in recs if r.is_result]
    designs = designs_of(recs)
    supernet = not done  # a one-shot search: its supernet ranking is the search (the confirmation stays standalone)
    if supernet:
        from .oneshot import ranked, supernet_designs

        done, designs = [r for r in recs if ranked(r)], supernet_designs(recs)
    if not done:
        counts = ", ".join(f"{(frame.status == s).sum()} {STATUS_TEXT[s]}" for s in STATUS_TEXT
                           if (frame.status == s).any()) if len(frame) else "no trials"
        raise StudyError(f"study {study_name!r} has no completed trial yet ({counts}); nothing to report. "
                         "Run more trials with `se-nas search`")
    frame["state"] = [_state_text(r) for r in recs]
    shown = {r.number for r in done}
    complete = np.array([r.number in shown for r in recs])
    st = StudySettings.of(study)
    objectives = st.objectives
    pts = np.array([[np.nan if v is None else v for v in objective_values(r, objectives)] for r in recs], dtype=float)
    front = design_front(designs, objectives)
    on_front = {d.id for d in front}
    # a trial is marked when its design is on the per-design front (all its seeds, not a lucky one)
    frame["pareto"] = [bool(r.number in shown and r.arch.id in on_front) for r in recs]

    settings = st.to_attrs()
    budget = settings.get("budget") or {}
    ok = pts[complete]
    # Reference (worst corner): accuracy 0 and the budget where one is set, else 10% beyond the worst
    # completed trial; ideal corner: accuracy 1 and the cheapest completed trial. The normalised
    # hypervolume is the fraction of that box the search's front dominates.
    reference = (0.0, *(float(budget.get(f"max_{OBJECTIVE_TABLE[o].attr}") or ok[:, i].max() * 1.1)
                        for i, o in enumerate(objectives) if i))
    ideal = (1.0, *(float(ok[:, i].min()) for i in range(1, len(objectives))))
    box = float(np.prod([ideal[0] - reference[0], *(r - i for r, i in zip(reference[1:], ideal[1:]))]))
    hv = hypervolume_history(pts, directions(objectives), reference, complete)
    hv = hv / box if box > 0 else hv

    importances, note = param_importances(done, study)
    conf = read_confirmation(study, st, recs)
    noise = conf.noise if conf is not None else study_noise(study, recs=recs)
    latency = predicted_latencies(budget, recs, [d.arch for d in conf.designs] if conf else ())
    if latency:
        frame["latency_ms"] = [r.latency_ms for r in recs]
    cmp_path = compare_path(study_name, out)
    cmp = load_comparison(cmp_path)
    cmp_md = cmp_path.with_suffix(".md")
    best_ids = {d.id for d in front}
    return Report(
        study=study_name, frame=frame, reference=reference, ideal=ideal, hypervolume=hv,
        choices=choice_frequencies([d.arch for d in designs], [d.id in best_ids for d in designs]),
        importances=importances, importance_note=note, markers=_markers(designs, conf, cmp), settings=settings,
        compare_md=cmp_md.read_text() if cmp_md.exists() else "", designs=designs, front=front, noise=noise,
        confirmation=conf, comparison=cmp, latency=latency, objectives=objectives, supernet=supernet,
    )


def load_comparison(path: Path) -> dict[str, Any] | None:
    """The results ``se-nas compare`` wrote to ``path`` (compare.json), None if it has not run."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data.get("arms"), list):
            raise ValueError("no list of arms")
    except (ValueError, AttributeError) as e:
        raise StudyError(f"{str(path)!r} is not a comparison written by `se-nas compare` ({e}); "
                         "run `se-nas compare` again or delete it") from None
    return data


def _state_text(r) -> str:
    text = r.status.text
    if r.status in (Status.FAILED, Status.OVER_BUDGET, Status.REPEAT) and r.reason:
        text += f": {r.reason}"
    return text


def stage_choice(se, axis: str) -> str:
    """The value of ``axis`` in one stage's SE choice, "off" for a stage without SE."""
    return "off" if se is None else str(getattr(se, axis))


def choice_frequencies(archs: list[Arch], best: list[bool]):
    """For each stage, axis and value: its share among the best designs and among all ``archs``."""
    import pandas as pd

    best = np.asarray(best, dtype=bool)
    rows = []
    n_stages = max(len(a.stages) for a in archs)
    for stage in range(n_stages):
        for axis in AXES:
            values = np.array([stage_choice(a.stages[stage], axis) if stage < len(a.stages) else "n/a"
                               for a in archs])
            for v in sorted(set(values), key=_value_order):
                rows.append({"stage": stage + 1, "axis": axis, "value": v,
                             "best": float(np.mean(values[best] == v)) if best.any() else 0.0,
                             "all": float(np.mean(values == v)),
                             "count_best": int(np.sum(values[best] == v))})
    return pd.DataFrame(rows)


def _value_order(v: str):
    # numbers in numeric order, "off" last
    return (v == "off", 0 if v.isdigit() else 1, int(v) if v.isdigit() else 0, v)


def param_importances(done, study) -> tuple[dict[str, float], str]:
    """fANOVA importances of the sampled parameters for accuracy, over completed trials only.

    Runs on an in-memory copy holding only the completed trials, so over-budget candidates (stored
    with accuracy 0) don't pass for bad designs. Returns ({}, why) when it cannot be computed.
    """
    import optuna

    if len(done) < 4:
        return {}, f"parameter importances need at least 4 completed trials, this study has {len(done)}"
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line for the copy
    copy = optuna.create_study(direction="maximize")
    for r in done:
        t = by_number[r.number]
        copy.add_trial(optuna.trial.create_trial(value=float(r.accuracy), params=t.params,
                                                 distributions=t.distributions))
    try:
        with np.errstate(all="ignore"):
            imp = optuna.importance.get_param_importances(copy, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError) as e:
        return {}, f"parameter importances could not be computed: {e}"
    if not imp:
        return {}, ("no parameter was sampled in every completed trial (Optuna's importances only use "
                    "parameters common to all trials)")
    return dict(imp), ("fANOVA (Optuna) over the completed trials, target: accuracy; parameters that "
                       "only exist when a stage has SE are left out by Optuna")


def _markers(designs: list[Design], conf: Confirmation | None, cmp: dict | None) -> list[Marker]:
    """The r=16 baseline and the plain backbone: from the confirmation if the search ran one, else from
    ``se-nas compare``, else from the search's own trials of exactly those designs (their mean)."""
    name16 = role_name("r16", baseline_name(designs[0].arch.backbone) if designs else PAPER_SE)
    if conf is not None:
        k = len(conf.seeds)
        return [Marker(name, d.id, d.mean, d.gflops, d.mparams, f"confirmation, {d.n} of {k} seeds")
                for name, d in ((name16, conf.r16), ("plain backbone", conf.plain)) if d.n]
    out: list[Marker] = []
    if cmp is not None:
        names = {"r16": name16, "plain": "plain backbone"}
        k = len(cmp.get("seeds", []))
        for arm in cmp.get("arms", []):
            if arm["role"] in names:
                out.append(Marker(names[arm["role"]], arm["arch_id"], arm["accuracy_mean"], arm["gflops"],
                                  arm["mparams"], f"se-nas compare, {k} seed(s), recipe {cmp.get('recipe_name', '')}"))
        return out
    if not designs:
        return out
    for name, ref in ((name16, baseline_arch(designs[0].arch)), ("plain backbone", plain_arch(designs[0].arch))):
        hit = next((d for d in designs if d.id == ref.id), None)
        if hit is not None:
            out.append(Marker(name, ref.id, hit.mean, hit.gflops, hit.mparams,
                              f"mean of {hit.n} search trial{'s' if hit.n != 1 else ''}"))
    return out


# --- render --------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def figures(rep: Report) -> dict[str, bytes]:
    """The report's figures as PNG bytes, by file name."""
    plt = _plt()
    out = {}
    for o in _plotted(rep):
        out[f"pareto_{o.attr}.png"] = _png(plt, _pareto_plot(plt, rep, o.attr, o.label))
    out["hypervolume.png"] = _png(plt, _hv_plot(plt, rep))
    out["choices.png"] = _png(plt, _choice_plot(plt, rep))
    if rep.importances:
        out["importance.png"] = _png(plt, _importance_plot(plt, rep))
    return out


def _plotted(rep: Report):
    """The study's objectives other than accuracy: one accuracy-against-it plot each."""
    return [OBJECTIVE_TABLE[o] for o in rep.objectives[1:]]


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _pareto_plot(plt, rep: Report, col: str, unit: str):
    """Each design at its mean accuracy over its seeds with a ± standard-error bar (single runs as
    faint dots behind), the per-design front in red with its 2-D staircase, the confirmed designs
    (same K fresh seeds) as squares, and the r=16 baseline and plain backbone as hollow markers."""
    f = rep.frame
    fig, ax = plt.subplots(figsize=(7, 4.6))
    runs = f[f.status.isin([Status.COMPLETE.value, Status.STOPPED_EARLY.value])]
    if len(runs):
        ax.scatter(runs[col], runs.accuracy, c="#d9d9d9", marker=".", s=16, zorder=1,
                   label="supernet paths (scores)" if rep.supernet else "single runs (one seed each)")
    on_front = {d.id for d in rep.front}

    def errbar(ds, color, marker, size, label, z, face=None, bars=True):
        ds = [d for d in ds if getattr(d, col) is not None]  # a latency the table can no longer give
        if not ds:
            return
        x = [getattr(d, col) for d in ds]
        y = [d.mean for d in ds]
        e = [d.sem(rep.noise) if bars and d.sem(rep.noise) == d.sem(rep.noise) else 0.0 for d in ds]
        ax.errorbar(x, y, yerr=e, fmt=marker, ms=size, color=color, mfc=face or color, ecolor=color, elinewidth=1,
                    capsize=2, label=label, zorder=z)

    errbar([d for d in rep.designs if d.id not in on_front], "#5b8cc0", "o", 4.5,
           "design: supernet score (not trained)" if rep.supernet else "design: mean ± s.e. over its seeds", 2,
           bars=not rep.supernet)  # a supernet score is one evaluation, not a mean over seeds
    errbar(rep.front, "#c0392b", "o", 5.5, f"{'supernet ranking' if rep.supernet else 'per-design'} Pareto front "
           f"({len(rep.objectives)} objectives)", 3, bars=not rep.supernet)
    if rep.designs:  # the 2-D front of this projection, over per-design means, as a staircase
        pts = np.array([[d.mean, getattr(d, col)] for d in rep.designs])
        m2 = pareto_front(pts, ("maximize", "minimize"))
        st = pts[m2][np.argsort(pts[m2][:, 1])]
        ax.step(st[:, 1], st[:, 0], where="post", c="#c0392b", lw=1.2, alpha=0.8, zorder=3)
    conf = rep.confirmation
    if conf is not None:
        errbar([d for d in conf.designs if d.n], "black", "s", 6, f"confirmed: mean ± s.e. over the same {len(conf.seeds)} "
               "fresh seeds", 4, face="none")
    # Reference designs are hollow outlines on top, so a design at the same point (the plain backbone
    # is often one) still shows through them.
    for m, color, mk in zip(rep.markers, ("#1a7f37", "#6f42c1"), ("*", "D")):
        if getattr(m, col, None) is None:  # a marker has no latency
            continue
        ax.scatter([getattr(m, col)], [m.accuracy], marker=mk, s=220 if mk == "*" else 110, facecolors="none",
                   edgecolors=color, linewidths=1.6, label=f"{m.name}\n({m.source})", zorder=5)
    budget = (rep.settings.get("budget") or {}).get(f"max_{col}")
    if budget:
        ax.axvline(budget, ls="--", c="gray", lw=1, label=f"budget {budget:g}")
    ax.set_xlabel(unit)
    ax.set_ylabel("supernet score; confirmed: validation accuracy" if rep.supernet else "validation accuracy (proxy)")
    ax.set_title(f"{rep.study}: accuracy against {next(o.short for o in _plotted(rep) if o.attr == col)}")
    ax.grid(alpha=0.3)
    # beside the axes, never over a point (savefig's tight bounding box makes room for it)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, frameon=False)
    return fig


def _hv_plot(plt, rep: Report):
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.plot(rep.frame.trial, rep.hypervolume, drawstyle="steps-post", c="#2c6fbb")
    ax.set_xlabel("trial")
    ax.set_ylabel("normalised hypervolume")
    ax.set_title(f"hypervolume of the Pareto front after each trial ({', '.join(rep.objectives)})")
    ax.grid(alpha=0.3)
    return fig


def allowed_choices(rep: Report) -> list[dict[str, set[str]]] | None:
    """Per stage, per axis: every value the study's search space allows, spelled as in ``rep.choices``
    ("off" for a stage that may go without SE). None for a study that stored no space.

    Reads the form ``SearchSpace.to_dict()`` stores (every axis listed for every stage), which
    ``SearchSpace.from_dict`` (the YAML form) does not take back.
    """
    if not rep.settings.get("space"):
        return None
    out = []
    for st in rep.settings["space"]["stages"]:
        off = {"off"} if False in st["enabled"] else set()
        se = True in st["enabled"]
        out.append({axis: off | ({str(v) for v in st[axis]} if se else set()) for axis in AXES})
    return out


def _choice_plot(plt, rep: Report):
    c = rep.choices
    allowed = allowed_choices(rep)
    fig, axes = plt.subplots(1, len(AXES), figsize=(3.2 * len(AXES), 3.4), squeeze=False)
    stages = sorted(set(c.stage) | set(range(1, len(allowed) + 1) if allowed else ()))
    cmap = plt.get_cmap("Reds").with_extremes(bad="#eeeeee")
    for ax, axis in zip(axes[0], AXES):
        sub = c[c.axis == axis]
        # every allowed value gets a row, chosen or not; a value a stage does not allow is blank there
        values = sorted(set(sub.value).union(*(a[axis] for a in allowed or ())), key=_value_order)
        grid = np.zeros((len(values), len(stages)))
        if allowed:
            for j, stage in enumerate(stages):
                ok = allowed[stage - 1][axis] if stage <= len(allowed) else set()
                grid[[v not in ok for v in values], j] = np.nan
        for _, row in sub.iterrows():
            grid[values.index(row.value), stages.index(row.stage)] = row.best
        ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto")
        for i in range(len(values)):
            for j in range(len(stages)):
                ax.text(j, i, "not allowed" if np.isnan(grid[i, j]) else f"{grid[i, j]:.0%}", ha="center",
                        va="center", fontsize=6 if np.isnan(grid[i, j]) else 8,
                        color="white" if grid[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(stages)), [f"stage {s}" for s in stages], fontsize=8)
        ax.set_yticks(range(len(values)), values, fontsize=8)
        ax.set_title(axis, fontsize=10)
    fig.suptitle(f"share of each per-stage choice among the {rep.n_best} Pareto designs", fontsize=11)
    fig.tight_layout()
    return fig


def _importance_plot(plt, rep: Report):
    items = sorted(rep.importances.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(items) + 1.2))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#2c6fbb")
    ax.set_xlabel("importance for accuracy (fANOVA)")
    ax.set_title("parameter importances")
    ax.grid(alpha=0.3, axis="x")
    return fig


TABLE_COLS = ["trial", "arch_id", "accuracy", "gflops", "mparams", "epochs", "state"]


def _stage_cols(f) -> list[str]:
    return sorted((c for c in f.columns if c.startswith("stage") and c[5:].isdigit()), key=lambda c: int(c[5:]))


def trials_csv(rep: Report) -> str:
    f = rep.frame
    cols = ["trial", "status", "arch_id", *_stage_cols(f), "accuracy", "gflops", "mparams",
            *(["latency_ms"] if "latency_ms" in f else []), "epochs", "seconds", "pareto", "reason", "arch"]
    return f[cols].to_csv(index=False)


def _fmt(v, nd=4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _design_rows(designs, noise, cols_of, latency=None, supernet: bool = False) -> list[str]:
    rows = []
    for d in designs:
        ms = "" if not latency else f" {latency[d.id]:.2f} |" if d.id in latency else " |"
        value = f"{d.mean:.4f}" if supernet else d.describe(noise)
        rows.append(f"| `{d.id}` | " + " | ".join(cols_of(d)) + f" | {value} | {d.gflops:.4f} | "
                    f"{d.mparams:.3f} |{ms}")
    return rows


def summary_md(rep: Report) -> str:
    f = rep.frame
    lines = [f"# se-nas report: `{rep.study}`", ""]
    if rep.finding:
        lines += [f"**Finding:** {rep.finding}", ""]
    lines.append(intro_text(rep))
    lines.append("")
    lines += _settings_lines(rep)
    n_stages = max(len(d.arch.stages) for d in rep.designs)

    def cols_of(d):
        return ["off" if s is None else s.label for s in d.arch.stages]

    head = "| arch id | " + " | ".join(f"stage {i + 1}" for i in range(n_stages)) + " | accuracy (mean ± s.e., seeds) | GFLOPs | M params |"
    rule = "|---|" + "---|" * n_stages + "---:|---:|---:|"
    if rep.latency:
        head, rule = head + " latency (ms, predicted) |", rule + "---:|"
    conf = rep.confirmation
    if conf is not None:
        lines += ["", "## Confirmed front", "",
                  f"Every design below was trained again under the same {len(conf.seeds)} fresh seeds "
                  f"({', '.join(str(s) for s in conf.seeds)}): the chosen design (picked by the search before these "
                  f"runs), the next designs of the search's front, {rep.baseline} and the plain backbone. Front designs are in bold.",
                  "", head, rule]
        front = {d.id for d in conf.front}
        for row, d in zip(_design_rows(conf.designs, conf.noise, cols_of, rep.latency), conf.designs):
            role = ("chosen" if d.id == conf.chosen.id else rep.baseline if d.id == conf.r16.id
                    else "plain" if d.id == conf.plain.id else "")
            tags = ", ".join(t for t in (role, "over budget" if d.id in conf.over_budget else "") if t)
            tags = f" ({tags})" if tags else ""
            row = row.replace(f"| `{d.id}` |", f"| **`{d.id}`**{tags} |" if d.id in front else f"| `{d.id}`{tags} |", 1)
            lines.append(row)
    if rep.supernet:
        lines += ["", "## Supernet ranking front (per design)", "",
                  "Each design's value is its supernet score: its path's accuracy in the trained supernet (BatchNorm "
                  "recalibrated), discounted by its initialisation check (docs/oneshot.md). A ranking, not a trained "
                  "accuracy and not comparable with one; the confirmed front above is what was trained. GFLOPs "
                  "(1 multiply-accumulate = 1 FLOP) and parameters are the deployment model's.", "",
                  head.replace("accuracy (mean ± s.e., seeds)", "supernet score"), rule]
    else:
        lines += ["", "## Search front (per design)", "",
                  "Each design's accuracy is the mean over the seeds the search trained it with (standard error from the "
                  f"measured seed noise {rep.noise.describe() if rep.noise else ''}); accuracy is the proxy's validation "
                  "accuracy, GFLOPs (1 multiply-accumulate = 1 FLOP) and parameters are the deployment model's.", "",
                  head, rule]
    lines += _design_rows(sorted(rep.front, key=lambda d: -d.mean), rep.noise, cols_of, rep.latency, rep.supernet)
    if rep.markers:
        lines += ["", "Reference designs:", ""]
        for m in rep.markers:
            lines.append(f"- {m.name} `{m.arch_id}`: accuracy {m.accuracy:.4f}, {m.gflops:.4f} GFLOPs, "
                         f"{m.mparams:.3f} M params ({m.source})")
    for o in _plotted(rep):
        lines += ["", f"![accuracy against {o.short}](pareto_{o.attr}.png)"]
    lines += ["", "## Hypervolume", "", "![hypervolume](hypervolume.png)", "",
              "## Per-stage choices among the Pareto designs", "",
              "Share of the front's designs (and of all designs trained to the end) that use each value.", ""]
    c = rep.choices
    lines.append("| stage | axis | value | among Pareto | among all completed |")
    lines.append("|---:|---|---|---:|---:|")
    for _, r in c.iterrows():
        lines.append(f"| {r.stage} | {r.axis} | {r.value} | {r.best:.0%} | {r['all']:.0%} |")
    lines += ["", "![choices](choices.png)", "", "## Parameter importances", ""]
    if rep.importances:
        lines += [f"{rep.importance_note}.", "", "| parameter | importance |", "|---|---:|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in rep.importances.items()]
        lines += ["", "![importances](importance.png)"]
    else:
        lines.append(f"Not available: {rep.importance_note}.")
    if rep.compare_md:
        lines += ["", rep.compare_md.strip()]
    lines += ["", "Every trial is in [trials.csv](trials.csv); the interactive page is [report.html](report.html).", ""]
    return "\n".join(lines)


def intro_text(rep: Report) -> str:
    """The report's opening paragraph: trials by status, designs, the front, hypervolume."""
    f = rep.frame
    counts = ", ".join(f"{int((f.status == s).sum())} {t}" for s, t in STATUS_TEXT.items() if (f.status == s).any())
    n_res = sum(d.n for d in rep.designs)
    if rep.supernet:
        return (f"{len(f)} trials: {counts}. {len(rep.designs)} designs ranked through the supernet (each a supernet "
                f"score, not a training); front over those scores: {len(rep.front)} designs. Normalised hypervolume "
                f"of the scores after the last trial: {rep.hypervolume[-1]:.4f}.")
    return (f"{len(f)} trials: {counts}. {len(rep.designs)} distinct designs among the {n_res} trials trained to the "
            f"end within budget; front over per-design means: {len(rep.front)} designs. Normalised hypervolume "
            f"after the last trial: {rep.hypervolume[-1]:.4f}.")


def _settings_lines(rep: Report) -> list[str]:
    s = rep.settings
    out = []
    if s.get("budget"):
        b = s["budget"]
        parts = [f"<= {b['max_gflops']:g} GFLOPs" if b.get("max_gflops") else "",
                 f"<= {b['max_mparams']:g}M params" if b.get("max_mparams") else "",
                 f"<= {b['max_latency_ms']:g} ms latency" if b.get("max_latency_ms") else ""]
        out.append(f"- budget: {' and '.join(p for p in parts if p) or 'none'}")
        if b.get("latency"):
            out.append(f"- latency predicted from the table {b['latency']} (profile {b.get('latency_hash')})")
    if s.get("deploy"):
        d = s["deploy"]
        out.append(f"- deployment model: {d.get('image_size')}x{d.get('image_size')} input, {d.get('num_classes')} classes")
    if s.get("recipe"):
        r = s["recipe"]
        out.append(f"- proxy recipe: {r.get('dataset')} at {r.get('image_size')}px, {r.get('stem')} stem, width "
                   f"x{r.get('width')}, {r.get('epochs')} epochs, {r.get('optimizer')} lr {r.get('lr')}")
    return out


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1150px;
padding:0 1em;color:#222}h1{font-size:1.5em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
img{max-width:100%}p,li{overflow-wrap:anywhere}table{border-collapse:collapse;font-size:12px}
th,td{padding:3px 7px;border-bottom:1px solid #eee;text-align:left}th{background:#f4f4f4}
table.sortable th{cursor:pointer;position:sticky;top:0}table.sortable td{white-space:nowrap}
tr.pareto td{background:#fdecea}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.note{color:#555;font-size:.9em}.wrap{max-height:600px;overflow:auto}.scroll{overflow-x:auto}
code{background:#f4f4f4;padding:0 3px}"""

# Sort the table by a clicked header: numbers numerically, text alphabetically, click again to reverse.
JS = """document.querySelectorAll('table.sortable th').forEach(function(th,i){th.addEventListener('click',function(){
var tb=th.closest('table').tBodies[0],rows=Array.from(tb.rows),asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
rows.sort(function(a,b){var x=a.cells[i].dataset.v||a.cells[i].textContent,y=b.cells[i].dataset.v||b.cells[i].textContent,
p=parseFloat(x),q=parseFloat(y),c=(!isNaN(p)&&!isNaN(q))?p-q:x.localeCompare(y);return asc?c:-c;});
rows.forEach(function(r){tb.appendChild(r);});});});"""


def _intro_html(rep: Report) -> str:
    finding = f'<p class="finding"><strong>Finding:</strong> {html.escape(rep.finding)}</p>' if rep.finding else ""
    return f"{finding}<p>{html.escape(intro_text(rep))}</p>"


def _comparison_html(cmp: dict[str, Any]) -> str:
    """The comparison section, from compare.json: the setup, one table row per design, the tests."""
    e = html.escape
    k = len(cmp.get("seeds", []))
    setup = f"{k} seed(s) per design"
    ref16 = compared_baseline(cmp)
    if cmp.get("recipe"):
        r = cmp["recipe"]
        setup += (f", recipe {cmp.get('recipe_name', '')} ({r['dataset']} at {r['image_size']} px, {r['stem']} stem, "
                  f"width x{r['width']}, {r['epochs']} epochs)")
    if cmp.get("deploy"):
        d = cmp["deploy"]
        setup += (f". GFLOPs and parameters: deployment model ({d['image_size']}x{d['image_size']}, "
                  f"{d['num_classes']} classes)")
    if cmp.get("machine"):
        setup += (f". Latency: median forward pass of the trained proxy at batch 1 on {cmp.get('device', '')} "
                  f"({cmp['machine']})")
    if cmp.get("same_as"):
        setup += f". The chosen design is the {role_name(cmp['same_as'], ref16)} itself: one row"
    vs16, vspl = cmp.get("vs_r16") or {}, cmp.get("vs_plain") or {}

    def delta(t):
        if t is None:
            return "", ""
        se = t.get("diff_se")
        d = f"{t['diff_mean']:+.4f}" + (f" ± {se:.4f}" if isinstance(se, (int, float)) and se == se else "")
        return d, ("n/a" if t["p"] is None else f"{t['p']:.3g}")

    rows = []
    for arm in cmp["arms"]:
        trial = f" (trial {arm['trial']})" if arm.get("trial") is not None else ""
        latency = (f"{arm['latency_mean']:.3f} ± {arm.get('latency_std', 0):.3f}" if "latency_mean" in arm else "")
        err = arm.get("accuracy_sem", arm.get("accuracy_std", 0))
        acc = f"{arm['accuracy_mean']:.4f}" + (f" ± {err:.4f}" if isinstance(err, (int, float)) and err == err else "")
        d16 = delta((vs16.get(arm["role"]) or {}).get("accuracy"))
        dpl = delta((vspl.get(arm["role"]) or {}).get("accuracy"))
        cells = [e(f"{arm.get('name', arm['role'])}{trial}"), f"<code>{e(arm['arch_id'])}</code>", acc,
                 str(arm.get("n", len(arm.get("accuracy", [])))), f"{arm['gflops']:.4f}", f"{arm['mparams']:.3f}",
                 latency, *d16, *dpl]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" if i < 2 else f'<td class="num">{c}</td>'
                                     for i, c in enumerate(cells)) + "</tr>")
    head = "".join(f"<th>{h}</th>" if i < 2 else f'<th class="num">{h}</th>' for i, h in enumerate(
        ["design", "arch id", "accuracy (mean ± s.e.)", "seeds", "GFLOPs", "M params", "latency ms (mean ± std)",
         f"Δ accuracy vs {e(ref16)}", "p (paired t)", "Δ accuracy vs plain", "p (paired t)"]))
    tests = []
    for ref, vs in ((ref16, vs16), ("the plain backbone", vspl)):
        for role, t in vs.items():
            a, lat = t["accuracy"], t.get("latency_ms")
            if a is None:
                continue
            name = next((arm.get("name", role) for arm in cmp["arms"] if arm["role"] == role), role)
            text = f"{name} vs {ref}: accuracy {a['diff_mean']:+.4f} ("
            text += (f"t = {a['t']:.3f}, p = {a['p']:.3g}, " if a["p"] is not None else "") + f"{a['note']})"
            if lat:
                text += f"; latency {lat['diff_mean']:+.3f} ms" + (f" (p = {lat['p']:.3g})" if lat["p"] is not None else "")
            tests.append(f"<li>{e(text)}</li>")
    designs = "".join(f"<li>{e(arm.get('name', arm['role']))}: <code>{e(arm['label'])}</code></li>"
                      for arm in cmp["arms"] if arm.get("label"))
    finding = f"<p><strong>Finding:</strong> {e(cmp['finding'])}</p>" if cmp.get("finding") else ""
    return (f'<h2>Comparison against the fixed {e(ref16)} baseline and the plain backbone</h2>{finding}<p>{e(setup)}.</p>'
            f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
            + (f"<ul>{''.join(tests)}</ul>" if tests else "") + (f"<p>Designs:</p><ul>{designs}</ul>" if designs else ""))


def report_html(rep: Report, figs: dict[str, bytes]) -> str:
    e = html.escape
    f = rep.frame

    def img(name, alt):
        if name not in figs:
            return ""
        return f'<p><img alt="{e(alt)}" src="data:image/png;base64,{base64.b64encode(figs[name]).decode()}"></p>'

    cols = _stage_cols(f)
    lat_head, lat_col = (["latency (ms)"], [("latency_ms", 2)]) if "latency_ms" in f else ([], [])
    head = "".join(f"<th>{e(h)}</th>" for h in ["trial", "arch id", *[f"stage {c[5:]}" for c in cols],
                                                 rep.value_label, "GFLOPs", "M params", *lat_head, "epochs", "state"])
    body = []
    for _, r in f.iterrows():
        cells = [f'<td class="num">{r.trial}</td>', f"<td><code>{e(r.arch_id)}</code></td>"]
        cells += [f"<td>{e(str(r[c]))}</td>" for c in cols]
        for c, nd in (("accuracy", 4), ("gflops", 4), ("mparams", 3), *lat_col):
            v = r[c]
            cells.append(f'<td class="num" data-v="{"" if v is None or v != v else v}">{_fmt(v, nd)}</td>')
        cells += [f'<td class="num">{r.epochs}</td>', f"<td>{e(r.state)}</td>"]
        body.append(f'<tr{" class=pareto" if r.pareto else ""}>' + "".join(cells) + "</tr>")
    settings = "".join(f"<li>{e(line[2:])}</li>" for line in _settings_lines(rep))
    markers = "".join(f"<li>{e(m.name)} <code>{e(m.arch_id)}</code>: accuracy {m.accuracy:.4f}, {m.gflops:.4f} GFLOPs, "
                      f"{m.mparams:.3f} M params ({e(m.source)})</li>" for m in rep.markers)
    imp = (img("importance.png", "parameter importances") + f'<p class="note">{e(rep.importance_note)}.</p>'
           if rep.importances else f"<p>Not available: {e(rep.importance_note)}.</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>se-nas report: {e(rep.study)}</title>
<style>{CSS}</style></head><body>
<h1>se-nas report: <code>{e(rep.study)}</code></h1>
{_intro_html(rep)}<ul>{settings}</ul>
<h2>Pareto front</h2>
<p class="note">{"Circles are supernet scores (a path's accuracy in the trained supernet, discounted by its initialisation check: a ranking, not a training); squares are the confirmation's standalone accuracies. " if rep.supernet else ""}Accuracy is the proxy's validation accuracy; GFLOPs (1 multiply-accumulate = 1 FLOP) and parameters
are the deployment model's. The front is computed over completed, within-budget trials only.</p>
{"".join(img(f"pareto_{o.attr}.png", f"accuracy against {o.short}") for o in _plotted(rep))}
{"<p>Reference designs:</p><ul>" + markers + "</ul>" if markers else
 f'<p class="note">The {e(rep.baseline)} baseline and the plain backbone have not been evaluated yet: run <code>se-nas compare</code>.</p>'}
<h2>Hypervolume</h2>{img("hypervolume.png", "hypervolume after each trial")}
<p class="note">Normalised to the box between accuracy 0 and 1, the cheapest completed trial and the reference
(budget, or 10% beyond the most expensive completed trial): {", ".join(f"{e(OBJECTIVE_TABLE[o].label)} "
f"{lo:.4g}..{hi:.4g}" for o, lo, hi in zip(rep.objectives[1:], rep.ideal[1:], rep.reference[1:]))}.</p>
<h2>Per-stage choices among the Pareto designs</h2>{img("choices.png", "choice frequencies")}
<h2>Parameter importances</h2>{imp}
{_comparison_html(rep.comparison) if rep.comparison else ""}
<h2>All trials</h2><p class="note">Click a column header to sort. Pareto designs are highlighted.</p>
<div class="wrap"><table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>
<script>{JS}</script>
</body></html>
"""


def write_report(rep: Report, out_dir: str | Path) -> dict[str, Path]:
    """Write report.html, summary.md, trials.csv and the PNG figures into ``out_dir``.

    Every file is rendered and written under a temporary folder in ``out_dir`` first, then renamed
    into place, report.html last: a run killed half-way leaves a hidden ``.writing-*`` folder and the
    previous report, never a new report.html beside missing figures. The temporary folder is private
    (``mkdtemp``), and a symbolic link at ``out_dir`` or at one of the files is refused, not followed.
    """
    from .files import output_folder, refuse_link

    out = output_folder(out_dir)
    figs = figures(rep)
    files = {**figs, "trials.csv": trials_csv(rep).encode(), "summary.md": summary_md(rep).encode(),
             "report.html": report_html(rep, figs).encode()}
    for name in files:
        refuse_link(out / name)
    tmp = Path(tempfile.mkdtemp(prefix=".writing-", dir=out))
    try:
        for name, data in files.items():
            try:
                (tmp / name).write_bytes(data)
            except OSError as e:  # a full disk: name the file the user will look for
                e.filename = str(out / name)
                raise
        for name in files:  # report.html is the last key
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {name: out / name for name in files}


def make_report(study: str | None = None, root: str | Path = DEFAULT_ROOT, out: str | Path = DEFAULT_OUT,
                storage: str | None = None):
    """``se-nas report``: build and write the report of ``study`` (default: the latest) to out/<study>/."""
    name = check_study_name(study or latest_study(root, storage))
    rep = build_report(name, root, out, storage)
    return rep, write_report(rep, Path(out) / name)
