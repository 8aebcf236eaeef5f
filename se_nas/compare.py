"""The chosen design against the paper's fixed r=16 SE baseline and the plain backbone.

``compare`` trains three architectures under the same recipe and the same K seeds: the design the
search chose (the most accurate completed trial within the budget), the paper's default on the same
backbone (SE in every stage, r=16, average squeeze, sigmoid gate, standard insertion:
``se_nas.arch.baseline_arch``) and the backbone without SE (``plain_arch``). It reports mean and
standard deviation of validation accuracy, the deployment model's GFLOPs and parameters, and the
measured inference latency, and the difference against r=16 with a paired t-test over seeds (seed k
of each arm shares data order and split, so the pairing removes that part of the noise).

Finished runs are cached in ``reports/<study>/compare-runs/`` (a JSON record and the weights per
architecture, recipe and seed), so a rerun, or a rerun with more seeds, only trains what is missing.
Latency is re-measured on every call, round-robin over the arms, so that all arms see the same
machine load. Results go to ``reports/<study>/compare.json`` and ``compare.md``, which the report
(``se_nas.report``) reads.
"""
from __future__ import annotations

import hashlib
import json
import math
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .arch import Arch, baseline_arch, plain_arch
from .cost import count_cost
from .report import DEFAULT_OUT, compare_path, latest_study
from .study import DEFAULT_ROOT, open_study, records

ROLES = {"chosen": "chosen design", "r16": "r=16 SE baseline", "plain": "plain backbone"}


def recipe_key(recipe) -> str:
    """Short hash of a recipe's settings except its seed: runs are cached per (arch, recipe, seed)."""
    d = recipe.to_dict()
    d.pop("seed", None)
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def measure_latency(model: torch.nn.Module, image_size: int, device="cpu", repeats: int = 30,
                    warmup: int = 5) -> float:
    """Median wall time in milliseconds of one forward pass at batch 1 (no grad, eval mode)."""
    dev = torch.device(device)
    model = model.to(dev).eval()
    x = torch.randn(1, 3, image_size, image_size, device=dev)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            model(x)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)  # kernels are asynchronous: wait for them before timing
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def paired_test(values: list[float], reference: list[float]) -> dict[str, Any]:
    """Mean and std of the per-seed differences ``values - reference`` and a paired t-test."""
    from scipy import stats

    d = [a - b for a, b in zip(values, reference)]
    out: dict[str, Any] = {"diff_mean": statistics.fmean(d) if d else math.nan,
                           "diff_std": statistics.stdev(d) if len(d) > 1 else math.nan,
                           "t": None, "p": None}
    if len(d) < 2:
        out["note"] = f"no test possible with {len(d)} seed(s); use --seeds 2 or more"
    elif max(d) == min(d):
        out["note"] = "the difference is the same on every seed: the t-test is undefined"
    else:
        res = stats.ttest_rel(values, reference)
        out.update(t=float(res.statistic), p=float(res.pvalue),
                   note=f"paired t-test over {len(d)} seeds")
    return out


def _run(arch: Arch, recipe, seed: int, cache: Path, device, progress: bool) -> tuple[dict, Path]:
    """One training run, from the cache if it finished before. Returns (record, weights file)."""
    from .export import save_trained, train_arch

    stem = cache / f"{arch.id}-{recipe_key(recipe)}-s{seed}"
    rec_path, weights = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    if rec_path.exists() and weights.exists():
        return json.loads(rec_path.read_text()), weights
    r = replace(recipe, seed=seed)
    model, result, data = train_arch(arch, r, seed=seed, checkpoint=stem.with_suffix(".ckpt"),
                                     progress=progress, device=device)
    save_trained(weights, model, arch, r, data, result)
    rec = {"arch_id": arch.id, "seed": seed, "accuracy": result.accuracy, "history": list(result.history),
           "seconds": result.seconds, "recipe": r.to_dict()}
    rec_path.write_text(json.dumps(rec, indent=1))
    stem.with_suffix(".ckpt").unlink(missing_ok=True)  # the weights file now holds the result
    return rec, weights


def compare(study: str | None = None, *, root: str | Path = DEFAULT_ROOT, out: str | Path = DEFAULT_OUT,
            seeds: int = 3, recipe=None, arch: Arch | None = None, device=None, progress: bool = False,
            latency_repeats: int = 30, log=print) -> dict[str, Any]:
    """Train the chosen design, the r=16 baseline and the plain backbone for ``seeds`` seeds each and
    write ``<out>/<study>/compare.json`` and ``compare.md``. Returns the compare.json content.

    ``recipe`` (a Recipe, built-in name or YAML path) defaults to the study's; ``arch`` overrides the
    chosen design (default: the most accurate completed trial within the study's GFLOPs budget).
    """
    from .export import load_model, pick_trial
    from .recipe import Recipe, load_recipe
    from .train import pick_device

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds must be a positive integer, got seeds={seeds!r}")
    name = study or latest_study(root)
    st = open_study(name, root=root)
    trial = None
    if arch is None:
        budget = st.user_attrs.get("budget") or {}
        rec = pick_trial(records(st), None, budget.get("max_gflops"))
        arch, trial = rec.arch, rec.number
    if recipe is None:
        recipe = Recipe.from_dict(st.user_attrs.get("recipe") or {}, where=f"study {name!r} recipe")
        recipe_name = "the study's"
    else:
        recipe_name = recipe if isinstance(recipe, str) else "custom"
        recipe = load_recipe(recipe)
    deploy = {"image_size": 224, "num_classes": 1000, **(st.user_attrs.get("deploy") or {})}
    dev = pick_device(recipe.device if device is None else str(device))
    arms = {"chosen": arch, "r16": baseline_arch(arch), "plain": plain_arch(arch)}
    cache = Path(out) / name / "compare-runs"
    cache.mkdir(parents=True, exist_ok=True)

    runs: dict[str, list[tuple[dict, Path]]] = {role: [] for role in arms}
    for seed in range(seeds):
        for role, a in arms.items():
            log(f"[compare] {ROLES[role]} {a.id} seed {seed}")
            runs[role].append(_run(a, recipe, seed, cache, dev, progress))

    # Latency: every trained model, round-robin over the arms, on this machine now.
    lat: dict[str, list[float]] = {role: [] for role in arms}
    for seed in range(seeds):
        for role in arms:
            model = load_model(runs[role][seed][1])
            lat[role].append(measure_latency(model, recipe.image_size, dev, latency_repeats))

    result: dict[str, Any] = {
        "study": name, "recipe_name": recipe_name, "recipe": recipe.to_dict(), "seeds": list(range(seeds)),
        "deploy": deploy, "device": str(dev), "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}, "
                   f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "arms": [], "vs_r16": {},
    }
    acc = {role: [r[0]["accuracy"] for r in runs[role]] for role in arms}
    for role, a in arms.items():
        c = count_cost(a, deploy["image_size"], deploy["num_classes"])
        result["arms"].append({
            "role": role, "name": ROLES[role], "arch_id": a.id, "label": a.label, "arch": a.to_dict(),
            "trial": trial if role == "chosen" else None, "gflops": c.gflops, "mparams": c.mparams,
            "accuracy": acc[role], "accuracy_mean": statistics.fmean(acc[role]),
            "accuracy_std": statistics.stdev(acc[role]) if seeds > 1 else 0.0,
            "latency_ms": lat[role], "latency_mean": statistics.fmean(lat[role]),
            "latency_std": statistics.stdev(lat[role]) if seeds > 1 else 0.0,
        })
        if role != "r16":
            result["vs_r16"][role] = {"accuracy": paired_test(acc[role], acc["r16"]),
                                      "latency_ms": paired_test(lat[role], lat["r16"])}
    path = compare_path(name, out)
    path.write_text(json.dumps(result, indent=1))
    path.with_suffix(".md").write_text(compare_md(result))
    return result


def _pm(mean: float, std: float, nd: int) -> str:
    return f"{mean:.{nd}f} ± {std:.{nd}f}"


def compare_md(res: dict[str, Any]) -> str:
    """The comparison as Markdown (also printed on the console)."""
    k = len(res["seeds"])
    r = res["recipe"]
    d = res["deploy"]
    lines = [
        "## Comparison against the fixed r=16 SE baseline", "",
        f"{k} seed(s), recipe: {res['recipe_name']} ({r['dataset']} at {r['image_size']}px, {r['stem']} stem, "
        f"width x{r['width']}, {r['epochs']} epochs). GFLOPs and parameters: deployment model "
        f"({d['image_size']}x{d['image_size']}, {d['num_classes']} classes). Latency: median forward pass "
        f"of the trained proxy at batch 1, {r['image_size']}px, on {res['device']} ({res['machine']}).", "",
        "| design | arch id | accuracy (mean ± std) | GFLOPs | M params | latency ms (mean ± std) | Δ accuracy vs r=16 | p (paired t) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in res["arms"]:
        vs = res["vs_r16"].get(arm["role"], {}).get("accuracy")
        delta = "" if vs is None else f"{vs['diff_mean']:+.4f}"
        p = "" if vs is None else ("n/a" if vs["p"] is None else f"{vs['p']:.3g}")
        trial = f" (trial {arm['trial']})" if arm.get("trial") is not None else ""
        lines.append(f"| {arm['name']}{trial} | `{arm['arch_id']}` | {_pm(arm['accuracy_mean'], arm['accuracy_std'], 4)} "
                     f"| {arm['gflops']:.4f} | {arm['mparams']:.3f} | {_pm(arm['latency_mean'], arm['latency_std'], 3)} "
                     f"| {delta} | {p} |")
    lines.append("")
    for role, tests in res["vs_r16"].items():
        a, l = tests["accuracy"], tests["latency_ms"]
        lines.append(f"- {ROLES[role]} vs r=16: accuracy {a['diff_mean']:+.4f}"
                     + (f" (t = {a['t']:.3f}, p = {a['p']:.3g}, {a['note']})" if a["p"] is not None else f" ({a['note']})")
                     + f"; latency {l['diff_mean']:+.3f} ms"
                     + (f" (p = {l['p']:.3g})" if l["p"] is not None else ""))
    lines += ["", "Designs: " + "; ".join(f"{arm['name']}: {arm['label']}" for arm in res["arms"]), ""]
    return "\n".join(lines)
