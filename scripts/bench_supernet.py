"""How well does the SE supernet rank designs, and what does it cost? (issue 13, Measure)

Ranking quality: Kendall tau between each design's supernet accuracy (its path, BatchNorm
recalibrated) and its standalone accuracy (the mean over ``--seeds`` trainings of the proxy recipe),
next to the ceiling the proxy's own noise sets: tau between two standalone seeds of the same designs
(every pair of seeds, averaged). Designs: those of ``scripts/rank_fidelity.py`` (plain, r=16, then a
fixed-seed random sample of the default space), ``--designs`` of them.

Cost: supernet training plus ranking ``--rank`` designs (the one-shot search's own ``rank`` with
NSGA-II, budget checked first, into a scratch in-memory study), against one standalone training of
the largest design of the space (most GFLOPs), measured in the same process one after the other,
with the load average at each step; CPU seconds (``time.process_time``) are the comparable figure on
a shared machine.

Every standalone run is stored as a run of an Optuna study (``se_nas.search.confirm.ensure_runs``,
``--root``/bench-supernet/study.db) as it finishes, and the supernet keeps a checkpoint: a rerun
continues where it stopped. ``--import-jsonl`` takes runs from ``scripts/rank_fidelity.py``'s file
(same recipe, same ``train_run``) after retraining one of them and checking the accuracy is
identical; the timings are written to ``--root``/bench-supernet/timings.json.

A supernet variant (``--gate-weights``, ``--supernet-epochs``, ``--sampling``) is chosen on that
default set; ``--held-out N`` then reports it on N fresh designs (another fixed-seed sample of the
space, none of the default set's), stored the same way. ``--eval-sweep`` evaluates every design
under fewer/more calibration batches and validation subsets, three calibration draws each.

``--few-shot SPLIT`` (Zhao et al., *Few-shot neural architecture search*, ICML 2021) trains instead one
sub-supernet per part of the space under a split of ``SPLITS`` (each from scratch, on the paths of
its part only, ``--supernet-epochs`` each: half the recipe's per part for K=2 gives the sub-supernets
together the steps of one supernet) and evaluates each design on its part's sub-supernet.
``--broken X`` sets the broken-path limit (``se_nas.search.oneshot.BROKEN``, in multiples of ln C) for the
training: a control for the redraw of slow paths.

    nice -n 5 python scripts/bench_supernet.py --import-jsonl /tmp/rf/rf.jsonl   # resumable
    python scripts/bench_supernet.py --analyze                                  # the tables only
    nice -n 5 python scripts/bench_supernet.py --held-out 28 --standalone-only  # the held-out runs
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import benchlib
from benchlib import designs as pick_designs, held_out
from benchlib import proxy_recipe as recipe  # the default proxy on the CPU, one thread, no rungs


def largest(space):
    """The design of ``space`` with the most GFLOPs on its deployment model (SE cost is additive
    over stages, so the most expensive option of each stage)."""
    from se_nas.design.cost import count_cost

    d = space.deploy
    stages = tuple(max(space.stage_options(i), key=lambda se: count_cost(
        space.plain().with_stage(i, se), d.image_size, d.num_classes).flops) for i in range(len(space.stages)))
    return space.plain().__class__(space.backbone, stages, stride_on=space.stride_on, se_bias=space.se_bias)


SWEEP_BATCHES = (1, 2, 4, 8)  # calibration batches (of the recipe's batch size) per path
SWEEP_VAL = (90, 180, 359)  # validation images per path (359: digits' whole validation split)


STREAM = ("pre", "post", "identity")  # positions whose gate scales the residual stream (or the unit's input)
CENTRED = ("tanh", "relu")  # gates not in (0, 1): they flip or kill what they scale


def _stream_gates(arch) -> set[str]:
    return {se.gate for se in arch.stages if se is not None and se.position in STREAM}


# A few-shot split: name -> (K, design -> its part in range(K)).
SPLITS = {
    # a tanh/ReLU gate scales the stream in some stage: the paths docs/oneshot.md found the supernet fails
    "stream-centred": (2, lambda a: int(bool(_stream_gates(a) & set(CENTRED)))),
    # what scales the stream: nothing, only sigmoid-like gates, or a tanh/ReLU gate somewhere
    "stream-gate": (3, lambda a: 2 if _stream_gates(a) & set(CENTRED) else int(bool(_stream_gates(a)))),
}


class Part:
    """The budget of a sub-supernet's training: a path fits if it is within ``budget`` and in ``part``
    of ``split`` (``PathDraw`` redraws the others)."""

    def __init__(self, budget, split: str, part: int):
        self.budget, self.split, self.part = budget, split, part

    def fits(self, cost, arch) -> bool:
        return SPLITS[self.split][1](arch) == self.part and self.budget.fits(cost, arch)

    def describe(self) -> str:
        return f"{self.budget.describe()} in part {self.part} of split {self.split}"


def balance(split: str, space, sets: dict, n: int = 20000) -> str:
    """How the split divides the space (fair per-choice draws, as training draws them) and each design set."""
    import random
    from collections import Counter

    from se_nas.nn.supernet import sample_path

    k, part = SPLITS[split]
    rng = random.Random(0)
    draws = Counter(part(sample_path(space, rng)) for _ in range(n))
    out = [f"space ({n} draws): " + " / ".join(f"{draws[i] / n:.2f}" for i in range(k))]
    for name, designs in sets.items():
        c = Counter(part(a) for a in designs)
        out.append(f"{name}: " + " / ".join(str(c[i]) for i in range(k)))
    return f"split {split}, parts 0..{k - 1}: " + "; ".join(out)


def import_runs(study, path: Path, r, data, designs) -> int:
    """Runs of ``scripts/rank_fidelity.py`` (label ``proxy``, the same recipe) into the study, after
    checking that retraining one of them gives the identical accuracy."""
    from se_nas.design.arch import Arch
    from se_nas.search.confirm import Run, ensure_runs, recipe_key, stored_runs, train_run

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    want = {a.id for a in designs}
    rows = [x for x in rows if x["label"] == "proxy" and x["recipe"] == r.to_dict() and x["arch_id"] in want]
    have = stored_runs(study, recipe_key(r))
    new = [x for x in rows if (x["arch_id"], x["seed"]) not in have]
    if not new:
        return 0
    probe = new[0]
    again = train_run(Arch.from_json(probe["arch"]), r, probe["seed"], data, device="cpu")
    if again.accuracy != probe["accuracy"]:
        sys.exit(f"{path}: retraining {probe['arch_id']} seed {probe['seed']} gave {again.accuracy}, the file says "
                 f"{probe['accuracy']}: not the same training, not imported")
    runs = {(x["arch_id"], x["seed"]): Run(Arch.from_json(x["arch"]), x["seed"], x["accuracy"], tuple(x["history"]),
                                           x["wall_s"], x["reason"]) for x in new}

    def from_file(todo, recipe):  # ensure_runs stores what its runner yields, under the recipe's run key
        return (runs[(a.id, seed)] for a, seed in todo if (a.id, seed) in runs)

    ensure_runs(study, {run.arch.id: run.arch for run in runs.values()}, sorted({seed for _, seed in runs}), r,
                runner=from_file)
    return len(new)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/tmp/bench_supernet")
    p.add_argument("--designs", type=int, default=25, help="plain + r=16 + random designs (one of "
                   "rank_fidelity's 22 does not train: 25 leave 24)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--supernet-epochs", type=int, default=10)
    p.add_argument("--sampling", default="uniform")
    p.add_argument("--gate-weights", default=None, help="which gates share a slot's excitation "
                   "(se_nas.nn.supernet.GATE_WEIGHTS; default the supernet's)")
    p.add_argument("--rank", type=int, default=2000, help="designs ranked for the cost figure (0: no cost figure)")
    p.add_argument("--held-out", type=int, default=0, metavar="N",
                   help="instead: N fresh designs (the space's random sample under seed 1, none of the default "
                   "set's): the held-out set a supernet variant chosen on the default set is reported on")
    p.add_argument("--set-seed", type=int, default=1, help="with --held-out: the sample's seed (2: a second held-out "
                   "set, none of the default set's or the first held-out set's designs)")
    p.add_argument("--standalone-only", action="store_true", help="train the standalone runs only")
    p.add_argument("--import-jsonl", type=Path, default=None)
    p.add_argument("--eval-sweep", action="store_true", help="also evaluate every design under fewer/more "
                   "calibration batches and validation subsets, three calibration draws each (item 2: the cost of "
                   "a path against its ranking)")
    p.add_argument("--few-shot", default=None, metavar="SPLIT", choices=sorted(SPLITS),
                   help="one sub-supernet per part of this split, --supernet-epochs each (%(choices)s)")
    p.add_argument("--supernet-seed", type=int, default=0, help="the supernet's training seed (a second one "
                   "puts a noise figure on a variant)")
    p.add_argument("--broken", type=float, default=None, metavar="X", help="the broken-path limit for training "
                   "(multiples of ln C; default se_nas.search.oneshot.BROKEN)")
    p.add_argument("--init-seeds", type=int, nargs="*", default=None, metavar="SEED",
                   help="the initialisation check's seeds (default se_nas.nn.pathscore.INIT_SEEDS; none: no check, the "
                   "score is the supernet accuracy)")
    p.add_argument("--analyze", action="store_true", help="print the tables from what is stored")
    p.add_argument("--all-sets", action="store_true", help="with --analyze: the design sets (default, held-out "
                   "under --set-seed 1, 2 and 3) and all of them pooled, under this supernet variant")
    args = p.parse_args()

    import optuna
    import torch

    from se_nas.design.budget import Budget
    from se_nas.search.confirm import ensure_runs, recipe_key, stored_runs, train_run
    from se_nas.nn.data import load_data
    from se_nas.nn.pathscore import INIT_SEEDS, PathEvaluator
    from se_nas.search.oneshot import rank, supernet_recipe, train_supernet
    from se_nas.record.samplers import make_sampler
    from se_nas.design.space import load_space
    from se_nas.record.storage import open_study
    from se_nas.nn.supernet import DEFAULT_GATE_WEIGHTS

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, r = load_space("resnet50-per-stage"), recipe()
    data = load_data(r)
    designs = pick_designs("resnet50-per-stage", args.designs, 0)
    if args.held_out:
        designs = held_out(designs, args.held_out, args.set_seed)
    study = open_study("bench-supernet", root=args.root, create=True)
    folder = Path(args.root) / "bench-supernet"
    args.gate_weights = args.gate_weights or DEFAULT_GATE_WEIGHTS
    args.init_seeds = INIT_SEEDS if args.init_seeds is None else args.init_seeds
    variant = f"{args.sampling}-{args.supernet_epochs}" + ("" if args.gate_weights == "shared" else f"-{args.gate_weights}")
    variant += (f"-fewshot-{args.few_shot}" if args.few_shot else "") + (f"-broken{args.broken:g}" if args.broken else "")
    variant += f"-seed{args.supernet_seed}" if args.supernet_seed else ""
    if args.broken:
        import se_nas.search.oneshot

        se_nas.search.oneshot.BROKEN = args.broken
    if args.few_shot:
        print(balance(args.few_shot, space, {"default set": pick_designs("resnet50-per-stage", args.designs, 0),
                                             "held-out set": designs if args.held_out else []}), flush=True)
    tfile = folder / f"timings-{variant}.json"
    timings = json.loads(tfile.read_text()) if tfile.exists() else {}

    def save():
        tfile.write_text(json.dumps(timings, indent=1))

    if not args.analyze and not args.standalone_only:
        if args.import_jsonl:
            print(f"imported {import_runs(study, args.import_jsonl, r, data, designs)} runs", flush=True)
        # 1. supernet training, then every design's supernet accuracy
        # (few-shot: one sub-supernet per part, trained on its part's paths only)
        k, part = SPLITS[args.few_shot] if args.few_shot else (1, lambda a: 0)
        evs = []
        for i in range(k):
            budget = Part(Budget(), args.few_shot, i) if args.few_shot else Budget()
            suffix = f"-part{i}" if args.few_shot else ""
            (net, res, draw), t = benchlib.timed(lambda: train_supernet(
                space, r, data, budget=budget, epochs=args.supernet_epochs, sampling=args.sampling, seed=args.supernet_seed,
                checkpoint=folder / f"supernet-{variant}{suffix}.pt", device="cpu", gate_weights=args.gate_weights))
            timings.setdefault("supernet_train" + suffix, {**t, "train_s": res.seconds, "epochs": res.epochs,
                                                           "broken_draws": len(draw.broken), "drawn": len(draw.drawn)})
            evs.append(PathEvaluator(net, supernet_recipe(r, args.supernet_epochs, 0), data, device="cpu",
                                     init_seeds=tuple(args.init_seeds)))
        if args.few_shot:  # the parts' training together, for the cost figure
            parts = [timings[f"supernet_train-part{i}"] for i in range(k)]
            timings["supernet_train"] = {key: sum(x[key] for x in parts) for key in ("cpu_s", "wall_s", "train_s")}
            timings["supernet_train"].update(load_start=parts[0]["load_start"], load_end=parts[-1]["load_end"])
        ev = evs[0]
        got, t = benchlib.timed(lambda: {a.id: evs[part(a)](a) for a in designs})
        timings.setdefault("supernet_acc", {}).update({i: x.accuracy for i, x in got.items()})
        if args.init_seeds:  # the ranking's score: the accuracy discounted by the initialisation signal
            timings.setdefault("supernet_score", {}).update({i: x.score for i, x in got.items()})
            timings.setdefault("init_signal", {}).update({i: x.signal for i, x in got.items()})
        timings["eval_designs"] = {**t, "n": len(designs)}
        save()
        print(f"supernet: {timings['supernet_train']}; evaluated {len(designs)} designs in {t}", flush=True)
        if args.eval_sweep:
            sweep = timings.setdefault("sweep", {})
            for batches, val, cseed in itertools.product(SWEEP_BATCHES, SWEEP_VAL, (0, 1, 2)):
                ev2 = PathEvaluator(net, supernet_recipe(r, args.supernet_epochs, 0), data, device="cpu",
                                    batches=batches, val_fraction=val / len(data.val), calibration_seed=cseed,
                                    init_seeds=())
                acc, t = benchlib.timed(lambda: {a.id: ev2(a).accuracy for a in designs})
                sweep.setdefault(f"{batches}x{val}/{cseed}", {"acc": {}})["acc"].update(acc)
                sweep[f"{batches}x{val}/{cseed}"]["cpu_per_path"] = t["cpu_s"] / len(designs)
                sweep[f"{batches}x{val}/{cseed}"]["load"] = [t["load_start"], t["load_end"]]
            save()
        # 2. the cost: ranking --rank designs, and one standalone training of the largest design
        rank_key = "rank" if args.init_seeds else "rank_nocheck"
        if args.rank and rank_key not in timings:
            # a fresh SQLite study, as the search writes its ranking
            scratch = open_study(f"rank-{int(time.time())}", root=args.root, sampler=make_sampler("nsga2", 0),
                                 create=True)
            n, t = benchlib.timed(lambda: rank(scratch, space, Budget(), space.deploy, ev, args.rank))
            timings[rank_key] = {**t, "designs": args.rank, "evaluated": n}
            save()
            print(f"ranked {args.rank} designs ({n} evaluated): {t}", flush=True)
        if args.rank and "largest" not in timings:
            big = largest(space)
            run, t = benchlib.timed(lambda: train_run(big, r, 0, data, device="cpu"))
            timings["largest"] = {**t, "arch": big.label, "id": big.id, "accuracy": run.accuracy}
            save()
            print(f"largest design {big}: {t}", flush=True)
    if not args.analyze:  # 3. the standalone runs, seed by seed (resumable)
        ensure_runs(study, {a.id: a for a in designs}, list(args.seeds), r, data=data, device="cpu",
                    log=lambda line: print(line, flush=True), stage="standalone")
    runs = stored_runs(study, recipe_key(r))
    if args.all_sets:
        default = pick_designs("resnet50-per-stage", args.designs, 0)
        analyze_sets(runs, {"default set": default, "held-out set": held_out(default, 28, 1),
                            "second held-out set": held_out(default, 28, 2),
                            "third held-out set": held_out(default, 28, 3)}, list(args.seeds), timings)
        return
    analyze(runs, designs, list(args.seeds), timings, args.few_shot or "stream-centred")


def analyze_sets(runs, sets: dict, seeds, timings) -> None:
    """Each design set and all of them pooled: tau of the supernet accuracy, of the ranking's score
    (the accuracy discounted by the initialisation signal) and of the signal alone against the
    standalone mean, next to the seed-to-seed ceiling; the pooled ratio with a bootstrap interval
    (designs resampled, 2,000 draws)."""
    import random
    import statistics

    from scipy.stats import kendalltau

    def ceiling(ds):
        return statistics.fmean(kendalltau([runs[(a.id, s1)].accuracy for a in ds],
                                           [runs[(a.id, s2)].accuracy for a in ds])[0]
                                for s1, s2 in itertools.combinations(seeds, 2))

    scores = {"supernet accuracy": timings.get("supernet_acc", {}), "score (accuracy x signal)":
              timings.get("supernet_score", {}), "initialisation signal alone": timings.get("init_signal", {})}
    print("\n| designs | n | ceiling | " + " | ".join(f"{k}: tau (p), ratio" for k in scores) + " |\n" + "|---" * (3 + len(scores)) + "|")
    pooled = []
    for name, designs in [*sets.items(), ("pooled", None)]:
        ds = pooled if designs is None else [a for a in designs if all(
            (a.id, s) in runs and runs[(a.id, s)].accuracy is not None for s in seeds) and all(a.id in sc for sc in scores.values())]
        if designs is not None:
            pooled += ds
        if len(ds) < 3:
            print(f"| {name} | {len(ds)} | not evaluated |")
            continue
        means = [statistics.fmean(runs[(a.id, s)].accuracy for s in seeds) for a in ds]
        c = ceiling(ds)
        cells = []
        for sc in scores.values():
            t, p = kendalltau([sc[a.id] for a in ds], means)
            cells.append(f"{t:.2f} ({p:.2g}), {t / c:.2f}")
        print(f"| {name} | {len(ds)} | {c:.2f} | " + " | ".join(cells) + " |")
    rng = random.Random(0)
    for label, sc in scores.items():
        ratios = []
        for _ in range(2000):
            ds = [rng.choice(pooled) for _ in pooled]
            means = [statistics.fmean(runs[(a.id, s)].accuracy for s in seeds) for a in ds]
            c = ceiling(ds)
            if c > 0:
                ratios.append(kendalltau([sc[a.id] for a in ds], means)[0] / c)
        ratios.sort()
        print(f"pooled {label}: ratio to the ceiling, 95% bootstrap interval {ratios[int(0.025 * len(ratios))]:.2f} "
              f"to {ratios[int(0.975 * len(ratios))]:.2f}")


def analyze(runs, designs, seeds, timings, split: str) -> None:
    import itertools
    import statistics

    from scipy.stats import kendalltau

    sup = timings.get("supernet_acc", {})
    full = [a for a in designs if a.id in sup and all((a.id, s) in runs and runs[(a.id, s)].accuracy is not None
                                                      for s in seeds)]
    means = [statistics.fmean(runs[(a.id, s)].accuracy for s in seeds) for a in full]
    tau, p = kendalltau([sup[a.id] for a in full], means)
    pairs = []
    for s1, s2 in itertools.combinations(seeds, 2):
        pairs.append(kendalltau([runs[(a.id, s1)].accuracy for a in full], [runs[(a.id, s2)].accuracy for a in full])[0])
    ceiling = statistics.fmean(pairs) if pairs else float("nan")
    print(f"\n| designs | seeds | tau(supernet, standalone mean) | p | tau(seed, seed), mean of {len(pairs)} pairs "
          f"| ratio |\n|---|---|---|---|---|---|\n| {len(full)} | {len(seeds)} | {tau:.2f} | {p:.2g} | "
          f"{ceiling:.2f} ({', '.join(f'{x:.2f}' for x in pairs)}) | {tau / ceiling:.2f} |")
    trained = [a for a, m in zip(full, means) if m >= 0.5]
    if len(trained) > 2:
        tm = [m for m in means if m >= 0.5]
        t2, p2 = kendalltau([sup[a.id] for a in trained], tm)
        pr = [kendalltau([runs[(a.id, s1)].accuracy for a in trained], [runs[(a.id, s2)].accuracy for a in trained])[0]
              for s1, s2 in itertools.combinations(seeds, 2)]
        print(f"designs that train (mean >= 0.5): {len(trained)}: tau {t2:.2f} (p {p2:.2g}), seed-to-seed "
              f"{statistics.fmean(pr):.2f}")
    k, part = SPLITS[split]
    for i in range(k):  # a few-shot split ranks across sub-supernets; within a part each ranks its own designs
        ids = [j for j, a in enumerate(full) if part(a) == i]
        if len(ids) > 2:
            ti, pi = kendalltau([sup[full[j].id] for j in ids], [means[j] for j in ids])
            print(f"part {i} of split {split}: {len(ids)} designs, tau {ti:.2f} (p {pi:.2g})")
    ti, pi = kendalltau([-part(a) for a in full], means)  # the split's own indicator as the score (a control)
    print(f"the part alone (lower part ranked higher) against the standalone mean: tau {ti:.2f} (p {pi:.2g})")
    print("\n| design | supernet | standalone (" + ", ".join(f"seed {s}" for s in seeds) + ") | mean |\n|---|---|---|---|")
    for a, m in sorted(zip(full, means), key=lambda x: -x[1]):
        accs = " / ".join(f"{runs[(a.id, s)].accuracy:.3f}" for s in seeds)
        label = a.label.replace("|", "\\|")  # a Markdown table cell
        print(f"| `{a.id}` {label} | {sup[a.id]:.3f} | {accs} | {m:.3f} |")
    sweep = timings.get("sweep", {})
    if full and all(a.id in sweep.get(f"4x359/{c}", {}).get("acc", {}) for c in (0, 1, 2) for a in full):
        print("\n| calibration batches | validation images | CPU-s per path | tau(supernet, standalone mean), "
              "3 calibration draws | mean | tau to the 4x359 setting |\n|---|---|---|---|---|---|")
        ref = {a.id: statistics.fmean(timings["sweep"][f"4x359/{c}"]["acc"][a.id] for c in (0, 1, 2)) for a in full}
        for b, v in itertools.product(SWEEP_BATCHES, SWEEP_VAL):
            cells = [timings["sweep"].get(f"{b}x{v}/{c}") for c in (0, 1, 2)]
            if not all(cells) or not all(a.id in c["acc"] for c in cells for a in full):
                continue
            taus = [kendalltau([c["acc"][a.id] for a in full], means)[0] for c in cells]
            agree = statistics.fmean(kendalltau([c["acc"][a.id] for a in full], [ref[a.id] for a in full])[0]
                                     for c in cells)
            print(f"| {b} | {v} | {statistics.fmean(c['cpu_per_path'] for c in cells):.3f} | "
                  f"{', '.join(f'{x:.2f}' for x in taus)} | {statistics.fmean(taus):.2f} | {agree:.2f} |")
    if {"supernet_train", "rank", "largest"} <= set(timings):
        st, rk, big = timings["supernet_train"], timings["rank"], timings["largest"]
        for unit in ("cpu_s", "wall_s"):
            total = st[unit] + rk[unit]
            print(f"{unit}: supernet training {st[unit]:.0f} + ranking {rk['designs']} designs {rk[unit]:.0f} = "
                  f"{total:.0f}; largest design standalone {big[unit]:.0f}: ratio {total / big[unit]:.1f}x")
        print(f"loads: supernet {st['load_start']:.1f}-{st['load_end']:.1f}, ranking {rk['load_start']:.1f}-"
              f"{rk['load_end']:.1f}, largest {big['load_start']:.1f}-{big['load_end']:.1f}; per evaluated path "
              f"{rk['cpu_s'] / max(1, rk['evaluated']):.3f} CPU-s (ranking loop, incl. sampler and bookkeeping), "
              f"{timings['eval_designs']['cpu_s'] / timings['eval_designs']['n']:.3f} CPU-s (evaluation alone)")


if __name__ == "__main__":
    main()
