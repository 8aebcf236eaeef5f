"""Why does r=16 SE lose to the plain backbone on the digits proxy? (issue 21, the README's causal claim)

The README once said: because at width 0.125 its excitation has 1-8 hidden units. The issue measured
the loss at widths 0.125, 0.25 and 0.5 (hidden units x4) and it did not shrink. This script trains
script-level variants of the paper's r=16 design (``5bb2f73e7e``: SE at the standard position of
every unit, average squeeze, sigmoid gate) against the plain backbone (``ec21f0d190``), with paired
seeds, to find what does move the loss. Nothing in the package changes: a variant either overrides
recipe keys, or replaces the gate of every SE module of the freshly built model (built exactly as a
trial builds it, ``se_nas.search.trial.seeded_proxy``, so the initial weights are the trial's) and
turns the fused SE path off so the replaced gate is the one used.

- ``r16-unfused``: r=16 with the straightforward SE path (control: the gate replacements need it);
- ``r16-x2``: gate ``2 sigmoid(z)``: the scale starts at exactly 1 (identity) instead of 0.5;
- ``r16-bias3``: gate ``sigmoid(z + 3)``: as a gate bias initialised at 3 (scale 0.95 at start), fixed;
- ``r16-half``: gate fixed at 0.5, the excitation unused: the halving alone, without any attention;
- ``plain-15ep``, ``r16-15ep``: both at 15 epochs instead of 5 (width 0.125);
- ``plain-warm2``, ``r16-warm2``: both with 2 warm-up epochs instead of 0.5.

At the standard position the SE scales the residual branch's last BatchNorm output just before the
addition, and that BatchNorm starts at zero (``zero_init_last``): at initialisation the gate changes
no activation, only the gradients that reach the branch (halved by sigmoid(0) = 0.5).

    nice -n 5 python scripts/r16_cause.py train --variants r16-x2 r16-half --seeds 0 1 2 --out r16.jsonl
    python scripts/r16_cause.py analyze --out r16.jsonl --baseline rank_fidelity.jsonl:digits

``--baseline FILE:LABEL`` takes the plain and r=16 runs of ``scripts/rank_fidelity.py``'s results
under that label (the same ``train_run`` training, seeds and recipe) instead of training them again.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import benchlib
from benchlib import read_jsonl as read, recipe_of

PLAIN, R16 = "ec21f0d190", "5bb2f73e7e"


def _gates():
    import torch

    return {
        "x2": lambda z: 2 * torch.sigmoid(z),
        "bias3": lambda z: torch.sigmoid(z + 3.0),
        "half": lambda z: torch.full_like(z, 0.5),
        "unfused": torch.sigmoid,
    }


# variant -> (design, gate replacement or None, recipe overrides, the plain variant it is paired with)
VARIANTS = {
    "plain": ("plain", None, [], "plain"),
    "r16": ("r16", None, [], "plain"),
    "r16-unfused": ("r16", "unfused", [], "plain"),
    "r16-x2": ("r16", "x2", [], "plain"),
    "r16-bias3": ("r16", "bias3", [], "plain"),
    "r16-half": ("r16", "half", [], "plain"),
    "plain-15ep": ("plain", None, ["epochs=15"], "plain-15ep"),
    "r16-15ep": ("r16", None, ["epochs=15"], "plain-15ep"),
    "plain-warm2": ("plain", None, ["warmup_epochs=2"], "plain-warm2"),
    "r16-warm2": ("r16", None, ["warmup_epochs=2"], "plain-warm2"),
}


def train_variant(name: str, seed: int, data_cache: dict):
    """One run of ``name`` under ``seed``: ``train_run``'s training, with the variant's gate."""
    from se_nas.design.space import load_space
    from se_nas.nn.data import load_data
    from se_nas.nn.se import SqueezeExcite
    from se_nas.nn.train import TrainingFailed, train
    from se_nas.search.trial import pinned, seeded_proxy

    design, gate, sets, _ = VARIANTS[name]
    space = load_space("resnet50-per-stage")
    arch = space.plain() if design == "plain" else space.baseline()
    recipe = recipe_of("digits", sets)
    key = tuple(sets)
    if key not in data_cache:
        data_cache[key] = load_data(recipe)
    data = data_cache[key]
    model, r = seeded_proxy(arch, pinned(recipe), data.num_classes, seed)
    if gate is not None:
        fn = _gates()[gate]
        for m in model.modules():
            if isinstance(m, SqueezeExcite):
                m.fused, m.gate = False, fn
    try:
        res = train(model, r, data, device="cpu")
    except TrainingFailed as e:
        return None, [], str(e.reason), arch, recipe
    return float(res.accuracy), list(res.history), None, arch, recipe


def cmd_train(args) -> None:
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    done = {(r["variant"], r["seed"]) for r in read(out)}
    cache: dict = {}
    for name in args.variants:
        for seed in args.seeds:
            if (name, seed) in done:
                continue
            (acc, hist, reason, arch, recipe), env = benchlib.timed(lambda: train_variant(name, seed, cache))
            row = dict(variant=name, arch_id=arch.id, seed=seed, accuracy=acc, history=hist, reason=reason,
                       recipe=recipe.to_dict(), **env, date=benchlib.utc_now())
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"[{name}] seed {seed}: {acc} cpu {env['cpu_s']:.1f}s wall {env['wall_s']:.1f}s "
                  f"load {env['load_start']:.1f}", flush=True)


def cmd_analyze(args) -> None:
    rows = [r for r in read(Path(args.out)) if r["accuracy"] is not None]
    acc = {(r["variant"], r["seed"]): r["accuracy"] for r in rows}
    cpu = {}
    for r in rows:
        cpu.setdefault(r["variant"], []).append(r["cpu_s"])
    for spec in args.baseline:
        path, _, label = spec.rpartition(":")
        for r in read(Path(path)):
            if r["label"] == label and r["accuracy"] is not None and r["arch_id"] in (PLAIN, R16):
                v = "plain" if r["arch_id"] == PLAIN else "r16"
                acc.setdefault((v, r["seed"]), r["accuracy"])
                cpu.setdefault(v, []).append(r["cpu_s"])
    print("| variant | seeds | accuracy per seed | mean | minus its plain (paired), mean | sd | CPU-s/run |")
    print("|---|---|---|---|---|---|---|")
    for name, (_, _, _, ref) in VARIANTS.items():
        seeds = sorted(s for (v, s) in acc if v == name)
        if not seeds:
            continue
        vals = [acc[(name, s)] for s in seeds]
        diffs = [acc[(name, s)] - acc[(ref, s)] for s in seeds if (ref, s) in acc] if name != ref else []
        d = f"{statistics.fmean(diffs):+.3f} | {statistics.stdev(diffs):.3f}" if len(diffs) > 1 else "- | -"
        c = statistics.median(cpu.get(name, [math.nan]))
        print(f"| {name} | {', '.join(map(str, seeds))} | {' / '.join(f'{v:.3f}' for v in vals)} | "
              f"{statistics.fmean(vals):.3f} | {d} | {c:.0f} |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train variants (resumes from --out)")
    t.add_argument("--variants", nargs="+", required=True, metavar="NAME")
    t.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    a = sub.add_parser("analyze", help="each variant against its plain backbone, paired by seed")
    a.add_argument("--baseline", nargs="*", default=[], metavar="FILE:LABEL",
                   help="plain and r=16 runs of scripts/rank_fidelity.py's results under LABEL")
    for s in (t, a):
        s.add_argument("--out", default="r16_cause.jsonl", help="results file, JSON lines")
    args = p.parse_args(argv)
    if args.cmd == "train":
        bad = [v for v in args.variants if v not in VARIANTS]
        if bad:
            sys.exit(f"--variants: unknown {', '.join(bad)}; known: {', '.join(VARIANTS)}")
    {"train": cmd_train, "analyze": cmd_analyze}[args.cmd](args)


if __name__ == "__main__":
    main()
