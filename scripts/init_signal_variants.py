"""How the initialisation check of the one-shot ranking was chosen (docs/oneshot.md, "The
initialisation check"): zero-cost signals of each design's freshly built proxy, alone and as a
discount of its supernet accuracy, ranked against the standalone means of ``scripts/bench_supernet.py``'s
design sets.

For every design and each initialisation seed (``--seeds``; not the standalone runs' 0-2, so the
models measured are not the ones trained), the model is built as a standalone training of that seed
starts it and one training batch (64 images, training mode) gives: the standard deviation of the
logits (``lstd``, what ``se_nas.nn.pathscore.InitCheck`` uses), of the pooled features the classifier
reads (``fstd``), and the norm of the loss gradient (``gnorm``), each divided by the plain backbone's
under the same seed and reduced over the seeds by mean, median or min. Printed: Kendall tau against
the standalone mean (3 seeds) for the signal alone and for supernet accuracy x min(1, signal), under
each stored supernet (``--supernets``: timings files of ``bench_supernet.py``), next to the supernet
accuracy alone; and the logit signal at 16, 32 and 64 images under one seed and three.

    python scripts/init_signal_variants.py --root /tmp/fewshot_bench          # default and held-out sets
    python scripts/init_signal_variants.py --root /tmp/fewshot_bench --sets 2  # the second held-out set too
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

from benchlib import designs as pick, held_out, proxy_recipe as recipe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/tmp/bench_supernet", help="bench_supernet.py's --root (its study and timings)")
    p.add_argument("--supernets", nargs="+", default=["sandwich-10-per-gate", "sandwich-10-per-gate-seed1"])
    p.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102])
    p.add_argument("--sets", type=int, default=1, help="held-out sets besides the default set (1 or 2)")
    args = p.parse_args()

    import optuna
    import torch
    import torch.nn.functional as F
    from scipy.stats import kendalltau

    from se_nas.search.confirm import recipe_key, stored_runs
    from se_nas.nn.data import load_data
    from se_nas.design.space import load_space
    from se_nas.record.storage import open_study
    from se_nas.nn.train import data_batches
    from se_nas.search.trial import seeded_proxy

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    r, space = recipe(), load_space("resnet50-per-stage")
    data = load_data(r)
    folder = Path(args.root) / "bench-supernet"
    runs = stored_runs(open_study("bench-supernet", root=args.root), recipe_key(r))
    default = pick("resnet50-per-stage", 25, 0)
    sets = {"default": default, **{f"held-out {k}": held_out(default, 28, k) for k in range(1, args.sets + 1)}}
    sets = {name: [a for a in ds if all((a.id, s) in runs and runs[(a.id, s)].accuracy is not None for s in (0, 1, 2))]
            for name, ds in sets.items()}
    means = {a.id: statistics.fmean(runs[(a.id, s)].accuracy for s in (0, 1, 2)) for ds in sets.values() for a in ds}
    x, y = next(iter(data_batches(data.train, r.batch_size, shuffle=True, seed=0, drop_last=True, num_workers=0, pin=False)))

    raw = {}  # (design id, seed) -> signals
    for a in [space.plain(), *(a for ds in sets.values() for a in ds)]:
        for seed in args.seeds:
            model, _ = seeded_proxy(a, r, data.num_classes, seed)
            model.train()
            feats = {}
            model.fc.register_forward_hook(lambda m, i, o: feats.__setitem__("f", i[0]))
            row = {}
            with torch.no_grad():
                for b in (16, 32):
                    row[f"lstd@{b}"] = model(x[:b]).std().item()
            logits = model(x)
            F.cross_entropy(logits, y).backward()
            row.update(lstd=logits.std().item(), fstd=feats["f"].std().item(),
                       gnorm=sum((q.grad ** 2).sum() for q in model.parameters() if q.grad is not None).sqrt().item())
            raw[(a.id, seed)] = row
    plain = space.plain().id

    def signal(i, key, agg, seeds=args.seeds):
        return agg([raw[(i, s)][key] / raw[(plain, s)][key] for s in seeds])

    def tau(ds, score):
        return kendalltau([score(a.id) for a in ds], [means[a.id] for a in ds])[0]

    sups = {n: json.loads((folder / f"timings-{n}.json").read_text())["supernet_acc"] for n in args.supernets}
    for name, ds in sets.items():
        ceiling = statistics.fmean(kendalltau([runs[(a.id, s1)].accuracy for a in ds],
                                              [runs[(a.id, s2)].accuracy for a in ds])[0]
                                   for s1, s2 in itertools.combinations((0, 1, 2), 2))
        print(f"\n{name} set: {len(ds)} designs, ceiling {ceiling:.2f}; supernet accuracy alone: " +
              ", ".join(f"{n} {tau(ds, sup.__getitem__):.2f}" for n, sup in sups.items()))
        print("| signal | over seeds | alone | " + " | ".join(f"x {n}" for n in sups) + " |\n" + "|---" * (3 + len(sups)) + "|")
        for key in ("lstd", "fstd", "gnorm"):
            for aggn, agg in (("mean", statistics.fmean), ("median", statistics.median), ("min", min)):
                q = {a.id: signal(a.id, key, agg) for a in ds}
                cells = [f"{tau(ds, lambda i: sup[i] * min(1.0, q[i])):.2f}" for sup in sups.values()]
                print(f"| {key} | {aggn} | {tau(ds, q.__getitem__):.2f} | " + " | ".join(cells) + " |")
        for b, seeds in itertools.product((16, 32, 64), (args.seeds[:1], args.seeds)):
            key = "lstd" if b == 64 else f"lstd@{b}"
            q = {a.id: signal(a.id, key, statistics.median, seeds) for a in ds}
            print(f"logit signal on {b} images, median of {len(seeds)} seed(s): alone {tau(ds, q.__getitem__):.2f}; "
                  + ", ".join(f"x {n} {tau(ds, lambda i: sup[i] * min(1.0, q[i])):.2f}" for n, sup in sups.items()))


if __name__ == "__main__":
    main()
