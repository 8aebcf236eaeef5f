"""The one-shot ranking loop's own cost per evaluated design, before and after a change, side by side.

Runs ``se_nas.search.oneshot.rank`` of the working tree and the ``rank`` of git revision ``--before``
(default: the commit before the loop kept repeats off the study) on fresh SQLite studies of the same
space, sampler and seed, interleaved round by round, and prints CPU and wall seconds per evaluated
design with the machine's load. To time the loop alone, a path's "accuracy" is a hash of its design
id (microseconds, deterministic): what remains is asking the sampler, costing, answering repeats and
writing the study. A real path evaluation adds about 0.30 CPU-s on digits (docs/oneshot.md).

    python scripts/bench_rank_loop.py                       # 500 designs, NSGA-II, 2 rounds
    python scripts/bench_rank_loop.py --designs 2000 --rounds 1 --sampler tpe
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import se_nas.search
from se_nas.search import oneshot
from se_nas.design.budget import Budget
from se_nas.record.samplers import quiet_optuna
from se_nas.search.stages import SearchConfig, prepare_study
from se_nas.record.study import Status, records

import benchlib

ROOT = Path(__file__).resolve().parents[1]


def old_rank(rev: str):
    """``rank`` as it was at git revision ``rev`` (its module loaded inside ``se_nas.search``, so its
    relative imports resolve to today's modules)."""
    got = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:se_nas/search/oneshot.py"],
                         capture_output=True, text=True)
    if got.returncode != 0:  # a revision before the subpackages: its imports name modules that moved
        sys.exit(f"--before {rev}: no se_nas/search/oneshot.py at that revision (before 4e1c878, the "
                 f"subpackages, the loop's imports name the old flat modules); pick a later revision")
    path = Path(tempfile.mkdtemp()) / "oneshot_before.py"
    path.write_text(got.stdout)
    spec = importlib.util.spec_from_file_location("se_nas.search.oneshot_before", path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = se_nas.search.__name__
    spec.loader.exec_module(module)
    return module.rank


def pseudo_accuracy(arch) -> float:
    return 0.1 + 0.9 * int(hashlib.sha1(arch.id.encode()).hexdigest()[:8], 16) / 16**8


def run(rank, root: str, args) -> dict:
    cfg = SearchConfig(study="bench", space=args.space, recipe="digits", budget=Budget(), n_trials=args.designs,
                       sampler=args.sampler, root=root, progress=False)
    study = prepare_study(cfg)
    n, envelope = benchlib.timed(lambda: rank(study, cfg.space, cfg.budget, cfg.deploy, pseudo_accuracy, args.designs,
                                              seed=cfg.seed))
    recs = records(study)
    return {"evaluated": n, "cpu": envelope["cpu_s"], "wall": envelope["wall_s"], "stored": len(recs),
            "load": (envelope["load_start"], envelope["load_end"]),
            "designs": [r.arch.id for r in recs if r.status is Status.COMPLETE],
            "repeats": sum(r.status is Status.REPEAT for r in recs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="9b9d440", help="git revision of the loop to compare against (docs/oneshot.md "
                    "measured 9b9d440 against its successor, before the subpackages; a revision since 4e1c878 runs here)")
    ap.add_argument("--space", default="resnet50-per-stage")
    ap.add_argument("--sampler", default="nsga2")
    ap.add_argument("--designs", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    quiet_optuna()
    loops = {f"before ({args.before})": old_rank(args.before), "after (working tree)": oneshot.rank}
    print(f"{args.designs} designs of {args.space}, {args.sampler}, SQLite, {args.rounds} interleaved rounds; "
          f"load average at start {benchlib.load():.1f}")
    results: dict[str, list[dict]] = {name: [] for name in loops}
    for k in range(args.rounds):
        for name, rank in loops.items():
            with tempfile.TemporaryDirectory() as root:
                r = run(rank, root, args)
            results[name].append(r)
            print(f"round {k + 1} {name:24} {r['evaluated']} evaluated, {r['repeats']} repeats stored, "
                  f"{r['stored']} trials stored: {r['cpu'] / r['evaluated'] * 1000:.1f} CPU-ms and "
                  f"{r['wall'] / r['evaluated'] * 1000:.1f} wall-ms per evaluated design "
                  f"(load {r['load'][0]:.1f} -> {r['load'][1]:.1f})", flush=True)
    before, after = results.values()
    ratio = [b["cpu"] / b["evaluated"] / (a["cpu"] / a["evaluated"]) for b, a in zip(before, after)]
    same = all(b["designs"] == a["designs"] for b, a in zip(before, after))
    print(f"CPU per evaluated design, before / after: {', '.join(f'{x:.1f}x' for x in ratio)} (per round); "
          f"the same designs evaluated in the same order: {'yes' if same else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
