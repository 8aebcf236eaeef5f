"""Rank fidelity of a proxy recipe (issue 9, item 5): does the cheap training rank SE designs the way a
longer, larger training does?

Designs: the plain backbone, the paper's r=16, and a fixed-seed random sample drawn through the
space's own sampler (``SearchSpace.sample`` on an Optuna ``RandomSampler``), deduplicated by
``Arch.id``. Every (recipe, design, seed) is one ``se_nas.search.confirm.train_run`` (the exact trial
training) on one torch thread, appended as one JSON line to ``--out`` as it finishes; a rerun skips
what the file already has, so an interrupted run loses nothing. ``--shard i/n`` splits the jobs
between processes (run at most as many as the machine has idle cores).

    nice -n 5 python scripts/rank_fidelity.py train --label proxy --seeds 0 1 --shard 0/2 &
    nice -n 5 python scripts/rank_fidelity.py train --label proxy --seeds 0 1 --shard 1/2
    nice -n 5 python scripts/rank_fidelity.py train --label long --seeds 0 \\
        --set epochs=15 width=0.25 image_size=32 --shard 0/2        # and 1/2
    python scripts/rank_fidelity.py analyze --reference long        # the tables of docs/proxy.md

Labels are free names; ``--set`` overrides keys of ``--recipe`` (default ``digits``), always on the
CPU with one thread. ``analyze`` compares every label with the reference: Kendall tau and Spearman
rho between the per-design means (over the designs both have), the label's own seed-to-seed tau
(seed A against seed B), its pooled seed standard deviation, the spread of its design means, and
its CPU-seconds per run. Then the transfer table (issue 21): each label's seed-vs-seed tau (every pair
of its seeds: the ceiling of a one-seed ranking), the tau between one seed of the label and one seed of
the reference (every pair), the tau between seed means, and r=16 minus plain paired by seed.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import benchlib
from benchlib import designs, read_jsonl as read, recipe_of

DEFAULT_OUT = "rank_fidelity.jsonl"


def cmd_train(args) -> None:
    import torch

    from se_nas.search.confirm import train_run
    from se_nas.nn.data import load_data

    torch.set_num_threads(1)
    recipe = recipe_of(args.recipe, args.set)
    out = Path(args.out)
    done = {(r["label"], r["arch_id"], r["seed"]) for r in read(out)}
    shard, _, n_shards = args.shard.partition("/")
    shard, n_shards = int(shard), int(n_shards or 1)
    jobs = [(a, s) for s in args.seeds for a in designs(args.space, args.designs, args.sample_seed)]
    jobs = [j for i, j in enumerate(jobs) if i % n_shards == shard and (args.label, j[0].id, j[1]) not in done]
    data = load_data(recipe)
    for i, (arch, seed) in enumerate(jobs, 1):
        run, envelope = benchlib.timed(lambda: train_run(arch, recipe, seed, data, device="cpu"))
        row = dict(label=args.label, arch_id=arch.id, arch=arch.to_json(), seed=seed, accuracy=run.accuracy,
                   history=list(run.history), **envelope, recipe=recipe.to_dict(), date=benchlib.utc_now(),
                   reason=run.reason)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[{args.label} {i}/{len(jobs)}] {arch.id} seed {seed}: {run.accuracy} "
              f"cpu {row['cpu_s']:.1f}s wall {row['wall_s']:.1f}s load {row['load_start']:.1f}", flush=True)


def summarize(rows: list[dict]) -> dict:
    """Per design: the accuracy of each seed. Failed runs are left out (and counted)."""
    by = {}
    for r in rows:
        if r["accuracy"] is not None:
            by.setdefault(r["arch_id"], {})[r["seed"]] = r["accuracy"]
    return by


def pooled_std(by: dict) -> float:
    ss = dof = 0.0
    for seeds in by.values():
        v = list(seeds.values())
        if len(v) > 1:
            m = sum(v) / len(v)
            ss += sum((x - m) ** 2 for x in v)
            dof += len(v) - 1
    return math.sqrt(ss / dof) if dof else float("nan")


def mean(v):
    v = list(v)
    return sum(v) / len(v)


def cmd_analyze(args) -> None:
    rows = read(Path(args.out))
    labels = sorted({r["label"] for r in rows})
    if args.reference not in labels:
        sys.exit(f"--reference {args.reference!r}: no runs with that label in {args.out}; labels there: "
                 f"{', '.join(labels) or 'none'}")
    per = {lab: summarize([r for r in rows if r["label"] == lab]) for lab in labels}
    failed = {lab: sorted({r["arch_id"] for r in rows if r["label"] == lab and r["accuracy"] is None}) for lab in labels}
    ref = {k: mean(v.values()) for k, v in per[args.reference].items()}
    print(f"{len(rows)} runs in {args.out}; reference: {args.reference} ({len(ref)} designs trained)")
    for lab in labels:
        if failed[lab]:
            print(f"- {lab}: training failed (non-finite loss) for {len(failed[lab])} design(s), left out: "
                  + ", ".join(failed[lab]))
    # every design that trained, then only those that train well under both recipes: the ranking that
    # a search acts on is among the good designs, and a few broken ones inflate any correlation
    ok = {k for k in ref if ref[k] >= args.min_accuracy}
    table(per, labels, args.reference, rows, None, 0.0, "every design that trained")
    table(per, labels, args.reference, rows, ok, args.min_accuracy,
          f"designs at >= {args.min_accuracy} (mean accuracy) under the reference and under the recipe of the row")
    transfer(per, labels, args.reference, rows, None, 0.0, "every design that trained")
    transfer(per, labels, args.reference, rows, ok, args.min_accuracy,
             f"designs at >= {args.min_accuracy} (mean accuracy) under the reference and under the recipe of the row")
    if args.designs_table:
        print("\n| design | " + " | ".join(labels) + " |\n|---|" + "---|" * len(labels))
        for k in sorted(ref, key=ref.get, reverse=True):
            cells = [" / ".join(f"{per[lab][k][s]:.3f}" for s in sorted(per[lab][k])) if k in per[lab] else "-"
                     for lab in labels]
            print(f"| `{k}` | " + " | ".join(cells) + " |")


def table(per, labels, reference, rows, keep, low, title) -> None:
    """One Markdown table: per recipe, noise, spread of the design means, one-way ANOVA over designs
    (do the designs differ beyond seed noise at all?) and the rank correlations with the reference."""
    from scipy.stats import f_oneway, kendalltau, spearmanr

    ref = {k: mean(v.values()) for k, v in per[reference].items() if keep is None or k in keep}
    print(f"\n{title}:\n")
    print("| recipe | designs | seeds | CPU-s/run (median) | pooled seed std | std of design means | "
          "ANOVA over designs F (p) | seed A vs B tau | tau vs reference | rho vs reference |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for lab in labels:
        lr = [r for r in rows if r["label"] == lab]
        by = {k: v for k, v in per[lab].items() if (keep is None or k in keep) and mean(v.values()) >= low}
        cpu = sorted(r["cpu_s"] for r in lr)[len(lr) // 2]
        means = {k: mean(v.values()) for k, v in by.items()}
        seeds = sorted({s for v in by.values() for s in v})
        ab = [(v[seeds[0]], v[seeds[1]]) for v in by.values() if len(seeds) > 1 and seeds[0] in v and seeds[1] in v]
        tau_ab = f"{kendalltau(*zip(*ab))[0]:.2f}" if len(ab) > 2 else "-"
        groups = [list(v.values()) for v in by.values() if len(v) > 1]
        anova = f_oneway(*groups) if len(groups) > 2 else None
        f_p = f"{anova[0]:.2f} ({anova[1]:.2g})" if anova is not None else "-"
        common = sorted(set(means) & set(ref))
        if lab != reference and len(common) > 2:
            x, y = [means[k] for k in common], [ref[k] for k in common]
            tau = kendalltau(x, y)
            vs = f"{tau[0]:.2f} (n={len(common)}, p={tau[1]:.2g}) | {spearmanr(x, y)[0]:.2f}"
        else:
            vs = "- | -"
        m = list(means.values())
        sd_m = math.sqrt(sum((x - mean(m)) ** 2 for x in m) / (len(m) - 1)) if len(m) > 1 else float("nan")
        print(f"| {lab} | {len(by)} | {len(seeds)} | {cpu:.0f} | {pooled_std(by):.4f} | {sd_m:.4f} | {f_p} | "
              f"{tau_ab} | {vs} |")


PLAIN, R16 = "ec21f0d190", "5bb2f73e7e"


def pair_taus(a: dict, b: dict, keep, same: bool) -> list[float]:
    """Kendall tau between one seed's ranking under ``a`` and one seed's under ``b``, over the designs
    both have with those seeds, for every pair of seeds (``same``: a and b are one recipe, so each
    unordered pair of distinct seeds once)."""
    from scipy.stats import kendalltau

    seeds_a = sorted({s for v in a.values() for s in v})
    seeds_b = sorted({s for v in b.values() for s in v})
    pairs = (itertools.combinations(seeds_a, 2) if same else itertools.product(seeds_a, seeds_b))
    out = []
    for sa, sb in pairs:
        common = [k for k in a if k in b and sa in a[k] and sb in b[k] and (keep is None or k in keep)]
        if len(common) > 2:
            out.append(kendalltau([a[k][sa] for k in common], [b[k][sb] for k in common])[0])
    return out


def paired(by: dict, x: str, y: str) -> str:
    """``x`` minus ``y``, paired by seed: mean (sd over seeds, n)."""
    d = [by[x][s] - by[y][s] for s in sorted(set(by.get(x, {})) & set(by.get(y, {})))]
    if len(d) < 2:
        return "-"
    m = mean(d)
    return f"{m:+.3f} (sd {math.sqrt(sum((v - m) ** 2 for v in d) / (len(d) - 1)):.3f}, n={len(d)})"


def transfer(per, labels, reference, rows, keep, low, title) -> None:
    """The transfer table of docs/proxy.md (issue 21): each recipe's own seed-to-seed tau (one seed
    against another: the ceiling of any ranking at one seed), the tau between one seed of the recipe
    and one seed of the reference (every pair of seeds; at the ceiling when the two fidelities rank
    alike), the tau between the recipes' seed means, and r=16 minus plain, paired by seed."""
    from scipy.stats import kendalltau

    ref = per[reference]
    print(f"\ntransfer to {reference}, {title}:\n")
    print("| recipe | designs | seeds | CPU-s/run (median) | seed vs seed tau (ceiling), mean [range] | "
          f"one seed vs one seed of {reference}, mean [range] | tau of seed means vs {reference} | "
          "r=16 minus plain | ebefee2350 minus plain |")
    print("|---|---|---|---|---|---|---|---|---|")
    for lab in labels:
        by = {k: v for k, v in per[lab].items() if (keep is None or k in keep) and mean(v.values()) >= low}
        lr = [r for r in rows if r["label"] == lab]
        cpu = sorted(r["cpu_s"] for r in lr)[len(lr) // 2]
        seeds = sorted({s for v in by.values() for s in v})

        def cell(t):
            return f"{mean(t):.2f} [{min(t):.2f}, {max(t):.2f}]" if t else "-"

        within = pair_taus(by, by, None, True)
        cross = pair_taus(by, ref, None, False) if lab != reference else []
        common = [k for k in by if k in ref]
        tm = (f"{kendalltau([mean(by[k].values()) for k in common], [mean(ref[k].values()) for k in common])[0]:.2f}"
              if lab != reference and len(common) > 2 else "-")
        print(f"| {lab} | {len(by)} | {len(seeds)} | {cpu:.0f} | {cell(within)} | {cell(cross)} | {tm} | "
              f"{paired(per[lab], R16, PLAIN)} | {paired(per[lab], 'ebefee2350', PLAIN)} |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the designs under one recipe (resumes from --out)")
    t.add_argument("--label", required=True, help="name of this recipe variant in the results")
    t.add_argument("--recipe", default="digits")
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override recipe keys")
    t.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    t.add_argument("--space", default="resnet50-per-stage")
    t.add_argument("--designs", type=int, default=22, help="plain + r=16 + random designs, in all")
    t.add_argument("--sample-seed", type=int, default=0)
    t.add_argument("--shard", default="0/1", help="i/n: this process runs every n-th job from the i-th")
    a = sub.add_parser("analyze", help="correlations and noise, as Markdown tables")
    a.add_argument("--reference", default="long")
    a.add_argument("--designs-table", action="store_true", help="also every design's accuracies")
    a.add_argument("--min-accuracy", type=float, default=0.5,
                   help="the second table keeps designs at or above this mean under both recipes (default 0.5)")
    for s in (t, a):
        s.add_argument("--out", default=DEFAULT_OUT, help=f"results file, JSON lines (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    if args.cmd == "train" and not (len(args.shard.partition("/")[2]) and args.shard.replace("/", "").isdigit()
                                    and int(args.shard.split("/")[0]) < int(args.shard.split("/")[1])):
        sys.exit(f"--shard must be i/n with 0 <= i < n, got --shard {args.shard}")
    {"train": cmd_train, "analyze": cmd_analyze}[args.cmd](args)


if __name__ == "__main__":
    main()
