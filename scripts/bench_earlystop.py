"""What cost-aware rung early stopping saves, and what it costs in Pareto-front quality.

Runs the same seeded search twice (Optuna backend, real training), once with ``early_stop="rungs"``
and once with ``"none"``, and reports the total training seconds, the epochs trained, and the
hypervolume of each run's Pareto front of complete trials (accuracy up, GFLOPs and params down),
both against the same reference point. The two runs see different results after the first stopped
trial, so their proposals diverge: compare the totals, not trial by trial.

    python scripts/bench_earlystop.py                      # tiny space, a 4-epoch digits proxy
    python scripts/bench_earlystop.py --space resnet50-per-stage --recipe digits --n-trials 12
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile

from se_nas.budget import Budget
from se_nas.pareto import hypervolume
from se_nas.recipe import load_recipe
from se_nas.search import SearchConfig, front_records, run_search
from se_nas.study import DIRECTIONS, records


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="tiny")
    ap.add_argument("--recipe", default=None, help="default: the tiny recipe at 4 epochs, rungs 1 and 2")
    ap.add_argument("--n-trials", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    recipe = load_recipe(args.recipe) if args.recipe else dataclasses.replace(
        load_recipe("tiny"), epochs=4, rungs=(1, 2), max_train_samples=800)
    runs = {}
    with tempfile.TemporaryDirectory() as root:
        for mode in ("none", "rungs"):
            cfg = SearchConfig(study=f"es-{mode}", space=args.space, recipe=recipe, budget=Budget(),
                               n_trials=args.n_trials, early_stop=mode, seed=args.seed, root=root, progress=False)
            study = run_search(cfg)
            runs[mode] = (records(study), front_records(study))
    allrecs = [r for recs, _ in runs.values() for r in recs if r.trained]
    ref = [0.0, max(r.gflops for r in allrecs) * 1.001, max(r.mparams for r in allrecs) * 1.001]
    print(f"space {args.space}, recipe {recipe.dataset} {recipe.epochs} epochs, rungs {list(recipe.rungs)}, "
          f"{args.n_trials} trials, seed {args.seed}; hypervolume reference {ref}")
    print(f"{'early stop':<12}{'train s':>9}{'epochs':>8}{'stopped':>9}{'front':>7}{'best acc':>10}{'hypervolume':>13}")
    for mode, (recs, front) in runs.items():
        secs = sum(r.seconds for r in recs)
        epochs = sum(r.epochs for r in recs)
        stopped = sum(r.status == "stopped_early" for r in recs)
        hv = hypervolume([[r.accuracy, r.gflops, r.mparams] for r in front], DIRECTIONS, ref) if front else 0.0
        best = max((r.accuracy for r in recs if r.status == "complete"), default=0.0)
        print(f"{mode:<12}{secs:>9.1f}{epochs:>8}{stopped:>9}{len(front):>7}{best:>10.4f}{hv:>13.6g}")
    s0 = sum(r.seconds for r in runs["none"][0])
    s1 = sum(r.seconds for r in runs["rungs"][0])
    print(f"saved {s0 - s1:.1f} s of {s0:.1f} s ({100 * (s0 - s1) / s0:.0f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
