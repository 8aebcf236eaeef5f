"""What a user takes away from a search: the Pareto report of a study.

``build_report(study)`` computes everything once into a ``Report`` value (the trials as a frame, the
Pareto mask, hypervolume after every trial, how often each per-stage choice appears among the best
designs, parameter importances, and the fixed r=16 SE baseline and the plain backbone where they
have been evaluated); ``write_report(report, out_dir)`` then renders it as a self-contained HTML page
(figures inlined as base64 PNG, inline CSS and JS: it opens offline), the same figures as PNG files,
``trials.csv`` and ``summary.md``. Compute, then render, as Optuna's visualisation does.

A design's accuracy is the mean over its seeds (``se_nas.record.results``), never one trial's number: the
front is over per-design means of completed, within-budget trials (candidates stopped early were
judged on fewer epochs, over-budget ones were never trained), and where the search confirmed its
result (``se_nas.search.confirm``) the report leads with the confirmed front and its one-sentence finding.
Accuracy is the proxy's validation accuracy; GFLOPs and parameters are the deployment model's.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..design.arch import PAPER_SE, Arch, baseline_arch, baseline_name, plain_arch
from ..design.budget import BORDERLINE, predicted_latencies
from .compare import DEFAULT_OUT, compare_path
from .comparison import Comparison, read_comparison
from ..search.strategies import strategy_of
from ..search.confirm import Confirmation, read_confirmation, role_name, study_noise
from ..design.pareto import hypervolume_history
from .report_html import report_html
from .report_plots import figures
from .report_text import summary_md, trials_csv
from .report_value import AXES, STATUS_TEXT, Marker, Report, value_order
from ..record.results import Design, design_front, designs_of
from ..record.storage import DEFAULT_ROOT, check_study_name, default_study, open_study
from ..record.study import OBJECTIVE_TABLE, Status, StudyError, StudySettings, directions, objective_values, records, to_frame

__all__ = ["Report", "Marker", "build_report", "write_report", "make_report", "summary_md", "trials_csv",
           "choice_frequencies", "param_importances"]

# --- compute -------------------------------------------------------------------------------------
def build_report(study_name: str, root: str | Path = DEFAULT_ROOT, out: str | Path = DEFAULT_OUT,
                 storage: str | None = None) -> Report:
    """Read ``study_name`` and compute the report. Raises ``StudyError`` if no trial has completed."""
    study = open_study(study_name, storage=storage, root=root, read_only=True)
    skipped: list[str] = []
    recs = records(study, skipped)  # a corrupted trial record is left out, named, not fatal
    for line in skipped:
        print(f"warning: {line}; left out of the report", file=sys.stderr)
    frame = to_frame(recs)
    strategy = strategy_of(study)  # a one-shot search's values are supernet scores (its confirmation stays standalone)
    done = [r for r in recs if strategy.values(r)]
    designs = designs_of(recs, strategy.values)
    supernet = not strategy.trains_each_design
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
    reference, ideal, hv = _hypervolume(pts, complete, objectives, budget)

    importances, note = param_importances(done, study)
    conf = read_confirmation(study, st, recs)
    noise = conf.search_noise if conf is not None else study_noise(study, recs=recs)  # the search recipe's
    latency = predicted_latencies(budget, recs, [d.arch for d in conf.designs] if conf else ())
    if latency:
        frame["latency_ms"] = [r.latency_ms for r in recs]
    cmp_path = compare_path(study_name, out)
    cmp = read_comparison(cmp_path)
    cmp_md = cmp_path.with_suffix(".md")
    best_ids = {d.id for d in front}
    return Report(
        study=study_name, frame=frame, reference=reference, ideal=ideal, hypervolume=hv,
        choices=choice_frequencies([d.arch for d in designs], [d.id in best_ids for d in designs]),
        importances=importances, importance_note=note, markers=_markers(designs, conf, cmp), settings=settings,
        compare_md=cmp_md.read_text() if cmp_md.exists() else "", designs=designs, front=front, noise=noise,
        confirmation=conf, comparison=cmp, latency=latency, objectives=objectives, supernet=supernet,
        skipped=tuple(skipped),
    )


def _hypervolume(pts, complete, objectives, budget):
    """(reference, ideal, normalised hypervolume after each trial).

    Reference (worst corner): accuracy 0 and the budget where one is set, else 10% beyond the worst
    completed trial; ideal corner: accuracy 1 and the cheapest completed trial. The normalised
    hypervolume is the fraction of that box the search's front dominates."""
    ok = pts[complete]
    reference = (0.0, *(float(budget.get(f"max_{OBJECTIVE_TABLE[o].attr}") or ok[:, i].max() * 1.1)
                        for i, o in enumerate(objectives) if i))
    ideal = (1.0, *(float(ok[:, i].min()) for i in range(1, len(objectives))))
    box = float(np.prod([ideal[0] - reference[0], *(r - i for r, i in zip(reference[1:], ideal[1:]))]))
    hv = hypervolume_history(pts, directions(objectives), reference, complete)
    return reference, ideal, (hv / box if box > 0 else hv)


def _state_text(r) -> str:
    text = r.status.text
    if r.status in (Status.FAILED, Status.OVER_BUDGET, Status.REPEAT) and r.reason:
        text += f": {r.reason}"
    elif BORDERLINE in (r.reason or ""):  # near the latency limit within the table's uncertainty
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
            for v in sorted(set(values), key=value_order):
                rows.append({"stage": stage + 1, "axis": axis, "value": v,
                             "best": float(np.mean(values[best] == v)) if best.any() else 0.0,
                             "all": float(np.mean(values == v)),
                             "count_best": int(np.sum(values[best] == v))})
    return pd.DataFrame(rows)


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


def _markers(designs: list[Design], conf: Confirmation | None, cmp: Comparison | None) -> list[Marker]:
    """The r=16 baseline and the plain backbone: from the confirmation if the search ran one, else from
    ``se-nas compare``, else from the search's own trials of exactly those designs (their mean)."""
    name16 = role_name("r16", baseline_name(designs[0].arch.backbone) if designs else PAPER_SE)
    if conf is not None:
        k = len(conf.seeds)
        where = f" on {conf.fidelity}" if conf.two_fidelity else ""
        return [Marker(name, d.id, d.mean, d.gflops, d.mparams, f"confirmation{where}, {d.n} of {k} seeds")
                for name, d in ((name16, conf.r16), ("plain backbone", conf.plain)) if d.n]
    out: list[Marker] = []
    if cmp is not None:
        names = {"r16": name16, "plain": "plain backbone"}
        for arm in cmp.arms:
            if arm.role in names:
                out.append(Marker(names[arm.role], arm.arch_id, arm.accuracy_mean, arm.gflops, arm.mparams,
                                  f"se-nas compare, {len(cmp.seeds)} seed(s), recipe {cmp.recipe_name}"))
        return out
    if not designs:
        return out
    for name, ref in ((name16, baseline_arch(designs[0].arch)), ("plain backbone", plain_arch(designs[0].arch))):
        hit = next((d for d in designs if d.id == ref.id), None)
        if hit is not None:
            out.append(Marker(name, ref.id, hit.mean, hit.gflops, hit.mparams,
                              f"mean of {hit.n} search trial{'s' if hit.n != 1 else ''}"))
    return out


def write_report(rep: Report, out_dir: str | Path) -> dict[str, Path]:
    """Write report.html, summary.md, trials.csv and the PNG figures into ``out_dir``.

    Every file is rendered and written under a temporary folder in ``out_dir`` first, then renamed
    into place, report.html last: a run killed half-way leaves a hidden ``.writing-*`` folder and the
    previous report, never a new report.html beside missing figures. The temporary folder is private
    (``mkdtemp``), and a symbolic link at ``out_dir`` or at one of the files is refused, not followed.
    """
    from ..design.files import output_folder, refuse_link

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
    name = check_study_name(study if study is not None else default_study(root, storage))  # "" is refused
    rep = build_report(name, root, out, storage)
    return rep, write_report(rep, Path(out) / name)
