"""Parallel search, side by side: the same `se-nas search` with --workers 1 and --workers N in one run.

Each search runs as its own `python -m se_nas search ... --quiet` process on a fresh study folder,
one after the other (never at once: they would share the cores). For each it records the wall time,
the CPU seconds of the search and its workers, the load average sampled every 5 s while it ran, and
the summary's chosen design and finding. `--repeat` reruns the last worker count to check that the
same seed and worker count print the same finding, to the digit.

    python scripts/bench_workers.py --workers 1 2 --repeat --out bench_workers.json
    python scripts/bench_workers.py --workers 1 2 -- --space tiny --recipe tiny --n-trials 16   # a quick one

Arguments after `--` replace the search's (default: the headline `--budget-gflops 4`).
Figures and the machine: docs/search.md ("Parallel search").
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import benchlib

DEFAULT_SEARCH = ["--budget-gflops", "4"]


def _summary(out: str) -> dict:
    lines = out.splitlines()
    chosen = next((ln.strip() for ln in reversed(lines) if ln.lstrip().startswith("chosen ")), "")
    finding = next((ln.strip() for ln in lines if ln.startswith("finding:")), "")
    return {"chosen": chosen, "finding": finding,
            "summary": "\n".join(ln for ln in lines if not ln.startswith(("  se-nas ", "next:")))}


def run_search(workers: int, search_args: list[str], root: Path) -> dict:
    """One search in a child process: its summary, wall and CPU seconds, and the load while it ran."""
    cmd = [sys.executable, "-m", "se_nas", "search", *search_args, "--workers", str(workers),
           "--root", str(root), "--quiet"]
    samples, stop = [], threading.Event()

    def sample():
        while not stop.wait(5.0):
            samples.append(benchlib.load())

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = benchlib.load()
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    stop.set()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"search with --workers {workers} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    loads = samples or [load_before]
    return {"workers": workers, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "load_before": load_before,
            "load_mean": round(statistics.fmean(loads), 2), "load_max": round(max(loads), 2),
            **_summary(proc.stdout)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts, run in this order")
    ap.add_argument("--repeat", action="store_true", help="rerun the last worker count (same seed) to compare")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--keep", type=Path, default=None,
                    help="keep the studies in this folder (run0, run1, ...) instead of a temporary one")
    ap.add_argument("search", nargs="*", help="the search's arguments, after --")
    args = ap.parse_args(argv)
    search_args = args.search or DEFAULT_SEARCH
    counts = list(args.workers) + ([args.workers[-1]] if args.repeat else [])
    print(benchlib.machine_line(), flush=True)
    print(f"search: se-nas search {' '.join(search_args)}; load before: {benchlib.loads()}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        tmp = args.keep or tmp
        for i, w in enumerate(counts):
            r = run_search(w, search_args, Path(tmp) / f"run{i}")
            results.append(r)
            print(f"--workers {w}: {r['wall_s']:.0f} s wall ({r['wall_s'] / 60:.1f} min), {r['cpu_s']:.0f} CPU-s, "
                  f"load {r['load_mean']:.1f} mean / {r['load_max']:.1f} max\n  {r['chosen']}\n  {r['finding'][:160]}",
                  flush=True)
    base = results[0]
    print("\n| workers | wall | CPU-s | load mean (max) | speed-up vs --workers "
          f"{base['workers']} | chosen |\n|---|---|---|---|---|---|")
    for r in results:
        chosen = r["chosen"].split()[1] if r["chosen"] else "-"
        print(f"| {r['workers']} | {r['wall_s'] // 60:.0f} min {r['wall_s'] % 60:.0f} s | {r['cpu_s']:.0f} | "
              f"{r['load_mean']:.1f} ({r['load_max']:.1f}) | {base['wall_s'] / r['wall_s']:.2f}x | `{chosen}` |")
    if args.repeat:
        same = results[-1]["summary"] == results[-2]["summary"]
        print(f"\nrerun with --workers {counts[-1]}: the summary is {'the same, to the digit' if same else 'DIFFERENT'}")
    if args.out:
        args.out.write_text(json.dumps({"machine": benchlib.machine(), "search": search_args, "runs": results,
                                        "date": benchlib.utc_now()}, indent=2))
    return 0 if not args.repeat or results[-1]["summary"] == results[-2]["summary"] else 1


if __name__ == "__main__":
    sys.exit(main())
