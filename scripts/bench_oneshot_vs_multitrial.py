"""One-shot against multi-trial search at equal wall time: hypervolume of the confirmed fronts, with
seeds (issue 13, Measure).

For each search seed (``--seeds``) two studies under ``--root`` are run **side by side**, one torch
thread each, so both see the same machine load:

- ``ovm-oneshot-s<seed>``: ``run_search`` with ``strategy="oneshot"`` on the default space and proxy (digits),
  ``--budget-gflops``, ``--designs`` ranked designs, supernet epochs default;
- ``ovm-mt-s<seed>``: ``se_nas.search.stages.run_search`` (the default multi-trial search) with the same
  seed, budget, calibration and confirmation settings. Its search stage is the Optuna backend
  (``se_nas.search.stages.BACKENDS``) grown one counted trial at a time until it has used the wall time of
  the one-shot's search stage (supernet training + ranking) of the same seed: it stops before the
  first trial that would start after that time, so it overshoots by less than one trial.

Both calibrate first (plain and r=16 under the confirmation seeds) and confirm the same way (the
chosen design and the next designs of its front, r=16 and plain under the same ``--confirm-seeds``
seeds). What is compared is the **confirmed front** of each study: standalone means over the
confirmation seeds, accuracy against GFLOPs of the deployment model, designs within the budget. Its
hypervolume is taken against one fixed reference point: (accuracy 1/C = a uniform guess on the
proxy's C classes, GFLOPs = the budget): every design that is allowed and better than chance adds
area, and the same point serves every seed and both strategies.

The search stage's wall and CPU time (``time.perf_counter``/``time.process_time`` around the
search stage only, calibration and confirmation excluded) and the 1-minute load average at its
start and end go to ``--root``/timing/<study>.json. Everything resumes: the studies, the supernet's
checkpoint and the confirmation runs are stored as they finish; the multi-trial's elapsed search
time is stored after every trial. Only a one-shot search stage killed part-way loses the time of the
killed part (``--analyze`` flags it).

    nice -n 5 python scripts/bench_oneshot_vs_multitrial.py                 # the run (resumable)
    python scripts/bench_oneshot_vs_multitrial.py --analyze                 # the tables from stored studies
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import benchlib

STRATEGIES = ("oneshot", "mt")
STUDY = "ovm-{strategy}-s{seed}"


# --- timing files ---------------------------------------------------------------------------------
def timing_path(root: Path, study: str) -> Path:
    return root / "timing" / f"{study}.json"


def read_timing(root: Path, study: str) -> dict:
    p = timing_path(root, study)
    return json.loads(p.read_text()) if p.exists() else {}


def write_timing(root: Path, study: str, data: dict) -> None:
    p = timing_path(root, study)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(p)


# --- the two strategies ---------------------------------------------------------------------------
def config_of(args, strategy: str, seed: int):
    from se_nas.design.budget import Budget
    from se_nas.search.stages import SearchConfig

    # each strategy under its own default sampler, as the CLI runs them (the sampler left to the strategy)
    return SearchConfig(study=STUDY.format(strategy=strategy, seed=seed), recipe=args.recipe,
                        budget=Budget(max_gflops=args.budget_gflops),
                        strategy="oneshot" if strategy == "oneshot" else "multi-trial",
                        n_trials=args.designs if strategy == "oneshot" else 1, seed=seed, root=args.root,
                        calibration_seeds=args.confirm_seeds, confirm_top=args.confirm_top,
                        confirm_min_seeds=args.confirm_seeds, confirm_max_seeds=args.confirm_seeds,
                        supernet_epochs=args.supernet_epochs if strategy == "oneshot" else None)


def run_oneshot_timed(args, seed: int) -> None:
    """The one-shot search, its search stage (the strategy's ``stage``) timed by running the search with
    that strategy's entry of ``se_nas.search.strategies.STRATEGIES`` wrapped."""
    import dataclasses

    from se_nas.search.stages import strategies
    from se_nas.search.stages import run_search

    config, root = config_of(args, "oneshot", seed), Path(args.root)
    stored = read_timing(root, config.study)
    original = strategies.STRATEGIES["oneshot"]

    def timed(study, config, progress, data):
        if stored.get("done"):  # measured already: the rerun only reads the supernet back
            return original.stage(study, config, progress, data)
        clock = benchlib.Envelope(stored)
        write_timing(root, config.study, {**stored, "calls": stored.get("calls", 0) + 1})
        original.stage(study, config, progress, data)
        write_timing(root, config.study, {**clock.now(), "calls": stored.get("calls", 0) + 1, "done": True})

    strategies.STRATEGIES["oneshot"] = dataclasses.replace(original, stage=timed)
    try:
        run_search(config)
    finally:
        strategies.STRATEGIES["oneshot"] = original


def run_multitrial_timed(args, seed: int) -> None:
    """The multi-trial search, its search stage grown one counted trial at a time until it has used
    the one-shot's search wall time of the same seed (read from its timing file; while the one-shot
    is still searching, the multi-trial goes on)."""
    from se_nas.search.stages import run_search
    from se_nas.search.strategies import BACKENDS
    from se_nas.record.study import counted

    config, root = config_of(args, "mt", seed), Path(args.root)
    partner = STUDY.format(strategy="oneshot", seed=seed)

    def search(study, config, progress, data):
        stored = read_timing(root, config.study)
        clock = benchlib.Envelope(stored)
        while True:
            target = read_timing(root, partner)
            spent = clock.now()
            if target.get("done") and spent["wall_s"] >= target["wall_s"]:
                break
            n = counted(study)[0] + 1
            progress.log(f"search stage {spent['wall_s']:.0f}s of the one-shot's "
                         f"{target['wall_s']:.0f}s" if target.get("done") else
                         f"search stage {spent['wall_s']:.0f}s, the one-shot still searching")
            BACKENDS[config.backend](study, replace(config, n_trials=n), progress, data)
            write_timing(root, config.study, {**clock.now(), "trials": counted(study)[0], "target_s": target.get("wall_s")})
        write_timing(root, config.study, {**read_timing(root, config.study), "target_s": target["wall_s"], "done": True})

    if read_timing(root, config.study).get("done"):
        # a finished search stage: a rerun (confirmation left) asks for no trial beyond those it holds
        from se_nas.record.storage import open_study

        n = counted(open_study(config.study, root=config.root))[0]
        run_search(replace(config, n_trials=n))
    else:  # the multi-trial strategy with this search stage in place of its own
        import dataclasses

        from se_nas.search import strategies

        original = strategies.STRATEGIES["multi-trial"]
        strategies.STRATEGIES["multi-trial"] = dataclasses.replace(original, stage=search)
        try:
            run_search(config)
        finally:
            strategies.STRATEGIES["multi-trial"] = original


RUNNERS = {"oneshot": run_oneshot_timed, "mt": run_multitrial_timed}


# --- the driver -----------------------------------------------------------------------------------
def last_line(path: Path) -> str:
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 4000))
        text = f.read().decode(errors="replace")
    lines = [s.strip() for s in text.replace("\r", "\n").splitlines() if s.strip()]
    return lines[-1][:110] if lines else ""


def drive(args) -> None:
    root = Path(args.root)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    passthrough = ["--root", args.root, "--recipe", args.recipe, "--budget-gflops", str(args.budget_gflops),
                   "--designs", str(args.designs), "--confirm-top", str(args.confirm_top),
                   "--confirm-seeds", str(args.confirm_seeds)]
    if args.supernet_epochs is not None:
        passthrough += ["--supernet-epochs", str(args.supernet_epochs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for seed in args.seeds:
        procs = {}
        for s in STRATEGIES:
            log = root / "logs" / f"{STUDY.format(strategy=s, seed=seed)}.log"
            procs[s] = (subprocess.Popen(["nice", "-n", "5", sys.executable, __file__, "--worker", s, "--seed", str(seed),
                                          *passthrough], stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env), log)
        start = time.monotonic()
        while any(p.poll() is None for p, _ in procs.values()):
            time.sleep(20)
            print(f"seed {seed} {time.monotonic() - start:5.0f}s load {benchlib.load():.1f} | " +
                  " | ".join(f"{s}: {last_line(log)}" for s, (_, log) in procs.items()), flush=True)
            if any(p.returncode for p, _ in procs.values()):  # one failed: the other would wait for it
                for p, _ in procs.values():
                    if p.poll() is None:
                        p.terminate()
        bad = {s: p.returncode for s, (p, _) in procs.items() if p.returncode}
        if bad:
            raise SystemExit(f"seed {seed}: worker(s) failed {bad}; see {root / 'logs'}; rerun to continue")
    analyze(args)


# --- the analysis ---------------------------------------------------------------------------------
def confirmed_points(study, settings, conf):
    """The confirmed designs within the budget as (design, accuracy mean, GFLOPs), and the 2-D front."""
    from se_nas.design.pareto import pareto_front

    ds = [d for d in conf.designs if d.id not in conf.over_budget and d.n]
    mask = pareto_front([(d.mean, d.gflops) for d in ds], ("maximize", "minimize")) if ds else []
    return ds, [d for d, m in zip(ds, mask) if m]


def role_of(conf, d) -> str:
    from se_nas.design.arch import baseline_name
    from se_nas.search.confirm import role_name

    if d.id == conf.chosen.id:
        return "chosen"
    if d.id == conf.r16.id:
        return role_name("r16", baseline_name(d.arch))
    if d.id == conf.plain.id:
        return "plain backbone"
    return "front design"


def study_row(root: Path, strategy: str, seed: int, ref) -> dict | None:
    from se_nas.search.confirm import read_confirmation
    from se_nas.design.pareto import hypervolume
    from se_nas.record.storage import open_study
    from se_nas.record.study import StudySettings, counted, records

    name = STUDY.format(strategy=strategy, seed=seed)
    if not (root / name).exists():
        return None
    study = open_study(name, root=root)
    settings = StudySettings.of(study)
    conf = read_confirmation(study, settings)
    t = read_timing(root, name)
    recs = records(study)
    row = {"strategy": strategy, "seed": seed, "timing": t, "counted": counted(study)[0],
           "evaluated": sum(1 for r in recs if r.is_ranked),
           "trained": sum(1 for r in recs if r.trained and r.fidelity != "supernet"),
           "complete": bool(conf and conf.complete)}
    if strategy == "oneshot":  # ranking's wall time: first path asked to last recorded
        ts = [tr for tr in study.get_trials(deepcopy=False) if tr.user_attrs.get("fidelity") == "supernet"
              and tr.datetime_complete is not None]
        if ts:
            row["rank_s"] = (max(x.datetime_complete for x in ts) - min(x.datetime_start for x in ts)).total_seconds()
    if conf is not None:
        ds, front = confirmed_points(study, settings, conf)
        row["designs"], row["front"], row["conf"] = ds, front, conf
        row["hv"] = hypervolume([(d.mean, d.gflops) for d in front], ("maximize", "minimize"), ref) if front else 0.0
        base = [d for d in ds if d.id in (conf.r16.id, conf.plain.id)]  # what every search confirms anyway
        row["hv_base"] = hypervolume([(d.mean, d.gflops) for d in base], ("maximize", "minimize"), ref) if base else 0.0
        from se_nas.search.confirm import recipe_key, stored_runs

        runs = stored_runs(study, recipe_key(settings.recipe_value())).values()
        base_ids = (conf.r16.id, conf.plain.id)
        row["calib_s"] = sum(x.seconds for x in runs if x.arch.id in base_ids)
        row["confirm_s"] = sum(x.seconds for x in runs if x.arch.id not in base_ids)
        best = max(front, key=lambda d: d.mean) if front else None
        row["best"] = best
    return row


def analyze(args) -> None:
    import statistics

    from se_nas.record.results import paired_difference

    root = Path(args.root)
    num_classes = 10  # the digits proxy; recipe files hold no class count (the dataset does)
    if args.recipe != "digits":
        from se_nas.nn.data import load_data
        from se_nas.design.recipe import load_recipe

        num_classes = load_data(load_recipe(args.recipe)).num_classes
    ref = (1.0 / num_classes, args.budget_gflops)
    rows = [r for s in args.seeds for st in STRATEGIES if (r := study_row(root, st, s, ref)) is not None]
    if not rows:
        raise SystemExit(f"no study under {root}; run without --analyze first")
    print(f"hypervolume reference point: accuracy {ref[0]:.3f} (1/C, a uniform guess), {ref[1]:g} GFLOPs (the budget)\n")
    print("| seed | strategy | search wall-s | search CPU-s | load start-end | supernet + rank wall-s | calibrate / confirm wall-s (sum of runs) | designs ranked (within budget) / "
          "trials trained (counted) | confirmed front (acc, GFLOPs) | best of front | HV | HV of r=16 + plain |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["timing"]
        flag = "" if t.get("calls", 1) <= 1 else f" ({t['calls']} calls: time of a killed call lost)"
        split = (f"{t['wall_s'] - r['rank_s']:.0f} + {r['rank_s']:.0f}" if "rank_s" in r and t.get("wall_s") else "-")
        work = f"{r['counted']} ({r['evaluated']} evaluated)" if r["strategy"] == "oneshot" else f"{r['trained']} trained ({r['counted']} counted)"
        front = ", ".join(f"{d.mean:.3f}@{d.gflops:.3f}" for d in r.get("front", ()))
        best = r.get("best")
        best_s = (f"`{best.id}` {role_of(r['conf'], best)} {best.mean:.3f} ({best.arch.label.replace(' | ', ' / ')})"
                  if best else "-")
        hv = f"{r['hv']:.5f}" if "hv" in r else "-"
        if not r["complete"]:
            hv += " (confirmation incomplete)"
        print(f"| {r['seed']} | {r['strategy']} | {t.get('wall_s', float('nan')):.0f}{flag} | {t.get('cpu_s', float('nan')):.0f} | "
              f"{t.get('load_start', float('nan')):.1f}-{t.get('load_end', float('nan')):.1f} | {split} | "
              f"{r.get('calib_s', float('nan')):.0f} / {r.get('confirm_s', float('nan')):.0f} | {work} | {front} | "
              f"{best_s} | {hv} | {r.get('hv_base', float('nan')):.5f} |")
    by = {(r["strategy"], r["seed"]): r for r in rows if "hv" in r and r["complete"]}
    seeds = [s for s in args.seeds if all((st, s) in by for st in STRATEGIES)]
    print()
    for st in STRATEGIES:
        hv = [by[(st, s)]["hv"] for s in seeds]
        if hv:
            sd = statistics.stdev(hv) if len(hv) > 1 else float("nan")
            print(f"{st:8s} HV over {len(hv)} seeds: mean {statistics.mean(hv):.5f}, sd {sd:.5f}")
    if len(seeds) >= 2:
        d = paired_difference([by[("oneshot", s)]["hv"] for s in seeds], [by[("mt", s)]["hv"] for s in seeds])
        verdict = ("no difference (smaller than twice its standard error)" if abs(d.mean) < 2 * d.se or
                   (d.p is not None and d.p >= 0.05) else ("one-shot larger" if d.mean > 0 else "multi-trial larger"))
        p = f", p = {d.p:.2f}" if d.p is not None and not math.isnan(d.p) else ""
        print(f"paired difference one-shot - multi-trial: {d.mean:+.5f} +- {d.se:.5f} (se, {d.n} seeds{p}): {verdict}")
        wall = [by[("mt", s)]["timing"]["wall_s"] / by[("oneshot", s)]["timing"]["wall_s"] for s in seeds]
        print(f"multi-trial / one-shot search wall time: {', '.join(f'{w:.2f}' for w in wall)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/tmp/oneshot_vs_mt")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipe", default="digits")
    p.add_argument("--budget-gflops", type=float, default=4.0)
    p.add_argument("--designs", type=int, default=300, help="designs the one-shot search ranks")
    p.add_argument("--supernet-epochs", type=int, default=None, help="default: the one-shot search's own")
    p.add_argument("--confirm-top", type=int, default=3)
    p.add_argument("--confirm-seeds", type=int, default=3, help="calibration and confirmation seeds (K, both)")
    p.add_argument("--analyze", action="store_true", help="print the tables from the stored studies")
    p.add_argument("--worker", choices=STRATEGIES, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.designs < 1 or args.confirm_seeds < 2 or args.confirm_top < 1:
        p.error(f"--designs must be >= 1, --confirm-seeds >= 2, --confirm-top >= 1; got {args.designs}, "
                f"{args.confirm_seeds}, {args.confirm_top}")
    if args.worker:
        RUNNERS[args.worker](args, args.seed)
    elif args.analyze:
        analyze(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
