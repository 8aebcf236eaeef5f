"""Validate the latency predictor against the real thing (issue 11, item 3), and time the profile and
the predictor.

For each thread count: profile (``se_nas.nn.profile.profile``) what N random designs of the default space
and the presets of its form need, then measure the end-to-end eval forward pass (batch 1, 224x224,
``torch.inference_mode``) of every one of those designs, interleaved (each round times every model
once, in turn), and compare each design's median with its prediction: median and worst absolute
percentage error, Kendall's tau. Beside it, the same error of the predicted ratio to the plain model
(measured in the same rounds), which a load change between profile and validation cannot move.
The profile of the full space is extrapolated from the subset's measured time per carrier model
(the profile's cost goes with the most choices any stage has; stated as such). Predictor speed:
predictions of random designs per second, first use (each stage choice's units resolved once) and
cached. ``uptime``'s load is recorded before and after every figure.

    python scripts/bench_latency.py                            # 30 designs, 1 and 2 threads
    python scripts/bench_latency.py --threads 1 --designs 30 --rounds 15 --json out.json
    python scripts/bench_latency.py --threads 1 --designs 24 --rounds 8 --clock process   # issue 22's figures
    python scripts/bench_latency.py --threads 1 --designs 24 --rounds 8 --runtime onnxruntime   # the same on ORT
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from scipy.stats import kendalltau

from se_nas.design import latency as L
from se_nas.nn import profile as P
from se_nas.design.arch import PRESETS, Arch
from se_nas.nn.build import build_model
from se_nas.design.space import load_space

import benchlib


def random_designs(space, n: int, seed: int) -> list[Arch]:
    rng = random.Random(seed)
    return [Arch(space.backbone, tuple(rng.choice(space.stage_options(i)) for i in range(len(space.stages))),
                 stride_on=space.stride_on, se_bias=space.se_bias) for _ in range(n)]


def summary(times: list[float]) -> dict[str, float]:
    """A design's median and 10th percentile, as the table states its entries."""
    return {"median": statistics.median(times), "p10": statistics.quantiles(times, n=10, method="inclusive")[0]}


def validate(space, designs: list[Arch], threads: int, rounds: int, table_dir: Path, device: str,
             clock: str = "wall", runtime: str = "torch") -> dict:
    torch.set_num_threads(threads)
    path = table_dir / f"{space.name}-{device.replace(':', '')}-{threads}t-{clock}-{runtime}.json"
    before = benchlib.loads()
    t0 = time.perf_counter()
    table = P.profile(space, path, device=device, threads=threads, archs=designs, rounds=rounds, clock=clock,
                      runtime_=runtime)
    profile_s = time.perf_counter() - t0
    n_sub = len(table.entries) - 2
    n_full = len(L.space_entries(space)[1])
    # profile time goes with the number of carrier models: the most choices any stage has to measure
    carriers_sub = max(len(o) - 1 for o in L.space_options(space, archs=designs)[1])
    carriers_full = max(len(o) - 1 for o in L.space_options(space)[1])
    p = L.predictor(table)
    kind, index = L.parse_device(device)
    dev = torch.device(kind, index) if kind == "cuda" else torch.device("cpu")
    x = torch.randn(1, 3, 224, 224, device=dev)
    after_profile = benchlib.loads()
    rt = P.runtime(runtime, kind, threads, clock)
    with torch.inference_mode():
        calls = {a.id: rt.call(build_model(a).to(dev).eval(), x) for a in designs}
        times = P.measure_interleaved(calls, P.TIMERS[kind](dev, clock), rounds, 2)
    del calls
    plain = space.plain().id
    out = {"threads": threads, "device": device, "clock": clock, "runtime": runtime, "device_name": table.header["device_name"],
           "designs": len(designs), "rounds": rounds, "table": str(path), "profile_entries": n_sub,
           "profile_s": profile_s,
           "full_space_entries": n_full, "carriers": carriers_sub, "full_space_carriers": carriers_full,
           "full_profile_s_extrapolated": profile_s * carriers_full / carriers_sub,
           "load_before": before, "load_after_profile": after_profile, "load_after": benchlib.loads()}
    # the noise floor: how far the same measurement's odd and even rounds disagree, per design
    halves = [100 * abs(statistics.median(v[::2]) / statistics.median(v[1::2]) - 1) for v in times.values()]
    out["halves_abs_diff_pct"] = {"median": statistics.median(halves), "max": max(halves)}
    # the ranking ceiling (issue 22): how well the timings' odd rounds rank the designs as their even
    # rounds do; a predictor cannot be expected to rank better. FLOPs' tau is the floor.
    from se_nas.design.cost import count_cost

    ids = [a.id for a in designs]
    out["split_half_tau"] = kendalltau([statistics.median(times[k][::2]) for k in ids],
                                       [statistics.median(times[k][1::2]) for k in ids])[0]
    out["flops_tau"] = kendalltau([count_cost(a).flops for a in designs],
                                  [statistics.median(times[k]) for k in ids])[0]
    out["table_check"] = {k: v for k, v in (table.check or {}).items() if k != "designs"}
    # the machine's own drift: the plain design, whose prediction is its profiled time by construction
    out["plain_drift_pct"] = 100 * (statistics.median(times[plain]) / table.ms(L.MODEL) - 1)
    for stat in ("median", "p10"):  # the p10: what a shared machine's interference disturbs least
        p = L.LatencyPredictor(table, stat)
        measured = {k: summary(v)[stat] for k, v in times.items()}
        rows, errs, ratio_errs = [], [], []
        for a in designs:
            pred, meas = p.ms(a), measured[a.id]
            err = 100 * (pred - meas) / meas
            r_err = 100 * ((pred / p.ms(space.plain())) / (meas / measured[plain]) - 1)
            errs.append(abs(err))
            ratio_errs.append(abs(r_err))
            rows.append({"id": a.id, "label": a.label, "predicted_ms": pred, "measured_ms": meas, "error_pct": err,
                         "ratio_error_pct": r_err})
        out[stat] = {
            "plain_ms": measured[plain], "median_abs_error_pct": statistics.median(errs),
            "max_abs_error_pct": max(errs), "within_10pct": sum(e <= 10 for e in errs),
            "median_abs_ratio_error_pct": statistics.median(ratio_errs), "max_abs_ratio_error_pct": max(ratio_errs),
            "kendall_tau": kendalltau([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows])[0],
            "rows": rows}
    return out


def predictor_speed(space, table_path: Path, n: int) -> dict:
    """Designs per second; the table holds every entry of the space (values copied from a measured
    table: the speed of a lookup does not depend on the value)."""
    form, entries = L.space_entries(space)
    measured = L.load_table(table_path, on_mismatch=lambda m: None)
    table = L.LatencyTable(measured.header, {k: {"median": 1.0, "p10": 1.0, "p90": 1.0, "n": 1} for k in entries},
                           "speed")
    table.entries[L.REST] = measured.entries[L.REST]
    p = L.LatencyPredictor(table)
    designs = random_designs(space, n, seed=1)
    t0 = time.perf_counter()
    for a in designs:
        p.ms(a)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for a in designs:
        p.ms(a)
    cached = time.perf_counter() - t0
    from se_nas.design.cost import count_cost

    t0 = time.perf_counter()
    for a in designs:
        count_cost(a)
    flops = time.perf_counter() - t0
    return {"designs": n, "first_use_per_s": n / first, "cached_per_s": n / cached,
            "count_cost_per_s": n / flops, "load": benchlib.loads()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--designs", type=int, default=30, help="random designs of the space (plus the presets)")
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (CPU)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--clock", default="wall", choices=("wall", "process"),
                    help="process: CPU time (one thread), which other jobs on this shared machine do not inflate")
    ap.add_argument("--runtime", default="torch", choices=tuple(P.RUNTIMES),
                    help="what runs the models (onnxruntime: wall clock only)")
    ap.add_argument("--space", default="resnet50-per-stage")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tables", default="bench-latency", help="folder for the profile tables (resumed)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    space = load_space(args.space)
    presets = [a for a in PRESETS.values()
               if (a.backbone, a.stride_on, a.se_bias) == (space.backbone, space.stride_on, space.se_bias)]
    designs = list(dict.fromkeys(random_designs(space, args.designs, args.seed) + presets))
    table_dir = Path(args.tables)
    table_dir.mkdir(parents=True, exist_ok=True)
    out = {"torch": torch.__version__, "python": sys.version.split()[0], "space": space.name, "results": []}
    threads = [int(t) for t in args.threads.split(",")] if args.device == "cpu" else [None]
    for t in threads:
        r = validate(space, designs, t, args.rounds, table_dir, args.device, args.clock, args.runtime)
        out["results"].append(r)
        for stat in ("median", "p10"):
            q = r[stat]
            print(f"{r['runtime']} on {r['device']} ({r['device_name']}) {t or ''} thread(s), {r['clock']} clock, "
                  f"{r['designs']} designs, "
                  f"{r['rounds']} rounds, "
                  f"{stat}: plain {q['plain_ms']:.1f} ms; |error| median {q['median_abs_error_pct']:.1f}% max "
                  f"{q['max_abs_error_pct']:.1f}% ({q['within_10pct']}/{r['designs']} within 10%), Kendall tau "
                  f"{q['kendall_tau']:.3f}; ratio to plain |error| median {q['median_abs_ratio_error_pct']:.1f}% max "
                  f"{q['max_abs_ratio_error_pct']:.1f}%", flush=True)
        print(f"  Kendall tau ceiling (timings' split halves) {r['split_half_tau']:.3f}, floor (FLOPs) "
              f"{r['flops_tau']:.3f}; the profile's own check: {r['table_check']}")
        print(f"  drift: the plain design (predicted as profiled, by construction) measured "
              f"{r['plain_drift_pct']:+.1f}% from its profiled time")
        print(f"  noise floor: odd vs even rounds of one design differ by {r['halves_abs_diff_pct']['median']:.1f}% "
              f"(median), {r['halves_abs_diff_pct']['max']:.1f}% (max)")
        print(f"  profile {r['profile_entries']} entries in {r['profile_s']:.0f} s (full space "
              f"{r['full_space_entries']} entries: ~{r['full_profile_s_extrapolated'] / 60:.0f} min extrapolated); "
              f"load {r['load_before']} / {r['load_after_profile']} / {r['load_after']}", flush=True)
    s = predictor_speed(space, Path(out["results"][0]["table"]), 20000)
    out["predictor_speed"] = s
    print(f"predictor: {s['cached_per_s']:,.0f} designs/s cached, {s['first_use_per_s']:,.0f}/s on first use; "
          f"count_cost {s['count_cost_per_s']:,.0f}/s (load {s['load']})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
