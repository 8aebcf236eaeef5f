"""The one-shot ranking against free baselines (issue 21, item 5): zero-cost proxies at initialisation
(``se_nas.nn.pathscore.synflow`` and ``grad_norm``), the one-shot's own score and the seed-to-seed
ceiling, side by side on the same designs, each as Kendall tau against the standalone mean accuracy.

The designs and their trained accuracies are the ones docs/oneshot.md stores (its tables "Per
design, default set" and "Per design, held-out set": standalone runs of seeds 0-2 on the digits proxy
and the per-gate supernet's path accuracy, supernet seed 0, 1 x 90); nothing is trained here. The
designs are rebuilt from their ids through the same sets ``scripts/bench_supernet.py`` drew
(``benchlib.designs(..., 25, 0)`` and ``benchlib.held_out(..., 28, 1)``). Per design, on the
digits proxy's model at initialisation under each of ``se_nas.nn.pathscore.INIT_SEEDS`` (far from
every training seed), median over the seeds:

- ``grad_norm``: the loss gradient's norm on the first calibration batch (64 training images);
- ``synflow``: SynFlow, data-free;
- the one-shot's score: the stored supernet accuracy x min(1, initialisation signal), the signal
  recomputed here with ``InitCheck`` exactly as ``PathEvaluator`` does.

The ceiling is the mean over the 3 pairs of seeds of Kendall tau between two standalone seeds.
``--rank-fidelity FILE:LABEL`` adds the designs of ``scripts/rank_fidelity.py``'s results under LABEL
(their mean over seeds as the target; the ceiling from that label's seeds).

    python scripts/zero_cost_baselines.py
    python scripts/zero_cost_baselines.py --rank-fidelity rf.jsonl:digits rf.jsonl:w025-8ep
"""
from __future__ import annotations

import argparse
import itertools
import re
import statistics
import sys
from pathlib import Path

from benchlib import designs, held_out, proxy_recipe, read_jsonl

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\| `([0-9a-f]{10})` [^|]*(?:\\\|[^|]*)*\| ([0-9.]+) \| ([0-9.]+) / ([0-9.]+) / ([0-9.]+) \| [0-9.]+ \|$")


def stored_sets(doc: Path) -> dict[str, dict[str, tuple[float, list[float]]]]:
    """docs/oneshot.md's per-design tables: set name -> design id -> (supernet accuracy, 3 standalone runs)."""
    sets, name = {}, None
    for line in doc.read_text().splitlines():
        if line.startswith("Per design, "):
            name = line[len("Per design, "):].split(" (")[0].rstrip(":")
            sets[name] = {}
        elif name and (m := ROW.match(line)):
            sets[name][m[1]] = (float(m[2]), [float(m[3]), float(m[4]), float(m[5])])
    return sets


def kendall(x, y) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(x, y)[0])


def ceiling(runs: list[list[float]]) -> float:
    k = min(len(r) for r in runs)
    if k < 2:  # one seed: no ceiling
        return float("nan")
    return statistics.fmean(kendall([r[i] for r in runs], [r[j] for r in runs]) for i, j in itertools.combinations(range(k), 2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--doc", default=str(ROOT / "docs" / "oneshot.md"))
    p.add_argument("--rank-fidelity", nargs="*", default=[], metavar="FILE:LABEL")
    p.add_argument("--min-accuracy", type=float, default=0.5, help="the second row of each set keeps designs at or above")
    args = p.parse_args()

    import torch

    from se_nas.design.arch import Arch
    from se_nas.design.space import load_space
    from se_nas.nn.data import load_data
    from se_nas.nn.pathscore import INIT_SEEDS, InitCheck, grad_norm, synflow
    from se_nas.nn.train import data_batches
    from se_nas.search.trial import seeded_proxy

    torch.set_num_threads(1)
    r, space = proxy_recipe(), load_space("resnet50-per-stage")
    data = load_data(r)
    x, y = next(iter(data_batches(data.train, r.batch_size, shuffle=True, seed=r.seed, drop_last=True, num_workers=0,
                              pin=False)))
    default = designs("resnet50-per-stage", 25, 0)
    pool = {a.id: a for a in [*default, *held_out(default, 28, 1)]}

    # target per set: design id -> (supernet accuracy or None, runs)
    targets = stored_sets(Path(args.doc))
    for spec in args.rank_fidelity:
        path, _, label = spec.rpartition(":")
        by = {}
        for row in read_jsonl(Path(path)):
            if row["label"] == label and row["accuracy"] is not None:
                by.setdefault(row["arch_id"], {})[row["seed"]] = row["accuracy"]
                if row["arch_id"] not in pool:
                    pool[row["arch_id"]] = Arch.from_json(row["arch"], where=f"{path}, design {row['arch_id']}")
        n = max(map(len, by.values()), default=0)
        targets[f"{label} ({Path(path).name})"] = {k: (None, [v[s] for s in sorted(v)]) for k, v in by.items()
                                                  if len(v) == n}
    missing = sorted({k for t in targets.values() for k in t if pool.get(k) is None})
    if missing:
        sys.exit(f"{args.doc}: designs not in the benchmark's sets: {', '.join(missing)}")

    check = InitCheck(space.plain(), r, data.num_classes, x, INIT_SEEDS, "cpu")
    score = {}
    for k in sorted({k for t in targets.values() for k in t}):
        a = pool[k]
        sf, gn = [], []
        for s in INIT_SEEDS:
            model, _ = seeded_proxy(a, r, data.num_classes, s)
            sf.append(synflow(model, tuple(x.shape[1:])))
            gn.append(grad_norm(model, x, y))
        score[k] = dict(synflow=statistics.median(sf), grad_norm=statistics.median(gn), signal=check(a))

    print("| designs | n | ceiling (seed vs seed) | one-shot score | supernet accuracy alone | init signal alone | "
          "grad_norm | synflow |")
    print("|---|---|---|---|---|---|---|---|")
    for name, t in targets.items():
        for low in (None, args.min_accuracy):
            keep = [k for k in t if low is None or statistics.fmean(t[k][1]) >= low]
            mean = [statistics.fmean(t[k][1]) for k in keep]
            cells = []
            if all(t[k][0] is not None for k in keep):
                cells += [kendall([t[k][0] * min(1.0, score[k]["signal"]) for k in keep], mean),
                          kendall([t[k][0] for k in keep], mean)]
            else:
                cells += [None, None]
            cells += [kendall([score[k][c] for k in keep], mean) for c in ("signal", "grad_norm", "synflow")]
            label = name if low is None else f"{name}, designs at >= {low}"
            print(f"| {label} | {len(keep)} | {ceiling([t[k][1] for k in keep]):.2f} | "
                  + " | ".join("-" if c is None else f"{c:.2f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
