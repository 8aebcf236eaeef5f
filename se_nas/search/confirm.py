"""Seed runs outside the search: calibrating the proxy's noise, and confirming what the search found.

A search trial is one seed of one design, and its winner is the design with the best mean over the
seeds the search happened to give it. Before se-nas calls anything "better", it trains the designs
that matter again, under the same K fresh seeds:

- **calibration** (before the search): the plain backbone and the reference SE (the paper's r=16, or
  the family's own) under a few seeds. Their spread measures the proxy's seed noise at every epoch, which early stopping needs before it
  may stop anything, and the confirmation reuses the runs.
- **confirmation** (after the search): the search's chosen design (its best per-design mean within
  the budget, picked *before* these runs, so the runs are an unbiased estimate of it), the next best
  designs of its front, r=16 and the plain backbone, under K seeds (K from the measured noise, at
  least 3). Seed k of every design shares data order and initialisation seed, so differences are
  paired. The final front is built from these means, and ``se_nas.record.results.finding`` states the
  result in one sentence.

The confirmation may run under another recipe than the search's (``--confirm-recipe``: a wider or
longer proxy, the second fidelity). Its runs are then keyed by that recipe, its K comes from that
recipe's own noise (the plain backbone and r=16 trained under it first), the plan names it so that
compare, report and export read it, and the confirmation judges: the finding adds how the search's
ranking agrees with it (``se_nas.record.results.rank_agreement``) and whether the search's choice is
still its best design, which is otherwise the answer.

Every run is stored in the study as it finishes (user attribute ``run:<recipe>:<design>:<seed>``),
so a killed confirmation resumes where it stopped, ``se-nas compare`` reuses the runs, and any
storage (SQLite, PostgreSQL, journal) holds them. Seeds are ``CONFIRM_SEED + k``, apart from the
search trials' seeds (``--seed + trial number``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

from ..design.arch import Arch, baseline_name
from ..design.budget import predicted_latencies
from ..design.cost import count_cost
from ..record.results import (Design, Difference, Noise, RankAgreement, best_design, design_front, designs_of,
                              dominators, fidelity_words, finding, measure_noise, paired_difference, rank_agreement)
from ..record.study import StudyError, StudySettings, counted, records

CONFIRM_SEED = 1000
RUN_PREFIX = "run:"
ROLES = {"chosen": "chosen design", "r16": "reference SE baseline", "plain": "plain backbone",
         "front2": "front design 2", "front3": "front design 3", "front4": "front design 4"}


def role_name(role: str, baseline: str) -> str:
    """A role as text: the ``"r16"`` role (the key stored runs and compare.json keep) is named after what
    the family is compared against, ``baseline`` (``baseline_name``: "r=16 SE", "MobileNetV3's own SE")."""
    return f"{baseline} baseline" if role == "r16" else ROLES.get(role, role)


def recipe_key(recipe) -> str:
    """Short hash of a recipe's settings except its seed: runs are stored per (recipe, design, seed)."""
    d = recipe.to_dict()
    d.pop("seed", None)
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def confirm_seeds(k: int) -> list[int]:
    return [CONFIRM_SEED + i for i in range(k)]


@dataclass(frozen=True)
class Run:
    """One training of one design under one seed, outside the search."""

    arch: Arch
    seed: int
    accuracy: float | None  # None: the training failed (``reason`` says why)
    history: tuple[float, ...] = ()
    seconds: float = 0.0
    reason: str = ""

    def to_attr(self) -> dict[str, Any]:
        return {"arch": self.arch.to_json(), "seed": self.seed, "accuracy": self.accuracy,
                "history": list(self.history), "seconds": self.seconds, "reason": self.reason}

    @classmethod
    def from_attr(cls, d: dict[str, Any]) -> "Run":
        return cls(Arch.from_json(d["arch"]), int(d["seed"]), d.get("accuracy"), tuple(d.get("history", ())),
                   float(d.get("seconds", 0.0)), d.get("reason", ""))


def _key(rk: str, arch: Arch, seed: int) -> str:
    return f"{RUN_PREFIX}{rk}:{arch.id}:{seed}"


def stored_runs(study, rk: str) -> dict[tuple[str, int], Run]:
    """The runs stored in ``study`` for recipe key ``rk``, by (design id, seed)."""
    prefix = f"{RUN_PREFIX}{rk}:"
    out = {}
    for k, v in study.user_attrs.items():
        if k.startswith(prefix):
            run = Run.from_attr(v)
            out[(run.arch.id, run.seed)] = run
    return out


def train_run(arch: Arch, recipe, seed: int, data, device=None, on_progress=None) -> Run:
    """Train ``arch``'s proxy under ``recipe`` with ``seed``, exactly as a search trial would."""
    from ..nn.train import TrainingFailed, train
    from .trial import pinned, seeded_proxy

    start = time.perf_counter()
    model, r = seeded_proxy(arch, pinned(recipe), data.num_classes, seed)
    try:
        res = train(model, r, data, device=device, on_progress=on_progress)
    except TrainingFailed as e:
        return Run(arch, seed, None, (), time.perf_counter() - start, str(e.reason))
    return Run(arch, seed, float(res.accuracy), tuple(res.history), time.perf_counter() - start)


def ensure_runs(study, arms: dict[str, Arch], seeds: list[int], recipe, *, data=None, device=None,
                log: Callable[[str], None] | None = None, stage: str = "confirm", progress=None, runner=None
                ) -> dict[tuple[str, int], Run]:
    """Train every (design, seed) of ``arms`` x ``seeds`` that ``study`` has no run of yet, seed by
    seed (so an interrupted stage leaves whole rounds), storing each run as it finishes. Returns all
    runs of the recipe. ``progress`` (a ``se_nas.search.progress.Progress``) shows a bar and a live line;
    otherwise ``log`` gets one line per run. ``runner(todo, recipe)`` trains the ``(arch, seed)``
    pairs ``todo`` elsewhere (``se_nas.search.ray_runs``), yielding each ``Run`` as it finishes, in any
    order; this process stores each as it arrives."""
    rk = recipe_key(recipe)
    have = stored_runs(study, rk)
    unique = {}
    for role, a in arms.items():
        unique.setdefault(a.id, (role, a))
    # Seed by seed; within a seed's round each process starts at its own design, so processes of one
    # shared study (several machines on one database) train different runs and skip what the others
    # stored meanwhile instead of training the same ones side by side.
    designs = list(unique.values())
    start = zlib.crc32(f"{socket.gethostname()}/{os.getpid()}".encode()) % len(designs) if designs else 0
    designs = designs[start:] + designs[:start]
    todo = [(seed, role, a) for seed in seeds for role, a in designs if (a.id, seed) not in have]
    if todo and data is None and runner is None:
        from ..nn.data import load_data

        data = load_data(recipe)
    if progress is not None and todo:
        progress.stage(stage, len(todo))
        log = progress.log
    names = {(a.id, seed): f"{role_name(role, baseline_name(a.backbone))} {a.id} seed {seed}"
             for seed, role, a in todo}

    def store(i: int, run: Run) -> None:
        study.set_user_attr(_key(rk, run.arch, run.seed), run.to_attr())
        have[(run.arch.id, run.seed)] = run
        if log is not None:
            acc = f"{run.accuracy:.4f}" if run.accuracy is not None else f"failed: {run.reason}"
            log(f"[{stage} {i}/{len(todo)}] {names[(run.arch.id, run.seed)]}: {acc} ({run.seconds:.1f}s)")
        if progress is not None:
            progress.advance()

    if runner is not None and todo:
        for i, run in enumerate(runner([(a, seed) for seed, _, a in todo], recipe), 1):
            store(i, run)
    for i, (seed, role, a) in enumerate(todo if runner is None else (), 1):
        if i > 1 and (a.id, seed) in (fresh := stored_runs(study, rk)):
            have.update(fresh)  # another process trained it while we trained the previous one
            if log is not None:
                log(f"[{stage} {i}/{len(todo)}] {names[(a.id, seed)]}: stored by another process")
            if progress is not None:
                progress.advance()
        else:
            short = f"{role} {a.id} s{seed}"
            live = None if progress is None else (lambda p, short=short: progress.live(f"{short} {p}"))
            store(i, train_run(a, recipe, seed, data, device, on_progress=live))
    if progress is not None and todo:
        progress.close()
    return have


def design_of(arch: Arch, runs: dict[tuple[str, int], Run], seeds: list[int], deploy,
              latency: dict[str, float] | None = None) -> Design:
    """``arch`` as a ``Design`` over its successful runs at ``seeds`` (in seed order), with its
    predicted latency from ``latency`` (ms by design id) if there."""
    c = count_cost(arch, deploy.image_size, deploy.num_classes)
    ok = [(s, runs[(arch.id, s)].accuracy) for s in seeds
          if (arch.id, s) in runs and runs[(arch.id, s)].accuracy is not None]
    return Design(arch, c.gflops, c.mparams, tuple(a for _, a in ok), tuple(s for s, _ in ok),
                  latency_ms=(latency or {}).get(arch.id))


def paired(a: Design, b: Design) -> Difference | None:
    """``a - b`` over the seeds both have; None if they are one design or share no seed."""
    if a.id == b.id:
        return None
    common = [s for s in a.seeds if s in b.seeds]
    if not common:
        return None
    va = dict(zip(a.seeds, a.accuracies))
    vb = dict(zip(b.seeds, b.accuracies))
    return paired_difference([va[s] for s in common], [vb[s] for s in common])


# --- noise -----------------------------------------------------------------------------------------
def study_noise(study, recipe=None, recs=None) -> Noise:
    """The seed noise of ``recipe`` (default: the study's) as measured so far: its calibration and
    confirmation runs and, under the study's own recipe only, the designs the search trained under
    several seeds (a confirmation recipe's noise never mixes in the search's)."""
    own = StudySettings.of(study).recipe_value()
    searched = recipe is None or recipe_key(recipe) == recipe_key(own)
    recipe = own if recipe is None else recipe
    recs = (records(study) if recs is None else recs) if searched else ()
    finals: dict[str, list[float]] = {}
    hists: dict[str, list] = {}
    for r in recs:
        if r.trained and r.arch is not None and r.history:
            hists.setdefault(f"t:{r.arch.id}", []).append(r.history)
        if r.is_result:
            finals.setdefault(f"t:{r.arch.id}", []).append(r.accuracy)
    for (aid, _), run in stored_runs(study, recipe_key(recipe)).items():
        if run.accuracy is not None:
            # search trials and confirmation runs of one design are kept apart: different seed ranges
            hists.setdefault(f"c:{aid}", []).append(run.history)
            finals.setdefault(f"c:{aid}", []).append(run.accuracy)
    return measure_noise(hists, finals)


def seeds_needed(noise: Noise, effect: float = 0.01, lo: int = 3, hi: int = 5) -> int:
    """Seeds for a paired comparison to detect a difference of ``effect`` with 80% power at
    alpha 0.05 (``n = (2.8 * sigma_d / effect)^2``, ``sigma_d = sqrt(2) * sigma`` as if unpaired:
    conservative), kept within [lo, hi]. Unmeasured noise: ``hi``."""
    if noise.sigma is None:
        return hi
    n = math.ceil((2.8 * math.sqrt(2) * noise.sigma / effect) ** 2)
    return max(lo, min(hi, n))


def detectable(noise: Noise, k: int) -> float | None:
    """The smallest difference K paired seeds detect with 80% power at alpha 0.05 (same model)."""
    return None if noise.sigma is None or k < 1 else 2.8 * math.sqrt(2) * noise.sigma / math.sqrt(k)


# --- the stages ------------------------------------------------------------------------------------
def calibrate(study, settings: StudySettings, seeds: int, *, data=None, device=None, log=None, progress=None,
              runner=None) -> Noise:
    """Train the plain backbone and r=16 under ``seeds`` confirmation seeds (those missing), and
    return the noise measured with them."""
    space, recipe = settings.space_value, settings.recipe_value()
    if seeds > 0:
        ensure_runs(study, {"plain": space.plain(), "r16": space.baseline()}, confirm_seeds(seeds), recipe,
                    data=data, device=device, log=log, stage="calibrate", progress=progress, runner=runner)
    return study_noise(study, recipe)


def confirmation_recipe(study, settings: StudySettings | None = None):
    """``(recipe, name)`` of the study's confirmation: the recipe its stored plan names (``--confirm-recipe``),
    else the study's own (a plan from before two-fidelity confirmation, or no confirmation yet)."""
    settings = StudySettings.of(study) if settings is None else settings
    plan = study.user_attrs.get("confirmation") or {}
    if plan.get("recipe"):
        from ..design.recipe import Recipe

        return (Recipe.from_dict(plan["recipe"], where="the study's confirmation recipe"),
                plan.get("recipe_name") or "custom")
    return settings.recipe_value(), plan.get("recipe_name") or "the study's recipe"


@dataclass(frozen=True)
class Confirmation:
    """The confirmed result of a study: every figure here is a mean over the same K seeds."""

    seeds: tuple[int, ...]
    chosen: Design
    r16: Design
    plain: Design
    designs: tuple[Design, ...]  # every confirmed design (the chosen one, front designs, r16, plain)
    front: tuple[Design, ...]  # the Pareto front over ``designs`` (confirmed means)
    vs_r16: Difference | None
    vs_plain: Difference | None
    noise: Noise
    search_mean: float | None = None  # the chosen design's mean over its search trials, for contrast
    sentence: str = ""
    detectable: float | None = None
    over_budget: tuple[str, ...] = field(default_factory=tuple)  # ids of confirmed designs over the budget
    dominated_by: Design | None = None  # the most accurate front design that dominates the chosen one, if any
    # the fidelity of every figure above (``Recipe.fidelity``), and the search's where they differ
    recipe_name: str = ""
    fidelity: str = ""
    search_fidelity: str = ""
    search_noise: Noise | None = None  # the search recipe's seed noise (``noise`` is the confirmation's)
    agreement: RankAgreement | None = None  # two fidelities: the search's ranking against the confirmation's
    best: Design | None = None  # two fidelities: the most accurate confirmed design within the budget
    objectives: tuple[str, ...] = ()  # the study's (ties of accuracy go to the cheaper design in these)

    @property
    def two_fidelity(self) -> bool:
        """Confirmed under another recipe than the search's (``--confirm-recipe``): the confirmation is then
        the judge, and its best design within the budget is the answer."""
        return self.fidelity != self.search_fidelity

    @property
    def complete(self) -> bool:
        return all(d.n == len(self.seeds) for d in self.designs)

    def answer(self, max_gflops: float | None = None) -> Design | None:
        """The confirmed answer within ``max_gflops``: the chosen design unless a confirmed design dominates
        it, then the most accurate design of the confirmed front (never a dominated one). None: no
        confirmed design fits."""
        fits = (lambda d: d.n and (max_gflops is None or d.gflops <= max_gflops))
        if self.two_fidelity:  # the confirmation's fidelity judges: its most accurate design within the limit
            return _judged([d for d in self.designs if d.id not in self.over_budget], self.chosen, max_gflops,
                           self.objectives, ties=self.dominated_by is None)
        if self.dominated_by is None:
            return self.chosen if fits(self.chosen) else None
        return best_design([d for d in self.front if fits(d)], max_gflops)


def plan_confirmation(study, settings: StudySettings, *, top: int = 3, noise: Noise | None = None,
                      min_seeds: int = 3, max_seeds: int = 5, recs=None, designs=None, recipe=None,
                      recipe_name: str = "") -> dict[str, Any] | None:
    """Pick what to confirm (before any confirmation run, so the pick is not biased by them) and
    store the plan in the study. Returns the plan, or None if no design was trained to the end.
    ``designs`` to pick from: default the study's per-design means (a one-shot search passes its
    supernet ranking). ``recipe`` (default the study's): the confirmation's, stored in the plan; K
    comes from its own seed noise."""
    recipe = settings.recipe_value() if recipe is None else recipe
    recs = records(study) if recs is None else recs
    ds = designs_of(recs) if designs is None else designs
    budget = settings.budget_value
    chosen = best_design(ds, budget.max_gflops, settings.objectives)
    if chosen is None:
        return None
    space = settings.space_value
    front = sorted(design_front(ds, settings.objectives), key=lambda d: -d.mean)
    others = [d.arch for d in front if d.id != chosen.id][: max(0, top - 1)]
    noise = study_noise(study, recipe, recs) if noise is None else noise
    k = seeds_needed(noise, lo=min_seeds, hi=max(min_seeds, max_seeds))
    plan = {"after_trials": counted(study)[0], "seeds": confirm_seeds(k), "chosen": chosen.arch.to_json(),
            "designs": [a.to_json() for a in others], "r16": space.baseline().to_json(),
            "plain": space.plain().to_json(), "recipe": recipe.to_dict(), "recipe_name": recipe_name}
    study.set_user_attr("confirmation", plan)
    return plan


def confirm(study, settings: StudySettings, *, top: int = 3, min_seeds: int = 3, max_seeds: int = 5, data=None,
            device=None, log=None, progress=None, designs=None, runner=None, recipe=None,
            recipe_name: str = "") -> "Confirmation | None":
    """The confirmation stage: plan it (a rerun keeps the plan, unless the search has trained more
    trials since, or the confirmation recipe changed, when the choice is made again), train what is
    missing, and return the result.

    ``recipe`` (default the study's; ``data`` is its data): a confirmation recipe other than the
    search's (``--confirm-recipe``) first trains the plain backbone and the reference SE under it at
    ``min_seeds`` seeds, runs the confirmation needs anyway, so that K comes from that recipe's own seed
    noise; the search's noise says nothing about a wider or longer training."""
    own = settings.recipe_value()
    recipe = own if recipe is None else recipe
    plan = study.user_attrs.get("confirmation")
    rk = recipe_key(recipe)
    stale = not plan or plan.get("after_trials") != counted(study)[0] or \
        recipe_key(confirmation_recipe(study, settings)[0]) != rk
    if stale and rk != recipe_key(own):
        space = settings.space_value
        ensure_runs(study, {"plain": space.plain(), "r16": space.baseline()}, confirm_seeds(min_seeds), recipe,
                    data=data, device=device, log=log, stage="calibrate", progress=progress, runner=runner)
    if stale:
        plan = plan_confirmation(study, settings, top=top, min_seeds=min_seeds, max_seeds=max_seeds, designs=designs,
                                 recipe=recipe, recipe_name=recipe_name)
    if plan is None:
        return None
    arms = {"chosen": Arch.from_json(plan["chosen"]), "r16": Arch.from_json(plan["r16"]),
            "plain": Arch.from_json(plan["plain"])}
    for i, a in enumerate(plan["designs"]):
        arms[f"front{i + 2}"] = Arch.from_json(a)
    ensure_runs(study, arms, list(plan["seeds"]), recipe, data=data, device=device, log=log,
                progress=progress, runner=runner)
    return read_confirmation(study, settings)


def read_confirmation(study, settings: StudySettings | None = None, recs=None) -> "Confirmation | None":
    """The confirmed result, computed from the stored plan and runs (None before a confirmation)."""
    plan = study.user_attrs.get("confirmation")
    if not plan:
        return None
    settings = StudySettings.of(study) if settings is None else settings
    (recipe, recipe_name), deploy, budget = confirmation_recipe(study, settings), settings.deploy_value, settings.budget_value
    own = settings.recipe_value()
    runs = stored_runs(study, recipe_key(recipe))
    seeds = list(plan["seeds"])
    archs = [Arch.from_json(plan["chosen"]), *(Arch.from_json(a) for a in plan["designs"]),
             Arch.from_json(plan["r16"]), Arch.from_json(plan["plain"])]
    recs = records(study) if recs is None else recs
    latency = predicted_latencies(settings.budget, recs, archs)
    by_id = {}
    for a in archs:
        by_id.setdefault(a.id, design_of(a, runs, seeds, deploy, latency))
    designs = tuple(by_id.values())
    chosen, r16, plain = by_id[archs[0].id], by_id[archs[-2].id], by_id[archs[-1].id]
    noise = study_noise(study, recipe, recs)
    searched = next((d for d in designs_of(recs) if d.id == chosen.id), None)
    vs_r16, vs_plain = paired(chosen, r16), paired(chosen, plain)
    over = tuple(d.id for d in designs
                 if not budget.fits(count_cost(d.arch, deploy.image_size, deploy.num_classes), d.arch))
    within = [d for d in designs if d.id not in over]
    front = tuple(design_front(within, settings.objectives))
    # the answer is the confirmed front: a choice another confirmed design beats on every objective is not it
    dom = next(iter(dominators(chosen, front, settings.objectives)), None)
    answer = best_design(front, None, settings.objectives) if dom is not None else None
    two = recipe_key(recipe) != recipe_key(own)
    search_noise, agreement, best = noise, None, None
    if two:  # the confirmation judges: its best design within the budget is the answer
        best = _judged(within, chosen, budget.max_gflops, settings.objectives, ties=dom is None)
        answer = best if dom is not None else None
        search_noise = study_noise(study, own, recs)
        agreement = rank_agreement(_search_side(designs, recs, stored_runs(study, recipe_key(own)), deploy),
                                   search_noise, designs, noise)
    text = finding(chosen, r16, plain, vs_r16, vs_plain, noise, dom, None if dom is None else paired(dom, chosen),
                   answer, recipe.fidelity) if chosen.n else ""
    if text and two and best is not None:
        text += " " + fidelity_words(best, chosen, paired(best, chosen), agreement, own.fidelity, noise, r16, plain)
    return Confirmation(tuple(seeds), chosen, r16, plain, designs, front, vs_r16, vs_plain,
                        noise, None if searched is None else searched.mean, text,
                        detectable(noise, len(seeds)), over, dom, recipe_name, recipe.fidelity, own.fidelity,
                        search_noise, agreement, best, tuple(settings.objectives))


def _judged(within: list[Design], chosen: Design, max_gflops: float | None, objectives=None,
            ties: bool = True) -> Design | None:
    """The most accurate confirmed design within ``max_gflops``; with ``ties`` (the choice is not dominated),
    the search's choice where it is as accurate (a tie is no reason to change the answer)."""
    best = best_design(within, max_gflops, *([objectives] if objectives else []))
    fits = chosen.n and any(d.id == chosen.id for d in within) and (max_gflops is None or chosen.gflops <= max_gflops)
    return chosen if ties and best is not None and fits and chosen.mean >= best.mean - 1e-9 else best  # float sums


def _search_side(designs, recs, runs: dict[tuple[str, int], Run], deploy) -> list[Design]:
    """Each confirmed design as the search's fidelity measured it: its search trials' mean where the
    search trained it, else its calibration runs under the search's recipe (the plain backbone, r=16)."""
    searched = {d.id: d for d in designs_of(recs)}
    return [searched.get(d.id) or design_of(d.arch, runs, sorted(s for (aid, s) in runs if aid == d.id), deploy)
            for d in designs]


def chosen_design(study, settings: StudySettings | None = None, max_gflops: float | None = None,
                  recs=None, front: bool = False) -> tuple[Design, str]:
    """The design a study chose: its confirmed choice (with the confirmation's seeds), else its best
    per-design mean within ``max_gflops`` (default: the budget). Returns (design, where it came from).
    ``front``: the study's answer instead (``se-nas export --best``): where a confirmed design dominates
    the choice, the most accurate design of the confirmed front (``Confirmation.answer``)."""
    settings = StudySettings.of(study) if settings is None else settings
    recs = records(study) if recs is None else recs
    conf = read_confirmation(study, settings, recs)
    limit = settings.budget_value.max_gflops if max_gflops is None else max_gflops
    if conf is not None and front and conf.two_fidelity and (answer := conf.answer(limit)) is not None \
            and answer.id != conf.chosen.id:
        return answer, (f"the most accurate confirmed design on {conf.fidelity}, {answer.n} seeds; the search's "
                        f"choice {conf.chosen.id} (on {conf.search_fidelity}) is not")
    if conf is not None and front and not conf.two_fidelity and conf.dominated_by is not None \
            and (answer := conf.answer(limit)) is not None:
        return answer, (f"the most accurate design of the confirmed front, {answer.n} seeds; the search's choice "
                        f"{conf.chosen.id} is dominated by {conf.dominated_by.id}")
    if conf is not None and conf.chosen.n and (limit is None or conf.chosen.gflops <= limit):
        where = f" on {conf.fidelity}" if conf.two_fidelity else ""
        return conf.chosen, f"the search's confirmed choice, {conf.chosen.n} seeds{where}"
    ds = designs_of(recs)
    best = best_design(ds, limit, settings.objectives)
    if best is None:
        if ds:
            raise StudyError(f"no design of study {study.study_name!r} trained to the end is within {limit:g} GFLOPs; "
                             f"the cheapest has {min(d.gflops for d in ds):.4f}")
        raise StudyError(f"study {study.study_name!r} has no design trained to the end yet; run `se-nas search` first")
    return best, f"the search's best per-design mean, {best.n} seed{'s' if best.n != 1 else ''}"


def export_choice(study, max_gflops: float | None = None):
    """What ``se-nas export --best`` trains: ``(arch, seed, checkpoint tag, metadata)``: the study's
    answer (``chosen_design(front=True)``: never a design the confirmed front dominates; under a
    confirmation recipe, the confirmation's best) retrained under its first seed and the recipe its
    figures come from (the confirmation's for a confirmed design), with the design's mean accuracy,
    standard error and seed count in the metadata (and, where that recipe is not the study's, the recipe
    as ``metadata["recipe"]``)."""
    recs = records(study)
    settings = StudySettings.of(study)
    design, why = chosen_design(study, settings, max_gflops, recs, front=True)
    conf = read_confirmation(study, settings, recs)
    recipe = settings.recipe_value()
    if conf is not None and any(d.id == design.id and d.seeds == design.seeds for d in conf.designs):
        recipe = confirmation_recipe(study, settings)[0]
    noise = study_noise(study, recipe, recs)
    info = {"design_accuracy": design.mean, "design_accuracy_sem": design.sem(noise), "design_seeds": design.n,
            "chosen_from": why, "seed": design.seeds[0],
            "deploy_cost": {"gflops": design.gflops, "mparams": design.mparams, **settings.deploy}}
    if design.trials:
        info["trial"] = design.trials[0]
    tag = f"design-{design.id}-s{design.seeds[0]}"
    if recipe_key(recipe) != recipe_key(settings.recipe_value()):  # another recipe: its own checkpoint
        tag += f"-r{recipe_key(recipe)}"
        info["recipe"] = recipe.to_dict()
    return design.arch, design.seeds[0], tag, info
