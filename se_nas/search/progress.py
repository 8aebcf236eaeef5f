"""What a search shows while it runs and when it ends: a bar, one line per trial, the summary.

The summary is rendered from ``se_nas.record.results`` values: per-design means with their standard error
and seeds, the measured seed noise, the confirmed front and the one-sentence finding.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

from ..design.arch import Arch, baseline_name
from ..record.storage import DEFAULT_ROOT, printable_url
from ..record.study import OBJECTIVE_TABLE, STATUSES, Status, StudySettings, counted, records, retried


def trial_line(t) -> str:
    """``#12 3fa9c01b2e acc 0.964 3.87 GFLOPs 28.1M complete 21.3s`` for a finished trial."""
    a = t.user_attrs
    try:
        status = Status(a.get("status", "failed"))
    except ValueError:
        status = Status.FAILED
    arch_id = Arch.from_json(a["arch"]).id if a.get("arch") else "-" * 10
    cost = f"{a['gflops']:.2f} GFLOPs {a['mparams']:.1f}M" if a.get("gflops") is not None else ""
    acc = f"acc {a['accuracy']:.3f}" if (status.trained or status is Status.REPEAT) \
        and a.get("accuracy") is not None else "acc   -  "
    what = {Status.COMPLETE: "complete", Status.STOPPED_EARLY: a.get("reason") or "stopped early",
            Status.OVER_BUDGET: a.get("reason") or "over budget, not trained",
            Status.REPEAT: a.get("reason") or "repeat, not trained",
            Status.FAILED_TO_LEARN: f"failed to learn: {a.get('reason', '')}",
            Status.INTERRUPTED: "interrupted (queued again)"}.get(
        status, f"failed: {a.get('reason') or t.system_attrs.get('fail_reason', '')}")
    secs = f" {a['seconds']:.1f}s" if a.get("seconds") and status is not Status.REPEAT else ""
    return f"#{t.number} {arch_id} {acc} {cost} {what}{secs}".replace("  ", " ")


class Progress:
    """A tqdm bar over the trials that count towards ``n_trials`` (or over the runs of the calibration
    and confirmation stages), one line per finished trial or run, and a live status line of the
    training in flight (epoch, step, loss, last validation accuracy) as the bar's postfix."""

    LIVE_EVERY = 0.5  # seconds between live-line refreshes

    def __init__(self, study, config):
        self.study, self.config, self.seen = study, config, set()
        self.bar = None
        self._live_at = 0.0
        self._trials_done = 0
        import optuna

        S = optuna.trial.TrialState
        for t in study.get_trials(deepcopy=False, states=(S.COMPLETE, S.FAIL)):
            self.seen.add(t.number)
        if not config.progress:
            return
        done = min(config.n_trials, counted(study)[0])
        print(f"search {config.study!r}: space {config.space.name} ({config.space.size():,} designs), "
              f"{config.budget.describe()} on the {config.deploy.image_size}x{config.deploy.image_size}, "
              f"{config.deploy.num_classes}-class model, recipe {config.recipe_name}, sampler {config.sampler}, "
              f"{config.workers} worker{'s' if config.workers != 1 else ''}; {done} of {config.n_trials} trials "
              "already finished", flush=True)
        self._trials_done = done

    def stage(self, name: str, total: int) -> None:
        """A bar for one stage: ``search`` over the trials, or ``calibrate``/``confirm`` over seed runs."""
        if not self.config.progress:
            return
        from tqdm import tqdm

        self.close()
        initial = self._trials_done if name == "search" else 0
        self.bar = tqdm(total=total, initial=initial, desc=name, unit="trial" if name == "search" else "run",
                        file=sys.stderr, dynamic_ncols=True)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def live(self, text: str) -> None:
        """The training in flight, shown after the bar (throttled: training calls this every step)."""
        import time

        now = time.monotonic()
        if self.bar is not None and now - self._live_at >= self.LIVE_EVERY:
            self._live_at = now
            self.bar.set_postfix_str(text[:80], refresh=True)

    def log(self, line: str) -> None:
        """A line above the bar (or on stdout without one)."""
        if self.bar is not None:
            self.bar.write(line)
        elif self.config.progress:
            print(line, flush=True)

    def trial_done(self, t) -> None:
        if t.number in self.seen:
            return
        self.seen.add(t.number)
        if self.bar is not None:
            self.bar.set_postfix_str("", refresh=False)
            self.bar.write(trial_line(t))
            # repeats and failures that are retried (a dead process's trial) don't count towards n_trials
            if t.user_attrs.get("status") != Status.REPEAT.value and t.number not in retried(self.study):
                self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def counts(recs) -> dict[str, int]:
    """How many trials have each status."""
    c = dict.fromkeys(STATUSES, 0)
    for r in recs:
        c[r.status.value] += 1
    return c


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _ranking_lines(scored, objectives, ms) -> list[str]:
    """A one-shot study's front over its supernet scores (a ranking, not trainings)."""
    from ..record.results import design_front

    ranking = design_front(scored, objectives)
    lines = [f"supernet ranking front (supernet scores: a ranking, not trainings), "
             f"{_plural(len(ranking), 'design')}:"]
    for d in ranking:
        lines.append(f"  {d.id:<10}  score {d.mean:<24.4f}  {d.gflops:>7.3f}  {d.mparams:>6.2f}M{ms(d)}  "
                     f"{d.arch.label}")
    return lines


def summarize(study, root: str | Path | None = None, storage: str | None = None) -> str:
    """Counts, the per-design front, the confirmed result and the commands to look further, as printed
    after a search."""
    from ..design.budget import predicted_latencies
    from .confirm import read_confirmation, study_noise
    from .strategies import strategy_of
    from ..record.results import design_front, designs_of

    recs = records(study)
    c = counts(recs)
    name = study.study_name
    trained = [r for r in recs if r.is_result]
    ds = designs_of(recs)
    # a one-shot study's supernet rows are path evaluations, not trainings
    strategy = strategy_of(study)
    paths = 0 if strategy.trains_each_design else sum(1 for r in recs if strategy.values(r))
    evaluated = f"{paths} supernet paths evaluated (not trained), " if paths else ""
    lines = [
        f"\nstudy {name!r}: {_plural(len(recs), 'trial')}: {evaluated}{c['complete'] - paths} trained to the end "
        f"({_plural(len(ds), 'distinct design')}), {c['stopped_early']} stopped early, {c['failed']} failed, "
        + (f"{c['failed_to_learn']} failed to learn (chance accuracy), " if c['failed_to_learn'] else "")
        + (f"{c['interrupted']} interrupted (queued again), " if c['interrupted'] else "")
        + f"{c['over_budget']} over budget (never trained), {c['repeat']} repeats of a known design "
        "(answered from its record, not trained)"
    ]
    if trained:
        lines.append(f"distinct designs among the trials trained to the end: {len(ds)} of {len(trained)} "
                     f"({len(ds) / len(trained):.0%})")
    conf = read_confirmation(study, recs=recs)
    # the search's designs carry the search recipe's noise; a confirmation recipe's noise is its own
    noise = conf.search_noise if conf is not None else study_noise(study, recs=recs)
    settings = StudySettings.of(study)
    search_fidelity = settings.recipe_value().fidelity
    lines.append(f"proxy seed noise (on {search_fidelity}): {noise.describe()}")
    if conf is not None and conf.two_fidelity:
        lines.append(f"confirmation seed noise (on {conf.fidelity}, recipe {conf.recipe_name}): {conf.noise.describe()}")
    front = design_front(ds, settings.objectives)
    lat = predicted_latencies(settings.budget, recs, [d.arch for d in conf.designs] if conf else ())

    def ms(d) -> str:  # the predicted latency column, in a study with a device's table
        return "" if not lat else f"  {lat[d.id]:>7.2f}ms" if d.id in lat else f"  {'':>9}"

    if front:
        down = " and ".join(OBJECTIVE_TABLE[o].short for o in settings.objectives[1:])
        lines.append(f"search front (per-design mean over its search seeds on {search_fidelity}; accuracy up, "
                     f"{down} down), {_plural(len(front), 'design')}:")
        lines.append(f"  {'id':<10}  {'accuracy (mean ± s.e., seeds)':<30}  {'GFLOPs':>7}  {'params':>7}"
                     f"{'    latency' if lat else ''}  design")
        for d in front:
            lines.append(f"  {d.id:<10}  {d.describe(noise):<30}  {d.gflops:>7.3f}  {d.mparams:>6.2f}M{ms(d)}  "
                         f"{d.arch.label}")
    elif paths:  # a one-shot study: its search is the supernet ranking, its trained answer the confirmation
        lines += _ranking_lines(designs_of(recs, strategy.values), settings.objectives, ms)
    else:
        lines.append("no trial has been trained to the end yet: no front")
    if conf is not None:
        lines += _confirmation_lines(conf, ds, search_fidelity, ms)
    lines += _next_lines(name, root, storage)
    return "\n".join(lines)


def _confirmation_lines(conf, ds, search_fidelity: str, ms) -> list[str]:
    """The summary's confirmation: each confirmed design under the fresh seeds, the chosen design's
    search and confirmed means, the two fidelities' agreement, and the finding."""
    lines = []
    k = len(conf.seeds)
    det = f"; with {k} seeds it detects differences of about {conf.detectable:.3f} or more" \
        if conf.detectable is not None and math.isfinite(conf.detectable) else ""
    lines.append(f"confirmed under the same {k} fresh seeds on {conf.fidelity}{det}:")
    ref = baseline_name(conf.r16.arch.backbone)
    w = max(7, len(ref))
    for d in conf.designs:
        role = ("chosen" if d.id == conf.chosen.id else ref if d.id == conf.r16.id
                else "plain" if d.id == conf.plain.id else "front")
        tag = " (front)" if any(f.id == d.id for f in conf.front) else ""
        ob = " (over budget)" if d.id in conf.over_budget else ""
        if conf.dominated_by is not None and d.id == conf.chosen.id:
            ob += f" (dominated by {conf.dominated_by.id})"
        lines.append(f"  {role:<{w}} {d.id:<10}  {d.describe(conf.noise):<30}  {d.gflops:>7.3f}  {d.mparams:>6.2f}M"
                     f"{ms(d)}{tag}{ob}  {d.arch.label}")
    if not conf.complete:
        lines.append("  (confirmation incomplete: rerun the command to finish it)")
    if conf.search_mean is not None and conf.chosen.n:
        searched = next((d for d in ds if d.id == conf.chosen.id), None)
        n = f" over {_plural(searched.n, 'seed')}" if searched is not None else ""
        lines.append(f"the chosen design: {conf.search_mean:.4f} in the search{n}, picked as the best of "
                     f"{_plural(len(ds), 'design')}; {conf.chosen.mean:.4f} under the confirmation's fresh seeds")
    if conf.two_fidelity:
        agree = conf.agreement.describe() if conf.agreement is not None else \
            "not measured (fewer than 3 confirmed designs measured at both)"
        still = ("still the best confirmed design" if conf.best is not None and conf.best.id == conf.chosen.id
                 else f"not the best confirmed design: {conf.best.id} is (the answer; `export --best` takes it)"
                 if conf.best is not None else "not confirmed")
        lines.append(f"two fidelities: search on {search_fidelity}, confirmation on {conf.fidelity}; rank "
                     f"agreement over the confirmed designs: {agree}; the search's choice is {still}")
    lines.append(f"finding: {conf.sentence}")
    return lines


def _next_lines(name: str, root, storage: str | None) -> list[str]:
    """The commands to look further (never with the storage's password)."""
    opts = ""
    if root is not None and Path(root) != DEFAULT_ROOT:
        opts += f" --root {root}"
    if storage is not None:
        # never the password: the user puts it back (or sets SE_NAS_STORAGE) when running the hint
        opts += f" --storage {printable_url(storage)}"
    return ["next:", f"  se-nas compare {name}{opts}", f"  se-nas report {name}{opts}",
            f"  se-nas export {name} --best -o best.senas{opts}"]
