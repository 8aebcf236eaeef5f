"""Model files: one file that holds an architecture, its weights and where they came from.

A search keeps no weights (its candidates are cheap proxies), so what a user takes away is written
here: ``save_model`` writes a safetensors file whose header carries the ``Arch`` JSON, the build
arguments (number of classes, stem, width), metadata (cost, accuracy, study, trial, recipe, se-nas
and torch versions) and a SHA-256 checksum over all of it and the weights. ``load_model`` rebuilds a
ready ``nn.Module`` from the file alone, without the study.

Why safetensors: loading it only parses a JSON header and copies raw tensor bytes, so a model file
cannot run code (a pickled ``torch.save`` file can). The checksum turns a truncated, corrupted or
carelessly edited file into a clear error instead of a silently different model. It is not a
signature: whoever edits a file on purpose can recompute it, so it guards against accidents, and
safetensors (not the checksum) is what guards against code in the file.

``export_onnx`` and ``export_torchscript`` write deployment files for the same model.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .arch import Arch, ArchError
from .build import build_model
from .choices import STEMS

MODEL_FORMAT = "se-nas/model@1"
FORMATS = ("senas", "onnx", "torchscript")
SUFFIXES = {"senas": ".safetensors", "onnx": ".onnx", "torchscript": ".pt"}


class ModelFileError(ValueError):
    """A model file that is not one, is damaged, or does not match its own description."""


@dataclass(frozen=True)
class ModelFile:
    """The parsed contents of a model file."""

    arch: Arch
    num_classes: int
    stem: str
    width: float
    meta: dict[str, Any] = field(default_factory=dict)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def build_kwargs(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "stem": self.stem, "width": self.width}

    def build(self) -> nn.Module:
        """The model with this file's weights, in eval mode, on the CPU."""
        model = build_model(self.arch, **self.build_kwargs)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as e:
            # strict loading lists missing/unexpected keys and shape mismatches; keep its first lines
            detail = " ".join(str(e).split())[:400]
            raise ModelFileError(f"weights do not fit architecture {self.arch.id}: {detail}") from None
        return model.eval()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    # viewing as bytes works for every dtype (numpy has no bfloat16)
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def checksum(header: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the header fields (except the checksum itself) and every tensor's name, dtype,
    shape and bytes, in sorted order, so any change to the description or the weights shows."""
    h = hashlib.sha256()
    for k in sorted(header):
        if k != "sha256":
            h.update(f"{k}={header[k]}\n".encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{str(t.dtype)}:{tuple(t.shape)}\n".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _versions() -> dict[str, str]:
    from . import __version__

    return {"se_nas": __version__, "torch": torch.__version__}


def save_model(
    path: str | Path,
    model: nn.Module,
    arch: Arch,
    *,
    num_classes: int,
    stem: str = "imagenet",
    width: float = 1.0,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (built by ``build_model(arch, num_classes, stem, width)``) to ``path``.

    ``meta`` is any JSON-serialisable dict (accuracy, cost, study, trial, recipe, ...); the se-nas
    and torch versions are added. Returns the path written.
    """
    from safetensors.torch import save_file

    if not isinstance(arch, Arch):
        raise TypeError(f"arch must be an se_nas.Arch, got {type(arch).__name__}")
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; allowed: {', '.join(STEMS)}")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        expected = build_model(arch, num_classes, stem, width).state_dict()
    if set(expected) != set(tensors) or any(expected[k].shape != tensors[k].shape for k in expected):
        raise ValueError(
            f"model does not match architecture {arch.id} built with num_classes={num_classes}, "
            f"stem={stem!r}, width={width}: its parameters differ from build_model's"
        )
    info = dict(meta or {})
    info.update(_versions())
    header = {
        "format": MODEL_FORMAT,
        "arch": arch.to_json(),
        "build": json.dumps({"num_classes": num_classes, "stem": stem, "width": float(width)}, sort_keys=True),
        "meta": json.dumps(info, sort_keys=True, default=str),
    }
    header["sha256"] = checksum(header, tensors)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(path)  # never leave a half-written model file under the real name
    return path


def read_model(path: str | Path, verify: bool = True) -> ModelFile:
    """Parse and (by default) verify a model file; raises ``ModelFileError`` naming what is wrong."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise FileNotFoundError(f"cannot read model file {str(p)!r}: {e.strerror}") from None
    try:
        tensors = load(data)
        header = _read_header(data)
    except (SafetensorError, ValueError, OverflowError) as e:
        raise ModelFileError(
            f"{str(p)!r} is not a readable se-nas model file (truncated or not safetensors: {e})"
        ) from None
    if header.get("format") != MODEL_FORMAT:
        raise ModelFileError(
            f"{str(p)!r} is a safetensors file but not an se-nas model: format is "
            f"{header.get('format')!r}, expected {MODEL_FORMAT!r}"
        )
    missing = [k for k in ("arch", "build", "meta", "sha256") if k not in header]
    if missing:
        raise ModelFileError(f"{str(p)!r}: header is missing {', '.join(missing)}")
    if verify:
        got = checksum(header, tensors)
        if got != header["sha256"]:
            raise ModelFileError(
                f"{str(p)!r}: checksum mismatch (file says {header['sha256'][:16]}..., contents give "
                f"{got[:16]}...): the file was modified or corrupted after it was written"
            )
    try:
        arch = Arch.from_json(header["arch"], where=f"{p}: arch")
        build = json.loads(header["build"])
        meta = json.loads(header["meta"])
        mf = ModelFile(arch, int(build["num_classes"]), str(build["stem"]), float(build["width"]), meta, tensors)
    except (ArchError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ModelFileError(f"{str(p)!r}: malformed header ({e})") from None
    # Check the header's size against the stored classifier before anything is built, so an edited
    # num_classes can't make load_model allocate a huge model.
    fc = tensors.get("fc.weight")
    if fc is None or fc.shape[0] != mf.num_classes:
        raise ModelFileError(f"{str(p)!r}: header says num_classes={mf.num_classes}, but the stored classifier "
                             f"'fc.weight' has shape {None if fc is None else tuple(fc.shape)}")
    return mf


def _read_header(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors byte string (8-byte little-endian length, then JSON)."""
    if len(data) < 8:
        raise ValueError(f"file is {len(data)} bytes long, shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError(f"header claims {n} bytes but only {len(data) - 8} follow")
    meta = json.loads(data[8 : 8 + n].decode("utf-8")).get("__metadata__") or {}
    return dict(meta)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model stored at ``path``: weights loaded, eval mode, on ``device``.

    The file's description is kept on the module as ``model.se_nas`` (a ``ModelFile`` without weights).
    """
    mf = read_model(path)
    model = mf.build().to(device)
    model.se_nas = ModelFile(mf.arch, mf.num_classes, mf.stem, mf.width, mf.meta)
    return model


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
        from .storage import open_study
        from .study import records

        name, _, num = ref.rpartition(":")
        if not num.isdigit():
            raise ValueError(f"trial reference must be STUDY:N with N a trial number, got {ref!r}")
        rec = pick_trial(records(open_study(name, root=root)), trial=int(num))
        return rec.arch, {"study": name, "trial": rec.number, "trial_accuracy": rec.accuracy}
    return resolve_arch(ref), {"source": ref}


def export_study(study_name: str, out: str | Path, *, root: str | Path = "trials", trial: int | None = None,
                 max_gflops: float | None = None, fmt: str = "senas", progress: bool = False, device=None,
                 storage: str | None = None) -> Path:
    """``se-nas export``: train the chosen design (``--best``: the study's confirmed choice, else its
    best per-design mean within the budget; or trial N) with the study's recipe and the seed of one of
    its runs (resuming from ``<root>/<study>/export/``), write the model file, and for ``fmt``
    onnx/torchscript the deployment file at ``out`` (the model file beside it)."""
    from .recipe import Recipe

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    from .confirm import export_choice
    from .storage import open_study

    study = open_study(study_name, storage=storage, root=root)
    if trial is not None:
        from .study import records

        rec = pick_trial(records(study), trial)
        arch, seed, tag, info = rec.arch, rec.seed, f"trial-{rec.number}", {"trial": rec.number,
                                                                            "search_accuracy": rec.accuracy}
    else:
        arch, seed, tag, info = export_choice(study, max_gflops)
    recipe = Recipe.from_dict(study.user_attrs.get("recipe") or {}, where=f"study {study_name!r} recipe")
    ckpt = Path(root) / study_name / "export" / f"{tag}.ckpt"
    model, result, data = train_arch(arch, recipe, seed=seed, checkpoint=ckpt, progress=progress, device=device)
    out = Path(out)
    model_path = out if fmt == "senas" else out.with_suffix(SUFFIXES["senas"])
    save_trained(model_path, model, arch, recipe, data, result, study=study_name, **info)
    if fmt != "senas":
        write_formats(model_path, fmt, out, recipe.image_size)
    return out
