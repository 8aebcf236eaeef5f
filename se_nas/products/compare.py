"""The chosen design against the paper's fixed r=16 SE baseline and the plain backbone.

``compare`` trains the design the search chose, the paper's default on the same backbone (SE in
every stage, r=16, average squeeze, sigmoid gate, standard insertion: ``se_nas.design.arch.baseline_arch``)
and the backbone without SE (``plain_arch``) under the same recipe and the same K seeds, and reports
per design the mean accuracy with its standard error and seeds, the deployment model's GFLOPs and
parameters, and the measured inference latency; against r=16 *and* against the plain backbone, the
paired difference with its standard error and a paired t-test (seed k of every design shares data
order and initialisation seed, so pairing removes that part of the noise), and the one-sentence
finding (``se_nas.record.results.finding``).

The chosen design is the search's confirmed choice (``se_nas.search.confirm``), else its best per-design
mean within the budget. When that is the plain backbone or r=16 itself, the comparison says so and
shows one row for it, not two rows of one design.

Runs are the study's confirmation runs (``se_nas.search.confirm.ensure_runs``): after a search with
confirmation, ``compare`` trains nothing new; with more seeds it trains only the missing ones.
Latency is measured on freshly built proxies (weights don't change a forward pass's time),
round-robin over the designs so that all see the same machine load. Results go to
``<out>/<study>/compare.json`` and ``compare.md``, which the report reads.
"""
from __future__ import annotations

import json
import math
import platform
import statistics
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..design.arch import PAPER_SE, Arch, baseline_arch, baseline_name, plain_arch
from ..search.confirm import (role_name, chosen_design, confirm_seeds, confirmation_recipe, design_of, ensure_runs,
                              paired, read_confirmation, recipe_key)
from ..design.files import atomic_write, output_folder, refuse_link
from ..record.results import Difference, dominators, finding
from ..record.storage import DEFAULT_ROOT, default_study, open_study
from ..record.study import StudySettings

DEFAULT_OUT = Path("reports")


def compare_path(study: str, out: str | Path = DEFAULT_OUT) -> Path:
    """Where ``se-nas compare`` writes its results for ``study`` (read back by the report)."""
    return Path(out) / study / "compare.json"


def measure_latency(models: dict[str, Any], image_size: int, device="cpu", repeats: int = 30,
                    warmup: int = 5, rounds: int = 5, runtime: str = "torch") -> dict[str, list[float]]:
    """Median time in milliseconds of one forward pass at batch 1 (no grad, eval mode) of each model,
    over ``rounds`` rounds of ``repeats`` passes, the models' passes interleaved (the latency
    profile's timer and loop: wall clock on a CPU, CUDA events on a GPU), run by ``runtime`` (the
    profile's ``RUNTIMES``: eager torch, or ONNX Runtime on the CPU). Returns each model's round
    medians."""
    import torch

    from ..nn.profile import TIMERS, measure_interleaved
    from ..nn.profile import runtime as make_runtime

    dev = torch.device(device)
    rt = make_runtime(runtime, dev.type, torch.get_num_threads())
    x = torch.randn(1, 3, image_size, image_size, device=dev)
    models = {k: m.to(dev).eval() for k, m in models.items()}
    with torch.inference_mode():
        times = measure_interleaved({k: rt.call(m, x) for k, m in models.items()}, TIMERS[dev.type](dev),
                                    rounds * repeats, warmup)
    return {k: [statistics.median(t[i * repeats:(i + 1) * repeats]) for i in range(rounds)] for k, t in times.items()}


def paired_test(values: list[float], reference: list[float]) -> dict[str, Any]:
    """``values - reference`` over paired seeds: mean, std and standard error of the differences and a
    paired t-test, as a dict (``se_nas.record.results.paired_difference``)."""
    from ..record.results import paired_difference

    return _diff_dict(paired_difference(values, reference))


def _diff_dict(d: Difference | None) -> dict[str, Any] | None:
    if d is None:
        return None
    out = d.to_dict()
    out["diff_std"] = d.se * math.sqrt(d.n) if d.n > 1 else math.nan
    return out


def compare(study: str | None = None, *, root: str | Path = DEFAULT_ROOT, out: str | Path = DEFAULT_OUT,
            storage: str | None = None, seeds: int | None = None, recipe=None, arch: Arch | None = None,
            device=None, progress: bool = False, latency_repeats: int = 30, log=print,
            latency: str | None = None) -> dict[str, Any]:
    """Train the chosen design, the r=16 baseline and the plain backbone under ``seeds`` seeds each
    (default: the confirmation's seeds, or 3), and write ``<out>/<study>/compare.json`` and
    ``compare.md``. Returns the compare.json content.

    ``recipe`` (a Recipe, built-in name or YAML path) defaults to the confirmation's (the study's unless
    it was searched with ``--confirm-recipe``); ``arch`` overrides the
    chosen design. ``latency`` (a table of ``se-nas latency profile`` for the recipe's proxy) adds each
    design's predicted latency beside the measured one.
    """
    from ..nn.build import build_model
    from ..design.recipe import load_recipe

    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
        raise UsageError(f"--seeds must be a positive integer, got seeds={seeds!r}")
    name = study if study is not None else default_study(root, storage)  # "" is a bad name, not the latest
    refuse_link(compare_path(name, out).parent, "report")  # before any training, not after
    st = open_study(name, storage=storage, root=root)
    settings = StudySettings.of(st)
    source = "given with --arch"
    if arch is None:
        chosen, source = chosen_design(st, settings)
        arch = chosen.arch
    conf = read_confirmation(st, settings)
    if seeds is None:
        seeds = len(conf.seeds) if conf is not None else 3
    if recipe is None:  # the confirmation's (--confirm-recipe), else the study's: its runs are reused
        recipe, recipe_name = confirmation_recipe(st, settings)
    else:
        recipe_name = recipe if isinstance(recipe, str) else "custom"
        recipe = load_recipe(recipe)
    deploy = settings.deploy_value
    arms = {"chosen": arch, "r16": baseline_arch(arch), "plain": plain_arch(arch)}
    same = next((role for role in ("r16", "plain") if arms[role].id == arch.id), None)
    seed_list = confirm_seeds(seeds)
    runs = ensure_runs(st, arms, seed_list, recipe, device=device, log=log if progress else None, stage="compare")
    designs = {role: design_of(a, runs, seed_list, deploy) for role, a in arms.items()}

    num_classes = _num_classes(recipe)
    predicted, runtime = _predicted_latency(latency, arms, recipe, num_classes) if latency else ({}, "torch")
    models = {role: build_model(a, num_classes, stem=recipe.stem, width=recipe.width)
              for role, a in arms.items() if role != same}
    dev = _device(recipe, device)
    lat = measure_latency(models, recipe.image_size, dev, latency_repeats, runtime=runtime)  # the table's runtime
    if same is not None:
        lat[same] = lat["chosen"]
    return _result(name, st, arms, designs, lat, same, source, recipe, recipe_name, deploy, dev, conf, out, predicted,
                   runtime)


def _predicted_latency(path: str, arms: dict[str, Arch], recipe, num_classes: int) -> tuple[dict[str, float], str]:
    """Each arm's latency predicted from the table at ``path``, and the table's runtime (which
    compare then measures on)."""
    from ..design.latency import LatencyError, load_table, predict_latency

    table = load_table(path)
    f = table.form
    if (f.stem, f.width, f.image_size, f.num_classes) != (recipe.stem, float(recipe.width), recipe.image_size,
                                                          num_classes):
        raise LatencyError(
            f"latency table {path!r} was profiled for a {f.stem} stem, width {f.width:g}, {f.image_size}px, "
            f"{f.num_classes} classes, but compare measures the recipe's proxy ({recipe.stem} stem, width "
            f"{recipe.width:g}, {recipe.image_size}px, {num_classes} classes); profile it with: se-nas latency "
            f"profile --space SPACE --stem {recipe.stem} --width {recipe.width:g} --image-size {recipe.image_size} "
            f"--num-classes {num_classes} --threads N -o TABLE")
    return {role: predict_latency(a, table).ms for role, a in arms.items()}, table.runtime


def _num_classes(recipe) -> int:
    from ..nn.data import load_data

    return load_data(recipe).num_classes


def _device(recipe, device):
    from ..nn.train import pick_device

    return pick_device(recipe.device if device is None else str(device))


def _result(name, st, arms, designs, lat, same, source, recipe, recipe_name, deploy, dev, conf, out,
            predicted, runtime: str = "torch") -> dict[str, Any]:
    import torch

    from ..search.confirm import study_noise

    noise = study_noise(st, recipe)
    chosen, r16, plain = designs["chosen"], designs["r16"], designs["plain"]
    vs = {"r16": paired(chosen, r16), "plain": paired(chosen, plain)}
    # a baseline as accurate or more at no more cost (these runs' means) dominates the choice: said first
    dom = next(iter(dominators(chosen, [r16, plain])), None)
    result: dict[str, Any] = {
        "study": name, "recipe_name": recipe_name, "recipe": recipe.to_dict(), "recipe_key": recipe_key(recipe),
        "seeds": list(chosen.seeds) or [], "deploy": deploy.to_dict(), "device": str(dev),
        "threads": torch.get_num_threads(), "chosen_from": source, "same_as": same,
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}, "
                   f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "noise": noise.to_dict(), "arms": [], "vs_r16": {}, "vs_plain": {},
        "fidelity": recipe.fidelity,
        "finding": finding(chosen, r16, plain, vs["r16"], vs["plain"], noise, dom,
                           None if dom is None else paired(dom, chosen), fidelity=recipe.fidelity) if chosen.n else "",
    }
    trial = chosen.trials[0] if chosen.trials else None
    ref = baseline_name(chosen.arch.backbone)
    for role, d in designs.items():
        if role == same:
            continue
        result["arms"].append({
            "role": role, "name": role_name(role, ref) if role != "chosen" or same is None
            else f"chosen design = {role_name(same, ref)}",
            "arch_id": d.id, "label": d.arch.label, "arch": d.arch.to_dict(), "trial": trial if role == "chosen" else None,
            "gflops": d.gflops, "mparams": d.mparams, "accuracy": list(d.accuracies), "seeds": list(d.seeds),
            "accuracy_mean": d.mean, "accuracy_std": d.std if d.n > 1 else 0.0, "accuracy_sem": d.sem(noise),
            "n": d.n, "latency_ms": lat[role], "latency_mean": statistics.fmean(lat[role]),
            "latency_std": statistics.stdev(lat[role]) if len(lat[role]) > 1 else 0.0,
            "latency_predicted_ms": predicted.get(role),
        })
    for ref in ("r16", "plain"):
        if ref == same:
            continue
        lat_d = paired_test(lat["chosen"], lat[ref]) if len(lat["chosen"]) == len(lat[ref]) else None
        result[f"vs_{ref}"]["chosen"] = {"accuracy": _diff_dict(vs[ref]), "latency_ms": lat_d}
    if same is None and plain.n and r16.n:
        result["vs_r16"]["plain"] = {"accuracy": _diff_dict(paired(plain, r16)),
                                     "latency_ms": paired_test(lat["plain"], lat["r16"])}
    if runtime != "torch":  # measured (and predicted) on another runtime than eager torch: say which
        result["latency_runtime"] = runtime
    path = compare_path(name, out)
    output_folder(path.parent)
    atomic_write(path, json.dumps(result, indent=1))
    atomic_write(path.with_suffix(".md"), compare_md(result))
    return result


def _predicted_cell(arm: dict[str, Any]) -> str:
    p = arm.get("latency_predicted_ms")
    return "" if p is None else f" (predicted {p:.3f})"


def _pm(mean: float, err: float, nd: int) -> str:
    return f"{mean:.{nd}f} ± {err:.{nd}f}" if math.isfinite(err) else f"{mean:.{nd}f}"


def _test_cells(t: dict | None) -> tuple[str, str]:
    if t is None:
        return "", ""
    se = t.get("diff_se")
    delta = f"{t['diff_mean']:+.4f}" + (f" ± {se:.4f}" if se is not None and math.isfinite(se) else "")
    return delta, ("n/a" if t["p"] is None else f"{t['p']:.3g}")


def compared_baseline(res: dict[str, Any]) -> str:
    """The name of the reference SE a compare.json compared against (``baseline_name`` of its backbone);
    a file whose arms carry no design was written before other families: the paper's r=16."""
    arch = next((arm["arch"] for arm in res.get("arms", []) if arm.get("arch")), None)
    return baseline_name(arch["backbone"]) if arch else PAPER_SE


def compare_md(res: dict[str, Any]) -> str:
    """The comparison as Markdown (also printed on the console)."""
    k = len(res["seeds"])
    r = res["recipe"]
    d = res["deploy"]
    noise = res.get("noise") or {}
    sigma = noise.get("sigma")
    ref = compared_baseline(res)
    lines = [
        f"## Comparison against the fixed {ref} baseline and the plain backbone", "",
        f"**Finding:** {res['finding']}", "",
        f"{k} seed(s) per design (seeds {', '.join(str(s) for s in res['seeds'])}, shared by every design); "
        f"chosen design: {res.get('chosen_from', '')}. Recipe: {res['recipe_name']} ({r['dataset']} at "
        f"{r['image_size']}px, {r['stem']} stem, width x{r['width']}, {r['epochs']} epochs). Accuracy: mean ± "
        "standard error over the seeds. GFLOPs and parameters: deployment model "
        f"({d['image_size']}x{d['image_size']}, {d['num_classes']} classes). Latency: median forward pass of the "
        f"proxy at batch 1, {r['image_size']}px, on {res['device']} ({res['machine']})"
        f"{' in ' + res['latency_runtime'] if res.get('latency_runtime') else ''}, mean ± std over "
        "interleaved rounds.",
        "",
    ]
    if sigma is not None:
        lines += [f"Proxy seed noise: ± {sigma:.4f} (pooled over {noise['designs']} designs, {noise['df']} "
                  "degrees of freedom). A difference is called significant at p < 0.05 (paired t-test).", ""]
    if res.get("same_as"):
        lines += [f"The chosen design **is** the {role_name(res['same_as'], ref)}: one row for it.", ""]
    lines += [
        f"| design | arch id | accuracy | seeds | GFLOPs | M params | latency ms | Δ acc vs {ref} | p | Δ acc vs plain | p |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in res["arms"]:
        role = arm["role"]
        d16, p16 = _test_cells(((res["vs_r16"].get(role) or {}).get("accuracy")))
        dpl, ppl = _test_cells(((res["vs_plain"].get(role) or {}).get("accuracy")))
        trial = f" (trial {arm['trial']})" if arm.get("trial") is not None else ""
        lines.append(f"| {arm['name']}{trial} | `{arm['arch_id']}` | {_pm(arm['accuracy_mean'], arm.get('accuracy_sem', math.nan), 4)} "
                     f"| {arm.get('n', len(arm['accuracy']))} | {arm['gflops']:.4f} | {arm['mparams']:.3f} "
                     f"| {_pm(arm['latency_mean'], arm['latency_std'], 3)}{_predicted_cell(arm)} | {d16} | {p16} | {dpl} | {ppl} |")
    lines += ["", "Designs: " + "; ".join(f"{arm['name']}: {arm['label']}" for arm in res["arms"]), ""]
    return "\n".join(lines)
