"""Exporting: train a study's chosen design and write it as a model file, ONNX or TorchScript.

The file format itself (save, read, load, checksum, signature) is ``se_nas.modelfile``; its names are
re-exported here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .arch import Arch
from .modelfile import (  # noqa: F401  (re-exported: the file format's public names)
    MODEL_FORMAT, ModelFile, ModelFileError, Preprocess, checksum, load_model, read_key, read_model, save_model,
)

FORMATS = ("senas", "onnx", "torchscript")
SUFFIXES = {"senas": ".safetensors", "onnx": ".onnx", "torchscript": ".pt"}


# --- deployment formats --------------------------------------------------------------------------
def _example(model: nn.Module, image_size: int) -> torch.Tensor:
    p = next(model.parameters())
    return torch.zeros(1, 3, image_size, image_size, device=p.device, dtype=p.dtype)


def export_onnx(model: nn.Module, path: str | Path, image_size: int, opset: int = 17) -> Path:
    """Write ``model`` as ONNX with a dynamic batch axis (input ``images``, output ``logits``).

    Uses the TorchScript-based exporter (``dynamo=False``): the dynamo exporter needs the
    ``onnxscript`` package, which se-nas does not require.
    """
    import warnings

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter announces its own deprecation
        torch.onnx.export(
            model, (_example(model, image_size),), str(path), dynamo=False, opset_version=opset,
            input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def export_torchscript(model: nn.Module, path: str | Path, image_size: int) -> Path:
    """Write ``model`` traced to TorchScript (``torch.jit.load`` reads it without se-nas installed)."""
    import warnings

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, _example(model, image_size))
    traced.save(str(path))
    return path


def write_formats(model_file: str | Path, fmt: str, out: str | Path, image_size: int) -> Path:
    """Write the model stored in ``model_file`` as ``fmt`` ("senas" copies nothing) to ``out``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if fmt == "senas":
        return Path(model_file)
    model = load_model(model_file)
    return (export_onnx if fmt == "onnx" else export_torchscript)(model, out, image_size)


# --- training a chosen architecture, and exporting from a study ----------------------------------
def train_arch(arch: Arch, recipe, *, seed: int | None = None, data=None, checkpoint: str | Path | None = None,
               progress: bool = False, device=None):
    """Train ``arch``'s proxy (``recipe.stem``, ``recipe.width``, the dataset's classes) with the
    search's trainer. Seeded like a search trial (``se_nas.trial.run_trial``): ``seed`` (default
    ``recipe.seed``) sets the initial weights and the data order, so a trial's seed and its study's
    recipe reproduce that trial. Returns ``(model, TrainResult, DataBundle)``."""
    from .data import load_data
    from .train import train
    from .trial import seeded_proxy

    data = load_data(recipe) if data is None else data
    model, trial_recipe = seeded_proxy(arch, recipe, data.num_classes, recipe.seed if seed is None else seed)
    result = train(model, trial_recipe, data, device=device, checkpoint=checkpoint, progress=progress)
    return model.cpu().eval(), result, data


def save_trained(path: str | Path, model: nn.Module, arch: Arch, recipe, data, result, **meta: Any) -> Path:
    """``save_model`` with the metadata of a training run (accuracy, history, costs, recipe)."""
    from .cost import count_cost

    proxy = count_cost(arch, recipe.image_size, data.num_classes, recipe.stem, recipe.width)
    info = {
        "accuracy": result.accuracy, "history": list(result.history), "epochs": result.epochs,
        "train_seconds": round(result.seconds, 3), "dataset": data.name, "image_size": recipe.image_size,
        "recipe": recipe.to_dict(),
        "cost": {"gflops": proxy.gflops, "mparams": proxy.mparams, "image_size": recipe.image_size,
                 "num_classes": data.num_classes, "note": "this file's model (the trained proxy)"},
    }
    info.update(meta)
    return save_model(path, model, arch, num_classes=data.num_classes, stem=recipe.stem, width=recipe.width,
                      meta=info)


def pick_trial(recs, trial: int | None = None, max_gflops: float | None = None):
    """The trial to export: number ``trial``, or the most accurate completed trial within
    ``max_gflops`` (ties: fewer GFLOPs). Raises ``ValueError`` saying what is available."""
    if trial is not None:
        hit = [r for r in recs if r.number == trial]
        if not hit:
            raise ValueError(f"no trial {trial} in this study; trials are 0..{len(recs) - 1}")
        if hit[0].arch is None or hit[0].status not in ("complete", "stopped_early"):
            raise ValueError(f"trial {trial} was not trained (status {hit[0].status}"
                             f"{': ' + hit[0].reason if hit[0].reason else ''}); pick a completed trial")
        return hit[0]
    done = [r for r in recs if r.status == "complete"]
    if not done:
        raise ValueError("no completed trial in this study yet; run `se-nas search` first")
    within = [r for r in done if max_gflops is None or r.gflops <= max_gflops]
    if not within:
        cheapest = min(r.gflops for r in done)
        raise ValueError(f"no completed trial within --max-gflops {max_gflops:g}; the cheapest has {cheapest:.4f}")
    return max(within, key=lambda r: (r.accuracy, -r.gflops))


def resolve_ref(ref: str, root: str | Path = "trials"):
    """An architecture reference of the CLI: ``STUDY:N`` (trial N of a study), a JSON file or a preset.
    Returns ``(arch, source)`` where source says where it came from (for the metadata)."""
    from .arch import resolve_arch

    if ":" in ref and not Path(ref).exists():
        from .study import open_study, records

        name, _, num = ref.rpartition(":")
        if not num.isdigit():
            raise ValueError(f"trial reference must be STUDY:N with N a trial number, got {ref!r}")
        rec = pick_trial(records(open_study(name, root=root)), trial=int(num))
        return rec.arch, {"study": name, "trial": rec.number, "trial_accuracy": rec.accuracy}
    return resolve_arch(ref), {"source": ref}


def export_study(study_name: str, out: str | Path, *, root: str | Path = "trials", trial: int | None = None,
                 max_gflops: float | None = None, fmt: str = "senas", progress: bool = False, device=None) -> Path:
    """``se-nas export``: train the chosen trial's architecture with the study's recipe and the trial's
    seed (resuming from ``<root>/<study>/export/trial-N.ckpt``), write the model file, and for
    ``fmt`` onnx/torchscript the deployment file at ``out`` (the model file beside it)."""
    from .recipe import Recipe
    from .study import open_study, records

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    study = open_study(study_name, root=root)
    if max_gflops is None and trial is None:
        max_gflops = (study.user_attrs.get("budget") or {}).get("max_gflops")
    rec = pick_trial(records(study), trial, max_gflops)
    recipe = Recipe.from_dict(study.user_attrs.get("recipe") or {}, where=f"study {study_name!r} recipe")
    ckpt = Path(root) / study_name / "export" / f"trial-{rec.number}.ckpt"
    model, result, data = train_arch(rec.arch, recipe, seed=rec.seed, checkpoint=ckpt, progress=progress,
                                     device=device)
    out = Path(out)
    model_path = out if fmt == "senas" else out.with_suffix(SUFFIXES["senas"])
    save_trained(model_path, model, rec.arch, recipe, data, result, study=study_name, trial=rec.number,
                 search_accuracy=rec.accuracy,
                 deploy_cost={"gflops": rec.gflops, "mparams": rec.mparams, **(study.user_attrs.get("deploy") or {})})
    if fmt != "senas":
        write_formats(model_path, fmt, out, recipe.image_size)
    return out
