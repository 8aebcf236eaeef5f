"""What noise-aware rung early stopping saves in training time, and what it costs in front quality.

Runs real searches (``se_nas.search.stages.run_search``, Optuna backend, the default space and the digits
recipe, a 4 GFLOPs budget) under ``--seeds`` search seeds in each arm, ``--early-stop rungs`` and
``none``, and records per search:

- training time: the sum of the trials' ``seconds`` (wall time inside each trial), the search
  process's CPU seconds, and the epochs trained;
- trials stopped early (and complete, repeated, over-budget, failed);
- the hypervolume of the final per-design front (``se_nas.record.results.design_front``: means over each
  design's seeds) against one fixed reference: accuracy 0, the budget's GFLOPs, r=16's params + 10%;
- the chosen design (``se_nas.record.results.best_design``) retrained under ``--retrain-seeds`` fresh seeds
  (the same seeds for every search), because a front of single-seed means is itself noisy.

Every search starts from the same calibration runs (plain backbone and r=16 under
``--calibration-seeds`` seeds, trained once and copied into each study), so both arms see the same
measured noise and only the search itself is timed; nothing is confirmed (``confirm_top=0``). Search
seed ``s`` of both arms proposes the same designs until the first early stop, so the arms are
compared seed by seed (paired) as well as overall.

Each search runs in its own process (``nice -n 5``, one torch thread), at most ``--jobs`` at once;
each writes one JSON line to ``--out`` as it ends, and a rerun skips the searches already there
(and continues a search that was killed, from its study). The summary is printed at the end, or
alone with ``--summary``.

    python scripts/bench_earlystop.py                       # 3 seeds x 2 arms x 20 trials
    python scripts/bench_earlystop.py --summary             # the table from the results file
    python scripts/bench_earlystop.py --replay 2 3 4        # the rule at these z on the 'none' arm
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import benchlib

ARMS = ("rungs", "none")
TEMPLATE = "calibration"  # the study holding the shared calibration runs
RETRAIN_SEED = 2000  # fresh seeds for the chosen design: no search trial or calibration run uses them


def recipe_of(name: str):
    from se_nas.design.recipe import load_recipe

    return dataclasses.replace(load_recipe(name), threads=1)


def config_of(args, arm: str, seed: int):
    from se_nas.design.budget import Budget
    from se_nas.search.stages import SearchConfig

    return SearchConfig(study=f"{arm}-s{seed}" if arm else TEMPLATE, space=args.space, recipe=recipe_of(args.recipe),
                        recipe_name=args.recipe, budget=Budget(max_gflops=args.budget_gflops),
                        n_trials=args.trials, early_stop=arm or "rungs", seed=seed, root=args.root, progress=False,
                        calibration_seeds=args.calibration_seeds, confirm_top=0)


def calibrate_once(args) -> None:
    """Train the calibration runs once, in their own study, for every search to copy."""
    import torch

    from se_nas.search.confirm import calibrate
    from se_nas.search.stages import prepare_study

    torch.set_num_threads(1)
    config = config_of(args, "", 0)
    study = prepare_study(config)
    noise = calibrate(study, config.settings, args.calibration_seeds, log=lambda s: print(s, flush=True))
    print(f"calibration: seed noise {noise.describe()}; per epoch "
          + ", ".join(f"{e}: {s:.4f}" for e, s in sorted(noise.per_epoch.items())), flush=True)


def reference(args) -> list[float]:
    """The fixed hypervolume reference: accuracy 0, the GFLOPs budget, r=16's params + 10%."""
    from se_nas.design.cost import count_cost
    from se_nas.design.space import load_space

    space = load_space(args.space)
    r16 = count_cost(space.baseline(), space.deploy.image_size, space.deploy.num_classes)
    return [0.0, args.budget_gflops, 1.1 * r16.mparams]


def one_search(args, arm: str, seed: int) -> dict:
    """Run (or continue) one search and measure it; returns its result line."""
    import torch

    from se_nas.search.confirm import RUN_PREFIX, study_noise, train_run
    from se_nas.nn.data import load_data
    from se_nas.design.pareto import hypervolume
    from se_nas.record.results import best_design, design_front, designs_of
    from se_nas.search.stages import prepare_study, run_search
    from se_nas.record.storage import open_study
    from se_nas.record.study import DIRECTIONS, Status, records

    torch.set_num_threads(1)
    config = config_of(args, arm, seed)
    study = prepare_study(config)
    template = open_study(TEMPLATE, root=args.root)
    for key, value in template.user_attrs.items():
        if key.startswith(RUN_PREFIX) and key not in study.user_attrs:
            study.set_user_attr(key, value)
    resumed = bool(study.trials)
    _, envelope = benchlib.timed(lambda: run_search(config))

    recs = records(study)
    designs = designs_of(recs)
    front = design_front(designs)
    hv = hypervolume([[d.mean, d.gflops, d.mparams] for d in front], DIRECTIONS, reference(args)) if front else 0.0
    best = best_design(designs, args.budget_gflops)
    data = load_data(config.recipe)
    retrained = [train_run(best.arch, config.recipe, RETRAIN_SEED + i, data).accuracy
                 for i in range(args.retrain_seeds)] if best is not None else []
    noise = study_noise(study, config.recipe, recs)
    by_status = {s.value: sum(r.status is s for r in recs) for s in Status}
    return {
        "arm": arm, "seed": seed, "trials": args.trials, "space": config.space.name, "recipe": args.recipe,
        "budget_gflops": args.budget_gflops, "resumed": resumed,
        "train_seconds": sum(r.seconds for r in recs if r.trained),
        "process_cpu_seconds": envelope["cpu_s"], "wall_seconds": envelope["wall_s"],
        "epochs": sum(r.epochs for r in recs if r.trained),
        "statuses": {k: v for k, v in by_status.items() if v},
        "stopped_early": by_status[Status.STOPPED_EARLY.value],
        "designs": len(designs), "front": [d.id for d in front], "hypervolume": hv,
        "reference": reference(args),
        "best": None if best is None else {"id": best.id, "label": best.arch.label, "search_mean": best.mean,
                                           "search_seeds": best.n, "gflops": best.gflops, "mparams": best.mparams},
        "retrained": retrained,
        "retrained_mean": statistics.fmean(a for a in retrained if a is not None) if any(
            a is not None for a in retrained) else None,
        "noise": noise.to_dict(),
        "load_average": benchlib.load_averages(),
    }


# --- the driver ------------------------------------------------------------------------------------
def read_results(path: Path, trials: int) -> dict[tuple[str, int], dict]:
    out = {}
    if path.exists():
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}: line {i} is not JSON ({e.msg}); remove it to go on")
            if row.get("trials") == trials:
                out[(row["arm"], row["seed"])] = row
    return out


def run_all(args) -> None:
    out = Path(args.out)
    done = read_results(out, args.trials)
    todo = [(arm, s) for s in range(args.seeds) for arm in args.arms if (arm, s) not in done]
    if not todo:
        return
    base = [sys.executable, os.path.abspath(__file__), "--root", args.root, "--space", args.space,
            "--recipe", args.recipe, "--trials", str(args.trials), "--budget-gflops", str(args.budget_gflops),
            "--calibration-seeds", str(args.calibration_seeds), "--retrain-seeds", str(args.retrain_seeds)]
    nice = ["nice", "-n", str(args.nice)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    print(f"calibrating ({args.calibration_seeds} seeds of plain and r=16)", flush=True)
    subprocess.run(nice + base + ["--calibrate"], env=env, check=True)
    running: list[tuple[subprocess.Popen, str, int]] = []
    while todo or running:
        while todo and len(running) < args.jobs:
            arm, s = todo.pop(0)
            print(f"start {arm} seed {s}", flush=True)
            p = subprocess.Popen(nice + base + ["--one", arm, str(s)], env=env, stdout=subprocess.PIPE, text=True)
            running.append((p, arm, s))
        time.sleep(2)
        for item in [r for r in running if r[0].poll() is not None]:
            p, arm, s = item
            running.remove(item)
            lines = [ln for ln in p.stdout.read().splitlines() if ln.startswith("{")]
            if p.returncode != 0 or not lines:
                print(f"{arm} seed {s} failed (exit {p.returncode}); rerun to continue it", flush=True)
                continue
            with out.open("a") as f:
                f.write(lines[-1] + "\n")
            row = json.loads(lines[-1])
            print(f"done {arm} seed {s}: {row['train_seconds']:.0f} s trained, {row['stopped_early']} stopped, "
                  f"hypervolume {row['hypervolume']:.4f}, chosen retrained {row['retrained_mean']}", flush=True)


def mean_se(xs, nd: int) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    se = f" ± {statistics.stdev(xs) / math.sqrt(len(xs)):.{nd}f}" if len(xs) > 1 else ""
    return f"{statistics.fmean(xs):.{nd}f}{se}"


METRICS = {  # column -> (value of one result line, decimals)
    "training s (sum of trials)": (lambda r: r["train_seconds"], 0),
    "process CPU s": (lambda r: r["process_cpu_seconds"], 0),
    "epochs trained": (lambda r: r["epochs"], 1),
    "stopped early": (lambda r: r["stopped_early"], 1),
    "designs trained to the end": (lambda r: r["designs"], 1),
    "front hypervolume": (lambda r: r["hypervolume"], 4),
    "chosen design, search mean": (lambda r: r["best"] and r["best"]["search_mean"], 4),
    "chosen design, retrained mean": (lambda r: r["retrained_mean"], 4),
}


def summary(args) -> str:
    from se_nas.record.results import paired_difference

    rows = read_results(Path(args.out), args.trials)
    if not rows:
        return f"no results for {args.trials} trials in {args.out} yet"
    arms = [a for a in ARMS if any(k[0] == a for k in rows)]
    seeds = sorted({s for _, s in rows})
    lines = [f"{len(rows)} searches of {args.trials} trials, {args.out}; mean ± standard error over search seeds",
             "", "| | " + " | ".join(f"{a} (n={sum(k[0] == a for k in rows)})" for a in arms)
             + " | rungs - none, paired by seed |", "|---|" + "---:|" * (len(arms) + 1)]
    for name, (get, nd) in METRICS.items():
        cells = [mean_se((get(rows[(a, s)]) for s in seeds if (a, s) in rows), nd) for a in arms]
        both = [s for s in seeds if ("rungs", s) in rows and ("none", s) in rows
                and get(rows[("rungs", s)]) is not None and get(rows[("none", s)]) is not None]
        diff = "-"
        if len(both) >= 2:
            d = paired_difference([get(rows[("rungs", s)]) for s in both], [get(rows[("none", s)]) for s in both])
            diff = d.describe(nd)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {diff} |")
    lines.append("")
    for (a, s), r in sorted(rows.items()):
        b = r["best"] or {}
        lines.append(f"{a} seed {s}: {r['statuses']}, chosen {b.get('id')} ({b.get('label')}) "
                     f"{b.get('search_mean', math.nan):.4f} over {b.get('search_seeds')} seed(s), retrained "
                     + ", ".join(f"{x:.4f}" for x in r["retrained"] if x is not None)
                     + f"; load {r['load_average'][0]:.1f}")
    return "\n".join(lines)


# --- replay: the rule on the full histories of the "none" arm ---------------------------------------
def replay(study, z: float, budget_gflops: float, ref) -> dict:
    """Apply the rung rule (``se_nas.search.earlystop.should_stop`` with ``z``) trial by trial to a search
    that ran without early stopping, as the rungs arm would have (a stopped trial's history is cut at
    its rung for the trials after it). Every trial was trained to the end, so what each stop cost is
    known: the stopped trial's final accuracy, and the front without it."""
    from se_nas.search.confirm import study_noise
    from se_nas.search.earlystop import peers_of, should_stop
    from se_nas.design.pareto import hypervolume
    from se_nas.record.results import best_design, design_front, designs_of
    from se_nas.record.study import DIRECTIONS, Status, StudySettings, records

    recipe = StudySettings.of(study).recipe_value()
    full = records(study)
    seen, stops, saved, spent = [], [], 0.0, 0.0
    for r in full:
        if r.trained:
            spent += r.seconds
            noise = study_noise(study, recipe, seen)
            for rung in recipe.rungs:
                if rung < len(r.history) and should_stop(rung, r.history[rung - 1], r.gflops, peers_of(seen),
                                                         noise.per_epoch.get(rung), mparams=r.mparams, z=z):
                    stops.append((r, rung))
                    saved += r.seconds * (1 - rung / len(r.history))
                    r = dataclasses.replace(r, status=Status.STOPPED_EARLY, history=r.history[:rung],
                                            accuracy=r.history[rung - 1], epochs=rung)
                    break
        seen.append(r)

    def front_hv(recs):
        front = design_front(designs_of(recs))
        return hypervolume([[d.mean, d.gflops, d.mparams] for d in front], DIRECTIONS, ref) if front else 0.0

    # a stopped trial whose full run finished within 2 sigma (final seed noise) of the median trial or
    # above it was not a poor candidate: the stop acted on the rung's noise, not on the design
    finals = [r.accuracy for r in full if r.is_result]
    sigma = study_noise(study, recipe, full).sigma or 0.0
    typical = statistics.median(finals) - 2 * sigma if finals else math.nan
    best_full, best_cut = best_design(designs_of(full), budget_gflops), best_design(designs_of(seen), budget_gflops)
    return {"z": z, "stops": len(stops), "saved_share": saved / spent if spent else 0.0,
            "stopped": [(r.number, rung, r.history[rung - 1], r.accuracy) for r, rung in stops],
            "good_stopped": sum(r.accuracy >= typical for r, _ in stops),
            "hv_full": front_hv(full), "hv_cut": front_hv(seen),
            "same_choice": best_full is not None and best_cut is not None and best_full.id == best_cut.id}


def replay_summary(args, zs) -> str:
    from se_nas.record.storage import open_study

    rows = read_results(Path(args.out), args.trials)
    seeds = sorted(s for a, s in rows if a == "none")
    if not seeds:
        return "no 'none' searches to replay yet"
    lines = [f"replay of the rule on the {len(seeds)} 'none' searches (every trial trained to the end): "
             "per z, summed over searches", "",
             "| z | stopped | of them finishing within 2 sigma of the median trial or above | training time saved | "
             "front hypervolume kept | same chosen design |", "|---:|---:|---:|---:|---:|---:|"]
    detail = []
    for z in zs:
        res = [replay(open_study(f"none-s{s}", root=args.root), z, args.budget_gflops, rows[("none", s)]["reference"])
               for s in seeds]
        kept = [r["hv_cut"] / r["hv_full"] for r in res if r["hv_full"]]
        lines.append(f"| {z:g} | {sum(r['stops'] for r in res)} | {sum(r['good_stopped'] for r in res)} | "
                     f"{mean_se([r['saved_share'] for r in res], 3)} | {mean_se(kept, 4)} | "
                     f"{sum(r['same_choice'] for r in res)} of {len(res)} |")
        for s, r in zip(seeds, res):
            detail.append(f"z {z:g}, seed {s}: " + "; ".join(
                f"trial {n} at epoch {e}: {a:.3f}, finished {f:.3f}" for n, e, a, f in r["stopped"]))
    return "\n".join(lines + [""] + detail)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="resnet50-per-stage")
    ap.add_argument("--recipe", default="digits")
    ap.add_argument("--trials", type=int, default=20, help="counted trials per search (default 20)")
    ap.add_argument("--seeds", type=int, default=3, help="search seeds per arm (default 3)")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--budget-gflops", type=float, default=4.0)
    ap.add_argument("--calibration-seeds", type=int, default=3)
    ap.add_argument("--retrain-seeds", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2, help="searches at once (default 2)")
    ap.add_argument("--nice", type=int, default=5)
    ap.add_argument("--root", default="trials/bench-earlystop", help="where the studies live")
    ap.add_argument("--out", default="trials/bench-earlystop/results.jsonl", help="results, one JSON line a search")
    ap.add_argument("--summary", action="store_true", help="print the table from --out and exit")
    ap.add_argument("--replay", nargs="+", type=float, metavar="Z",
                    help="apply the rule with these z to the 'none' searches' full histories, print, exit")
    ap.add_argument("--calibrate", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--one", nargs=2, metavar=("ARM", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    for name in ("trials", "seeds", "jobs", "retrain_seeds"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.calibration_seeds < 2:
        ap.error(f"--calibration-seeds must be at least 2 (noise needs two seeds), got {args.calibration_seeds}")
    try:  # a bad space, recipe or budget: one line here, not a traceback from every child process
        config_of(args, "", 0)
    except ValueError as e:
        ap.error(str(e))
    if args.calibrate:
        calibrate_once(args)
    elif args.replay:
        if min(args.replay) < 0:
            ap.error(f"--replay: z must be >= 0, got {min(args.replay):g}")
        print(replay_summary(args, args.replay))
    elif args.one:
        arm, seed = args.one
        if arm not in ARMS:
            ap.error(f"--one: arm must be one of {', '.join(ARMS)}, got {arm!r}")
        print(json.dumps(one_search(args, arm, int(seed))), flush=True)
    else:
        if not args.summary:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            run_all(args)
        print(summary(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
