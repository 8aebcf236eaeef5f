"""Trials per minute of the Ray backend with 1, 2 and 3 worker nodes of one CPU each (tiny recipe),
and the time from losing a node mid-trial to the start of its retry. One run, one machine: the nodes
are separate raylets of a ``ray.cluster_utils.Cluster`` (a CPU-less head runs the driver).

    python scripts/bench_cluster.py [--trials 6] [--root /tmp/bench_cluster]

Prints a Markdown table for docs/cluster.md, with the machine's cores and load average. On a machine
with fewer cores than nodes the nodes share the cores: that run measures overhead, not scaling.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import threading
import time

import benchlib


def search(cluster, root, name: str, n_trials: int, recipe):
    from se_nas.design.budget import Budget
    from se_nas.search.stages import SearchConfig, run_search

    return run_search(SearchConfig(study=name, space="tiny", recipe=recipe, budget=Budget(max_gflops=1.9),
                                   n_trials=n_trials, backend="ray", ray_address=cluster.address,
                                   early_stop="none", root=root, progress=False, calibration_seeds=0,
                                   confirm_top=0))


def rate(study) -> tuple[float, float]:
    """(trials per minute, seconds) from the first trial's start to the last trial's end."""
    ts = [t for t in study.trials if t.datetime_complete is not None]
    span = (max(t.datetime_complete for t in ts) - min(t.datetime_start for t in ts)).total_seconds()
    return 60 * len(ts) / span, span


def node_loss(cluster, root, recipe) -> tuple[float, float, float]:
    """Remove a worker node once a trial runs on it. Seconds from the removal to: the lost trial
    recorded failed, its retry asked from the study, the retry's first report from a node (running)."""
    import optuna

    from se_nas.record.storage import open_study

    victim = cluster.add_node(num_cpus=1, resources={"victim": 1})
    cluster.wait_for_nodes()
    at: dict = {}

    def watch():
        study = open_study("loss", root=root, create=True)
        while "running" not in at:
            trials = study.get_trials()
            if "removed" not in at and any(t.user_attrs.get("node", {}).get("id") == victim.node_id
                                           for t in trials if t.state == optuna.trial.TrialState.RUNNING):
                at["removed"] = time.time()
                cluster.remove_node(victim)
            if any("retry_of" in t.user_attrs and "node" in t.user_attrs for t in trials):
                at["running"] = time.time()
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    study = search(cluster, root, "loss", 4, dataclasses.replace(recipe, epochs=6))
    (retry,) = [t for t in study.trials if "retry_of" in t.user_attrs]
    lost = study.trials[retry.user_attrs["retry_of"]]
    return (lost.datetime_complete.timestamp() - at["removed"], retry.datetime_start.timestamp() - at["removed"],
            at["running"] - at["removed"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=6, help="trials per search (default 6)")
    ap.add_argument("--root", default="/tmp/bench_cluster", help="folder for the studies (emptied first)")
    args = ap.parse_args()
    if args.trials < 2:
        ap.error(f"--trials must be >= 2, got {args.trials}")

    import ray
    from ray.cluster_utils import Cluster

    from se_nas.design.recipe import load_recipe

    shutil.rmtree(args.root, ignore_errors=True)
    recipe, load = load_recipe("tiny"), [benchlib.load()]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    rows = []
    try:
        for n in (1, 2, 3):
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            per_min, span = rate(search(cluster, args.root, f"nodes{n}", args.trials, recipe))
            rows.append((n, per_min, span))
            load.append(benchlib.load())
        loss = node_loss(cluster, args.root, recipe)
        load.append(benchlib.load())
    finally:
        ray.shutdown()
        cluster.shutdown()

    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores; 1-minute load average {min(load):.1f} to {max(load):.1f} during the run\n")
    print("| worker nodes (1 CPU each) | trials | seconds | trials per minute | ratio to 1 node |")
    print("|---|---|---|---|---|")
    for n, per_min, span in rows:
        print(f"| {n} | {args.trials} | {span:.1f} | {per_min:.1f} | {per_min / rows[0][1]:.2f} |")
    print("\nnode removed mid-trial, seconds after the removal: the lost trial recorded failed {:.1f}, "
          "its retry asked {:.1f}, the retry running on a node (its first report) {:.1f}".format(*loss))


if __name__ == "__main__":
    main()
