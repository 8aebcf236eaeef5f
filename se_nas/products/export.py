"""Exporting: train a study's chosen design and write it as a model file, ONNX or TorchScript.

A search keeps no weights, so ``se-nas export`` retrains the chosen trial's *proxy* (the study's
recipe: small input, narrow width, the dataset's classes) with the trial's seed, which reproduces the
trial, and writes it with its input preprocessing (``preprocess_for``). ``--deploy`` instead writes the
deployment-size model the budget was checked on (e.g. 224x224, 1000 classes), untrained; a trained one
comes from ``se-nas train`` with a full recipe (``trials/imagenet.yaml``). The file format itself
(save, read, load, checksum, signature) is ``se_nas.products.modelfile``; its names are re-exported here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..design.arch import Arch
from ..design.cost import count_cost
from ..design.budget import Deploy, predicted_latencies
from ..record.storage import DEFAULT_ROOT
from .modelfile import (  # noqa: F401  (re-exported: the file format's public names)
    MODEL_FORMAT, ModelFile, ModelFileError, Preprocess, checksum, load_model, read_key, read_model, save_model,
)

FORMATS = ("senas", "onnx", "torchscript")
SUFFIXES = {"senas": ".safetensors", "onnx": ".onnx", "torchscript": ".pt"}


# --- input preprocessing of each dataset (what se_nas.nn.data feeds a trial, without augmentation) ------------
def _digits_preprocess(image_size: int) -> Preprocess:
    """scikit-learn's digits (8x8, values 0..16), normalised with the training split's statistics."""
    from sklearn.datasets import load_digits

    from ..nn.data import stratified_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).div_(16.0)
    tr, _ = stratified_split(d.target, 0.2)  # the split se_nas.nn.data normalises with
    return Preprocess(image_size, (x[tr].mean().item(),), (x[tr].std().item(),), pixel_max=16.0, channels=1)


def _cifar_preprocess(image_size: int) -> Preprocess:
    from ..nn.data import CIFAR_MEAN, CIFAR_STD

    return Preprocess(image_size, CIFAR_MEAN, CIFAR_STD)


def imagenet_preprocess(image_size: int) -> Preprocess:
    """ImageNet evaluation: shorter side to 256/224 of the input, centre crop, ImageNet statistics."""
    from ..nn.data import IMAGENET_MEAN, IMAGENET_STD

    return Preprocess(image_size, IMAGENET_MEAN, IMAGENET_STD, resize_to=max(image_size, round(image_size * 256 / 224)))


PREPROCESS = {"digits": _digits_preprocess, "cifar10": _cifar_preprocess, "cifar100": _cifar_preprocess,
              "imagefolder": imagenet_preprocess}


def preprocess_for(recipe) -> Preprocess:
    """How raw images of ``recipe``'s dataset become the input its models were trained on."""
    if recipe.dataset not in PREPROCESS:
        raise UsageError(f"no input preprocessing known for dataset {recipe.dataset!r}; known: {', '.join(PREPROCESS)}")
    return PREPROCESS[recipe.dataset](recipe.image_size)


def role_of(recipe, num_classes: int, deploy: Deploy | None = None) -> str:
    """"deployment" when ``recipe`` trains the deployment model itself (full width, ImageNet stem, its
    input size and classes), else "proxy"."""
    d = deploy or Deploy()
    full = (recipe.stem, recipe.width, recipe.image_size, num_classes) == ("imagenet", 1.0, d.image_size, d.num_classes)
    return "deployment" if full else "proxy"


# --- deployment formats --------------------------------------------------------------------------
def _example(model: nn.Module, image_size: int) -> torch.Tensor:
    p = next(model.parameters())
    return torch.zeros(1, 3, image_size, image_size, device=p.device, dtype=p.dtype)


def export_onnx(model: nn.Module, path: str | Path, image_size: int, opset: int = 17) -> Path:
    """Write ``model`` as ONNX with a dynamic batch axis (input ``images``, output ``logits``).

    Uses the TorchScript-based exporter (``dynamo=False``): the dynamo exporter needs the
    ``onnxscript`` package, which se-nas does not require.
    """
    import io
    import warnings

    from ..design.files import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the legacy exporter announces its own deprecation, and tracing warns about shape-dependent
        # Python branches (the builder's, which are fixed once the model is built)
        for category in (DeprecationWarning, FutureWarning, torch.jit.TracerWarning):
            warnings.filterwarnings("ignore", category=category)
        torch.onnx.export(
            model, (_example(model, image_size),), buffer, dynamo=False, opset_version=opset,
            input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
    atomic_write(path, buffer.getvalue())
    return path


def export_torchscript(model: nn.Module, path: str | Path, image_size: int) -> Path:
    """Write ``model`` traced to TorchScript (``torch.jit.load`` reads it without se-nas installed)."""
    import warnings

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        for category in (FutureWarning, torch.jit.TracerWarning):  # torch.jit's deprecation; see export_onnx
            warnings.filterwarnings("ignore", category=category)
        traced = torch.jit.trace(model, _example(model, image_size))
    from ..design.files import atomic_write

    atomic_write(path, lambda f: torch.jit.save(traced, f))
    return path


def write_formats(model_file: str | Path, fmt: str, out: str | Path, image_size: int | None = None) -> Path:
    """Write the model stored in ``model_file`` as ``fmt`` ("senas" copies nothing) to ``out``, for
    inputs of ``image_size`` (default: the file's preprocessing)."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if fmt == "senas":
        return Path(model_file)
    model = load_model(model_file)
    if image_size is None:
        if model.se_nas.preprocess is None:
            raise UsageError(f"model file {str(model_file)!r} stores no input size; give image_size")
        image_size = model.se_nas.preprocess.image_size
    return (export_onnx if fmt == "onnx" else export_torchscript)(model, out, image_size)


# --- training a chosen architecture, and exporting from a study ----------------------------------
def train_arch(arch: Arch, recipe, *, seed: int | None = None, data=None, checkpoint: str | Path | None = None,
               progress: bool = False, device=None):
    """Train ``arch``'s proxy (``recipe.stem``, ``recipe.width``, the dataset's classes) with the
    search's trainer. Seeded like a search trial (``se_nas.search.trial.run_trial``): ``seed`` (default
    ``recipe.seed``) sets the initial weights and the data order, so a trial's seed and its study's
    recipe reproduce that trial. Returns ``(model, TrainResult, DataBundle)``."""
    from ..nn.data import load_data
    from ..nn.train import train
    from ..search.trial import seeded_proxy

    data = load_data(recipe) if data is None else data
    model, trial_recipe = seeded_proxy(arch, recipe, data.num_classes, recipe.seed if seed is None else seed)
    result = train(model, trial_recipe, data, device=device, checkpoint=checkpoint, progress=progress)
    return model.cpu().eval(), result, data


def save_trained(path: str | Path, model: nn.Module, arch: Arch, recipe, data, result, *,
                 deploy: Deploy | None = None, key: bytes | str | None = None, **meta: Any) -> Path:
    """``save_model`` with what a training run knows: its accuracy, history, cost, recipe, input
    preprocessing and whether it trained the deployment model (``deploy``) or a proxy of it."""
    from ..design.cost import count_cost

    role = role_of(recipe, data.num_classes, deploy)
    cost = count_cost(arch, recipe.image_size, data.num_classes, recipe.stem, recipe.width)
    info = {
        "accuracy": result.accuracy, "history": list(result.history), "epochs": result.epochs,
        "train_seconds": round(result.seconds, 3), "dataset": data.name, "image_size": recipe.image_size,
        "recipe": recipe.to_dict(),
        "cost": {"gflops": cost.gflops, "mparams": cost.mparams, "image_size": recipe.image_size,
                 "num_classes": data.num_classes, "note": f"this file's model (the trained {role})"},
        **meta,
    }
    return save_model(path, model, arch, num_classes=data.num_classes, stem=recipe.stem, width=recipe.width,
                      meta=info, role=role, trained=True, preprocess=preprocess_for(recipe), key=key)


def pick_trial(recs, trial: int):
    """Trial number ``trial`` of a study's records, if it was trained (``se-nas export --trial N``,
    ``se-nas train STUDY:N``); raises ``ValueError`` saying what is available. The study's *choice*
    is a design, not a trial: see ``se_nas.search.confirm.chosen_design``."""
    hit = [r for r in recs if r.number == trial]
    if not hit:
        raise UsageError(f"no trial {trial} in this study; trials are 0..{len(recs) - 1}")
    if hit[0].arch is None or not hit[0].trained:
        raise UsageError(f"trial {trial} was not trained (status {hit[0].status}"
                         f"{': ' + hit[0].reason if hit[0].reason else ''}); pick a trained trial")
    return hit[0]


def resolve_ref(ref: str, root: str | Path = DEFAULT_ROOT, storage: str | None = None):
    """An architecture reference of the CLI: ``STUDY:N`` (trial N of a study), a JSON file or a preset.
    Returns ``(arch, source)`` where source says where it came from (for the metadata)."""
    from ..design.arch import resolve_arch

    if ":" in ref and not Path(ref).exists():
        from ..record.storage import open_study
        from ..record.study import records

        name, _, num = ref.rpartition(":")
        if not num.isdigit():
            raise UsageError(f"trial reference must be STUDY:N with N a trial number, got {ref!r}")
        rec = pick_trial(records(open_study(name, storage=storage, root=root, read_only=True)), trial=int(num))
        return rec.arch, {"study": name, "trial": rec.number, "trial_accuracy": rec.accuracy}
    return resolve_arch(ref), {"source": ref}


def model_file_path(out: str | Path, fmt: str) -> Path:
    """Where ``export_study`` writes the model file: ``out`` itself, or beside an ONNX/TorchScript ``out``."""
    out = Path(out)
    if fmt == "senas":
        return out
    path = out.with_suffix(SUFFIXES["senas"])
    if path == out:
        raise UsageError(f"-o {out}: with --format {fmt} it names the {fmt} file (e.g. {out.stem}{SUFFIXES[fmt]}); "
                         f"the model file is written beside it as {path.name}")
    return path


def export_study(study_name: str, out: str | Path, *, root: str | Path = DEFAULT_ROOT, trial: int | None = None,
                 max_gflops: float | None = None, fmt: str = "senas", progress: bool = False, device=None,
                 storage: str | None = None, deploy: bool = False, key: bytes | str | None = None) -> Path:
    """``se-nas export``: write the chosen design as a model file and, for ``fmt`` onnx/torchscript,
    also a deployment file at ``out`` (the model file beside it: ``model_file_path``).

    The design is the study's confirmed choice (``--best``, the default; the most accurate design of
    the confirmed front where another confirmed design dominates the choice; else its best per-design
    mean within the budget), or trial N. By default its proxy is trained with the recipe its figures
    come from (the confirmation's for a confirmed design, ``--confirm-recipe``; else the study's) and
    the seed of one of its runs (resuming from ``<root>/<study>/export/``), which reproduces that
    run. ``deploy=True`` writes the deployment-size model of the study instead, untrained (initial
    weights from that seed). ``key`` signs the model file. Returns ``out``.
    """
    from ..design.recipe import Recipe

    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    from ..search.confirm import export_choice
    from ..design.files import check_output_file
    from ..record.storage import open_study

    model_path = model_file_path(out, fmt)
    for path in {Path(out), model_path}:  # a folder or a link at -o: refused before any training
        check_output_file(path)
    study = open_study(study_name, storage=storage, root=root, read_only=True)
    recipe = Recipe.from_dict(study.user_attrs.get("recipe") or {}, where=f"study {study_name!r} recipe")
    if trial is not None:
        from ..record.study import records

        rec = pick_trial(records(study), trial)
        arch, seed, tag, info = rec.arch, rec.seed, f"trial-{rec.number}", {"trial": rec.number,
                                                                            "search_accuracy": rec.accuracy}
    else:
        arch, seed, tag, info = export_choice(study, max_gflops)
        if "recipe" in info:  # a design confirmed under --confirm-recipe: trained as its figures were
            recipe = Recipe.from_dict(info.pop("recipe"), where=f"study {study_name!r} confirmation recipe")
    dep = Deploy(**(study.user_attrs.get("deploy") or {}))
    c = count_cost(arch, dep.image_size, dep.num_classes)
    origin = {"study": study_name, **info, "deploy_cost": {"gflops": c.gflops, "mparams": c.mparams, **dep.to_dict()}}
    stored = study.user_attrs.get("budget") or {}
    if stored.get("latency"):  # the study has a device's table: the design's predicted latency too
        from ..record.study import records

        if (ms := predicted_latencies(stored, records(study), [arch]).get(arch.id)) is not None:
            origin["deploy_cost"].update(latency_ms=ms, latency_table=stored["latency"],
                                         latency_hash=stored["latency_hash"])
    if deploy:
        from ..nn.build import build_model

        torch.manual_seed(seed)
        model = build_model(arch, dep.num_classes)
        ref = f"{study_name}:{info['trial']}" if "trial" in info else "DESIGN.json"
        save_model(model_path, model, arch, num_classes=dep.num_classes, role="deployment", trained=False,
                   preprocess=imagenet_preprocess(dep.image_size), key=key,
                   meta={**origin, "note": f"untrained; train it with `se-nas train {ref} --recipe imagenet` "
                         "(or another full recipe)"})
    else:
        ckpt = Path(root) / study_name / "export" / f"{tag}.ckpt"
        from ..search.trial import pinned  # the study's runs' thread count: the file reproduces the run exactly

        model, result, data = train_arch(arch, pinned(recipe), seed=seed, checkpoint=ckpt, progress=progress,
                                         device=device)
        save_trained(model_path, model, arch, recipe, data, result, deploy=dep, key=key, **origin)
    if fmt != "senas":
        write_formats(model_path, fmt, out)
    return Path(out)
