"""Torch threads on a shared CPU machine (issue 9, item 6): one digits training of SE-ResNet-50's proxy
(the default space's r=16 design under ``trials/digits.yaml``, seed 0, exactly a search trial's
training) with 1 or 2 torch threads, OpenMP's default wait policy or ``OMP_WAIT_POLICY=PASSIVE``, on
the machine as it is ("idle": nothing of ours besides the run) and under load (one CPU hog
``python -c "while True: pass"`` started beside it), and with ``torch.use_deterministic_algorithms``.

Every measurement is a fresh process (OpenMP reads its environment once, at start) that reports wall
time, CPU time (``time.process_time``: all threads of the process), the load average, the validation
accuracy after every epoch and a SHA-256 of the trained weights, so "same result" means bitwise.
Each result is appended to ``--out`` (JSON lines) as it finishes; a rerun skips what is there.

    nice -n 5 python scripts/bench_threads.py run --epochs 2 --out threads.jsonl   # docs/proxy.md
    python scripts/bench_threads.py table --out threads.jsonl

The hog and the measured process together are two processes: run nothing else of your own beside.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import benchlib
from benchlib import read_jsonl as read

# (threads, OMP_WAIT_POLICY or "", load, deterministic), the most telling first. The wait policy only
# matters with more than one thread (one thread never waits for another): 1 thread runs the default.
CASES = [(1, "", "hog", False), (2, "", "hog", False), (1, "", "idle", False), (2, "", "idle", False),
         (2, "PASSIVE", "hog", False), (2, "PASSIVE", "idle", False), (1, "", "idle", True),
         (2, "PASSIVE", "idle", True)]  # passive: a spinning default would time out, and measure nothing
HOG = [sys.executable, "-c", "while True: pass"]


def key(threads, wait, load, deterministic) -> str:
    return f"threads={threads} wait={wait or 'default'} load={load} deterministic={deterministic}"


def cmd_one(args) -> None:
    """One training in this process; prints one JSON line."""
    import torch

    from se_nas.nn.data import load_data
    from se_nas.design.recipe import load_recipe
    from se_nas.design.space import load_space
    from se_nas.nn.train import train
    from se_nas.search.trial import seeded_proxy

    torch.set_num_threads(args.threads)
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    from dataclasses import replace

    recipe = replace(load_recipe(args.recipe), device="cpu", threads=args.threads, rungs=())
    if args.epochs:
        recipe = replace(recipe, epochs=args.epochs, warmup_epochs=min(recipe.warmup_epochs, args.epochs / 2))
    data = load_data(recipe)
    arch = load_space("resnet50-per-stage").baseline()
    envelope = benchlib.Envelope()
    model, r = seeded_proxy(arch, recipe, data.num_classes, args.seed)
    result = train(model, r, data, device="cpu")
    envelope = envelope.now()
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
    print(json.dumps(dict(threads=torch.get_num_threads(), epochs=recipe.epochs, wait=os.environ.get("OMP_WAIT_POLICY", ""),
                          deterministic=args.deterministic, seed=args.seed, arch_id=arch.id,
                          accuracy=float(result.accuracy), history=[float(x) for x in result.history],
                          weights_sha256=h.hexdigest()[:16], **envelope, torch=torch.__version__)))


def cmd_run(args) -> None:
    out = Path(args.out)
    done = {r["case"] for r in read(out)}
    script = Path(__file__).resolve()
    todo = [c for c in CASES if key(*c) not in done][:args.limit]
    for threads, wait, load, det in todo:
        case = key(threads, wait, load, det)
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if wait:
            env["OMP_WAIT_POLICY"] = wait
        hog = subprocess.Popen(HOG) if load == "hog" else None
        try:
            if hog is not None:
                time.sleep(2)  # let the hog take its core
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu0, load0 = usage.ru_utime + usage.ru_stime, benchlib.load()
            cmd = [sys.executable, str(script), "one", "--threads", str(threads), "--recipe", args.recipe,
                   "--seed", str(args.seed), "--epochs", str(args.epochs)] + (["--deterministic"] if det else [])
            try:
                p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
                row = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else \
                    {"error": p.stderr.strip().splitlines()[-1:]}
            except subprocess.TimeoutExpired:  # killed and reaped: its CPU time is in RUSAGE_CHILDREN
                cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
                row = {"error": f"timed out after {args.timeout} s wall", "wall_s": float(args.timeout),
                       "cpu_s": cpu.ru_utime + cpu.ru_stime - cpu0, "load_start": load0}
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        row.update(case=case, load=load, date=benchlib.utc_now())
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(case, {k: row.get(k) for k in ("accuracy", "wall_s", "cpu_s", "load_start", "error")}, flush=True)


def cmd_table(args) -> None:
    rows = read(Path(args.out))
    print("| threads | OMP_WAIT_POLICY | load | deterministic | wall s | CPU s | load avg (start) | "
          "accuracy | accuracy per epoch | weights |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t, w, load, det = (r["case"].split()[i].split("=")[1] for i in range(4))
        if "error" in r:
            cpu = f"{r['cpu_s']:.0f}" if r.get("cpu_s") is not None else ""
            ld = f"{r['load_start']:.1f}" if r.get("load_start") is not None else ""
            print(f"| {t} | {w} | {load} | {det} | {r['error']} | {cpu} | {ld} | | | |")
            continue
        print(f"| {t} | {w} | {load} | {det} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['load_start']:.1f} | "
              f"{r['accuracy']:.4f} | {', '.join(f'{x:.4f}' for x in r['history'])} | `{r['weights_sha256']}` |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    one = sub.add_parser("one", help="one training in this process (what run starts)")
    one.add_argument("--threads", type=int, required=True)
    one.add_argument("--deterministic", action="store_true")
    run = sub.add_parser("run", help="every case, each in a fresh process (resumes from --out)")
    run.add_argument("--timeout", type=int, default=600, help="wall seconds per case (default 600)")
    run.add_argument("--limit", type=int, default=None, help="run at most this many of the cases not done yet")
    table = sub.add_parser("table", help="the results as a Markdown table")
    for s in (one, run):
        s.add_argument("--recipe", default="digits")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--epochs", type=int, default=0, help="train this many epochs (default: the recipe's)")
    for s in (run, table):
        s.add_argument("--out", default="threads.jsonl", help="results file, JSON lines")
    args = p.parse_args(argv)
    if getattr(args, "threads", 1) < 1:
        sys.exit(f"--threads must be a positive integer, got --threads {args.threads}")
    {"one": cmd_one, "run": cmd_run, "table": cmd_table}[args.cmd](args)


if __name__ == "__main__":
    main()
