"""Non-training overhead of a search trial, and budget-check time analytic vs fvcore.

Runs a real search (Optuna backend, SQLite study) and splits every trained trial's wall time into
training (the trainer's own clock) and everything else: sampling, the budget check, building the
proxy, the study writes. Then times the budget check per candidate: the analytic count
(``count_cost``) against fvcore's traced count of the built deployment model.

    python scripts/bench_overhead.py --space tiny --recipe tiny --n-trials 20
    python scripts/bench_overhead.py                     # default space and digits recipe
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import optuna

from se_nas.design.budget import Budget
from se_nas.nn.build import build_model
from se_nas.design.cost import count_cost, traced_flops
from se_nas.nn.data import load_data
from se_nas.search.optuna_backend import run_one
from se_nas.record.samplers import quiet_optuna
from se_nas.search.stages import SearchConfig, prepare_study
from se_nas.design.space import load_space
from se_nas.record.study import records

import benchlib


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="resnet50-per-stage")
    ap.add_argument("--recipe", default="digits")
    ap.add_argument("--n-trials", type=int, default=6)
    ap.add_argument("--fvcore-samples", type=int, default=5)
    args = ap.parse_args()
    quiet_optuna()
    print(benchlib.machine_line())

    with tempfile.TemporaryDirectory() as root:
        cfg = SearchConfig(study="bench", space=args.space, recipe=args.recipe, budget=Budget(),
                           n_trials=args.n_trials, root=root, progress=False, early_stop="none")
        data = load_data(cfg.recipe)
        study = prepare_study(cfg)
        walls = []
        for _ in range(args.n_trials):
            t0 = time.perf_counter()
            run_one(study, cfg, data=data)
            walls.append(time.perf_counter() - t0)
        recs = records(study)
        # r.seconds is run_trial's clock (budget check, build, train); the rest of the wall time is
        # the search's own work: ask, sampling, owner/arch attributes, recording and tell.
        rows = []
        for wall, r in zip(walls[1:], recs[1:]):  # the first trial pays one-off imports and warm-up
            rows.append((wall, r.seconds))
        total = sum(w for w, _ in rows)
        in_trial = sum(s for _, s in rows)
        print(f"\nsearch {cfg.space.name} / recipe {args.recipe}: {len(rows)} trials after a warm-up trial")
        print(f"  mean wall time per trial            {total / len(rows):8.3f} s")
        print(f"  inside run_trial (build+train)      {in_trial / len(rows):8.3f} s")
        over = (total - in_trial) / len(rows)
        print(f"  outside: sample, ask/tell, writes   {over:8.3f} s  ({100 * over / (total / len(rows)):.1f}% of a trial)")

    space = load_space(args.space)
    deploy = space.deploy
    study = optuna.create_study(directions=["maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    archs = []
    for _ in range(200):
        t = study.ask()
        archs.append(space.sample(t))
        study.tell(t, 0.0)
    count_cost(archs[0], deploy.image_size, deploy.num_classes)
    t0 = time.perf_counter()
    for a in archs:
        count_cost(a, deploy.image_size, deploy.num_classes)
    analytic = (time.perf_counter() - t0) / len(archs)
    fv = []
    for a in archs[: args.fvcore_samples]:
        t0 = time.perf_counter()
        model = build_model(a, deploy.num_classes)
        flops = traced_flops(model, deploy.image_size)
        fv.append(time.perf_counter() - t0)
        assert flops == count_cost(a, deploy.image_size, deploy.num_classes).flops, a
    print(f"\nbudget check per candidate ({space.name}, {deploy.image_size}x{deploy.image_size}, "
          f"{deploy.num_classes} classes):")
    print(f"  analytic count_cost (200 random candidates)    {analytic * 1e6:10.1f} us")
    print(f"  fvcore: build + trace ({len(fv)} candidates)           {statistics.mean(fv):10.3f} s "
          f"({statistics.mean(fv) / analytic:,.0f}x slower; same FLOPs on every one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
