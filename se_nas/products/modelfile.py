"""The model file: one file that holds an architecture, its weights, how to feed it and where it came from.

A search keeps no weights (its candidates are cheap proxies), so what a user takes away is a model
file: a safetensors file whose header carries the ``Arch`` JSON, the build arguments (classes, stem,
width), what the model is (``role``: the search's proxy or the deployment-size model; ``trained``),
the input preprocessing (``Preprocess``: size, scaling, mean/std, resize), free metadata (cost,
accuracy, study, trial, recipe, versions) and a SHA-256 checksum over all of it and the weights.
``load_model`` rebuilds a ready ``nn.Module`` from the file alone, without the study.

What the file guards against, and what not:

- Code: loading only parses a JSON header and copies raw tensor bytes (safetensors), so a model
  file cannot run code, unlike a pickled ``torch.save`` file.
- Accidents: the checksum turns a truncated, corrupted or carelessly edited file into a clear error.
  It is unkeyed, so it is *not* proof of origin: whoever edits a file on purpose can recompute it.
- Forgery: ``save_model(..., key=K)`` adds an HMAC-SHA256 signature with a key the user holds;
  ``load_model(path, key=K)`` then refuses an unsigned file, a file signed with another key, and any
  change to the header or weights. Without a key a signed file loads like any other (its checksum is
  checked, its signature is not): only the key holder can tell whether it is authentic.
- Resource exhaustion: a header may not ask for more than ``MAX_CLASSES`` classes, a width outside
  the builder's range or an input above ``MAX_IMAGE_SIZE`` (``se_nas.products.preprocess``), and the
  model it describes may not have more parameters than the file stores values (counted analytically
  by ``se_nas.design.cost`` before any model is built), so ``load_model`` never builds a model larger
  than the weights in the file. Nothing is read beyond the header until the header is checked
  (``se_nas.products.safetensors_read``): its length is bounded, every tensor's dtype, shape and
  offsets must agree, the tensors must fill the rest of the file exactly, and they may not declare
  many more values than the architecture holds. Only then are the declared bytes read (a 2 GB file
  holding a 700 KB model is refused unread).

This module is the file format only; training and exporting a study's designs are ``se_nas.products.export``.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SeNasError
from ..design.arch import Arch, ArchError
from ..nn.build import build_model
from ..design.cost import count_cost
from ..design.files import atomic_write, check_output_file
from .preprocess import Preprocess
from .safetensors_read import read_declared, read_tensors

MODEL_FORMAT = "se-nas/model@1"
ROLES = {
    "proxy": "the search's proxy model (its recipe's input size, stem and width), "
             "not the deployment model the budget was checked on",
    "deployment": "the deployment-size model the budget was checked on",
}
MAX_CLASSES = 100_000  # ImageNet-21k has 21,841
MAX_ARCH_CHARS = 100_000  # an architecture's JSON is about 1 KB; this also bounds its nesting
MIN_KEY_BYTES = 16
_SIGNATURE = "hmac_sha256"
_UNSIGNED = ("sha256", _SIGNATURE)  # header fields the checksum does not cover


class ModelFileError(SeNasError):
    """A model file that is not one, is damaged, or does not match its own description."""


# --- the file's contents ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelFile:
    """The parsed contents of a model file. ``role`` and ``trained`` are None in files that do not
    state them; ``authenticated`` is True when the signature was checked against a key."""

    arch: Arch
    num_classes: int
    stem: str
    width: float
    meta: dict[str, Any] = field(default_factory=dict)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    role: str | None = None
    trained: bool | None = None
    preprocess: Preprocess | None = None
    authenticated: bool = False

    @property
    def build_kwargs(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "stem": self.stem, "width": self.width}

    def build(self) -> nn.Module:
        """The model with this file's weights, in eval mode, on the CPU."""
        model = build_model(self.arch, **self.build_kwargs)
        wrong = _mismatch(model.state_dict(), self.state_dict)
        if wrong:
            raise ModelFileError(f"weights do not fit architecture {self.arch.id} (num_classes={self.num_classes}, "
                                 f"stem={self.stem!r}, width={self.width:g}) stated in the header: {wrong}")
        model.load_state_dict(self.state_dict, strict=True)
        return model.eval()

    def describe(self) -> list[str]:
        """What the file holds, in a few lines (for the CLI)."""
        what = ROLES.get(self.role or "", "a model (the file does not say whether proxy or deployment-size)")
        state = {True: "trained", False: "UNTRAINED (initial weights only)", None: "training not stated"}[self.trained]
        lines = [f"holds {what}; {state}",
                 f"design {self.arch.id} ({self.arch.label})"]
        size = self.preprocess.image_size if self.preprocess else None
        cost = count_cost(self.arch, size or 224, self.num_classes, self.stem, self.width)
        lines.append(f"model: {self.num_classes} classes, {self.stem} stem, width {self.width:g}, "
                     f"{cost.mparams:.3f} M parameters" + (f", {cost.gflops:.4f} GFLOPs at {size}x{size}" if size else ""))
        m = self.meta
        if "design_accuracy" in m:  # export --best: the design's per-design figure, then this run's
            se = m.get("design_accuracy_sem")
            lines.append(f"the design chosen by study {m.get('study')!r} ({m.get('chosen_from', '')}): accuracy "
                         f"{m['design_accuracy']:.4f}" + (f" ± {se:.4f}" if isinstance(se, float) and se == se else "")
                         + f" over {m.get('design_seeds')} seeds; this file is "
                         + (f"its run with seed {m.get('seed')}" if self.trained is not False else
                            f"not one of those runs: initial weights only (seed {m.get('seed')}), never trained"))
        elif "trial" in m:
            lines.append(f"from trial {m['trial']} of study {m.get('study')!r}"
                         + (f" (its proxy's accuracy in the search {m['search_accuracy']:.4f})" if "search_accuracy" in m else ""))
        if "accuracy" in m:
            lines.append(f"validation accuracy {m['accuracy']:.4f} ({m.get('dataset', 'its recipe')})"
                         + (" (one seed)" if "design_accuracy" in m else ""))
        lines.append("input: " + (self.preprocess.describe() + " (model.se_nas.preprocess(images))"
                                  if self.preprocess else "preprocessing not stored"))
        return lines


# --- checksum and signature ------------------------------------------------------------------------------
def _tensor_bytes(t: torch.Tensor) -> bytes:
    # viewing as bytes works for every dtype (numpy has no bfloat16)
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def checksum(header: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the header fields (except the checksum and signature) and every tensor's name,
    dtype, shape and bytes, in sorted order, so any change to the description or the weights shows.
    Unkeyed: it detects accidents, not deliberate edits (see ``signature``)."""
    h = hashlib.sha256()
    for k in sorted(header):
        if k not in _UNSIGNED:
            h.update(f"{k}={header[k]}\n".encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{str(t.dtype)}:{tuple(t.shape)}\n".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _key_bytes(key: bytes | str) -> bytes:
    k = key.encode() if isinstance(key, str) else key
    if not isinstance(k, bytes) or len(k) < MIN_KEY_BYTES:
        shown = f"{len(k)} bytes" if isinstance(k, bytes) else type(key).__name__
        raise ModelFileError(f"a signing key must be bytes or str of at least {MIN_KEY_BYTES} bytes, got {shown}")
    return k


def signature(digest: str, key: bytes | str) -> str:
    """HMAC-SHA256 with ``key`` over a file's checksum (which covers its header and weights)."""
    return hmac.new(_key_bytes(key), f"{MODEL_FORMAT} signature\n{digest}".encode(), hashlib.sha256).hexdigest()


def read_key(path: str | Path) -> bytes:
    """A signing key from a file (surrounding whitespace stripped), e.g. one made with
    ``head -c 32 /dev/urandom | base64 > model.key``."""
    p = Path(path)
    try:
        key = p.read_bytes().strip()
    except OSError as e:
        raise FileNotFoundError(f"cannot read key file {str(p)!r}: {e.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise ModelFileError(f"key file {str(p)!r} holds {len(key)} bytes; a signing key needs at least {MIN_KEY_BYTES}")
    return key


# --- writing -------------------------------------------------------------------------------------------
def _mismatch(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> str | None:
    """How ``tensors`` differ from the state dict ``expected`` (names and shapes), or None."""
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    shapes = [f"{k} is {tuple(tensors[k].shape)}, expected {tuple(expected[k].shape)}"
              for k in sorted(set(expected) & set(tensors)) if expected[k].shape != tensors[k].shape]
    parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + \
            ([f"unexpected {', '.join(extra[:3])}"] if extra else []) + shapes[:3]
    return "; ".join(parts) or None


def _shapes(arch: Arch, num_classes: int, stem: str, width: float) -> dict[str, torch.Tensor]:
    # On the meta device: shapes only, no memory (though its first use imports sympy: ~3 s, ~180 MB).
    with torch.device("meta"):
        return build_model(arch, num_classes, stem, width).state_dict()


def save_model(
    path: str | Path,
    model: nn.Module,
    arch: Arch,
    *,
    num_classes: int,
    stem: str = "imagenet",
    width: float = 1.0,
    meta: dict[str, Any] | None = None,
    role: str | None = None,
    trained: bool | None = None,
    preprocess: Preprocess | None = None,
    key: bytes | str | None = None,
) -> Path:
    """Write ``model`` (built by ``build_model(arch, num_classes, stem, width)``) to ``path``.

    ``role`` is "proxy" or "deployment", ``trained`` whether the weights were trained, ``preprocess``
    how raw images become its input; ``meta`` is any JSON-serialisable dict (accuracy, cost, study,
    trial, recipe, ...), to which the se-nas and torch versions are added. With ``key`` the file is
    signed (HMAC-SHA256). Written atomically, with the usual file mode. Returns the path written.
    """
    from safetensors.torch import save

    from .. import __version__

    if not isinstance(arch, Arch):
        raise TypeError(f"arch must be an se_nas.Arch, got {type(arch).__name__}")
    if role is not None and role not in ROLES:
        raise ModelFileError(f"unknown model role {role!r}; allowed: {', '.join(ROLES)}")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    wrong = _mismatch(_shapes(arch, num_classes, stem, width), tensors)
    if wrong:
        raise ModelFileError(f"model does not match architecture {arch.id} built with num_classes={num_classes}, "
                         f"stem={stem!r}, width={width}: {wrong}")
    info = {**(meta or {}), "se_nas": __version__, "torch": torch.__version__}
    header = {
        "format": MODEL_FORMAT,
        "arch": arch.to_json(),
        "build": json.dumps({"num_classes": num_classes, "stem": stem, "width": float(width)}, sort_keys=True),
        "meta": json.dumps(info, sort_keys=True, default=str),
    }
    if role is not None:
        header["role"] = role
    if trained is not None:
        header["trained"] = json.dumps(bool(trained))
    if preprocess is not None:
        header["preprocess"] = json.dumps(preprocess.to_dict(), sort_keys=True)
    header["sha256"] = checksum(header, tensors)
    if key is not None:
        header[_SIGNATURE] = signature(header["sha256"], key)
    path = check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Never a half-written model file under the real name, nor one written through a planted link;
    # the mode honours the umask (safetensors' save_file writes 0600).
    atomic_write(path, save(tensors, metadata=header))
    return path


# --- reading -------------------------------------------------------------------------------------------
def _bounded_build(build: Any, where: str) -> tuple[int, str, float]:
    """(num_classes, stem, width) from a header's ``build``, within the limits a file may ask for."""
    if not isinstance(build, dict) or {"num_classes", "stem", "width"} - set(build):
        raise ModelFileError(f"{where}: header build must hold num_classes, stem and width, got {build!r:.200}")
    n = build["num_classes"]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CLASSES:
        raise ModelFileError(f"{where}: header build num_classes={n!r} is outside the allowed 1..{MAX_CLASSES}")
    return n, build["stem"], build["width"]


def read_model(path: str | Path, verify: bool = True, key: bytes | str | None = None) -> ModelFile:
    """Parse and check a model file; raises ``ModelFileError`` naming the file and what is wrong.

    Checks, in order: the header's format and bounds, the checksum (``verify``), the signature (when
    ``key`` is given: an unsigned file or a bad signature is refused), and that the model the header
    describes has no more parameters than the file stores (analytically, nothing built), so nothing
    is allocated for a model the file cannot hold. ``ModelFile.build`` checks the exact shapes.
    """
    p = Path(path)
    where = repr(str(p))
    try:
        with open(p, "rb") as f:
            try:
                header, declared, head, end = read_declared(f, os.fstat(f.fileno()).st_size)
            except (ValueError, RecursionError) as e:
                raise ModelFileError(f"{where} is not a readable se-nas model file (truncated or not safetensors: "
                                     f"{str(e)[:200]})") from None
    except OSError as e:
        raise FileNotFoundError(f"cannot read model file {where}: {e.strerror}") from None
    if header.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{where} is not an se-nas model: format is {str(header.get('format'))[:80]!r}, "
                             f"expected {MODEL_FORMAT!r}")
    missing = [k for k in ("arch", "build", "meta", "sha256") if k not in header]
    if missing:
        raise ModelFileError(f"{where}: header is missing {', '.join(missing)}")
    if len(header["arch"]) > MAX_ARCH_CHARS:
        raise ModelFileError(f"{where}: header arch is {len(header['arch'])} characters, more than the "
                             f"allowed {MAX_ARCH_CHARS}")
    role = header.get("role")
    if role is not None and role not in ROLES:
        raise ModelFileError(f"{where}: header role={role[:80]!r}; allowed: {', '.join(ROLES)}")
    try:
        arch = Arch.from_json(header["arch"], where=f"{p}: arch")
        num_classes, stem, width = _bounded_build(json.loads(header["build"]), where)
        meta = json.loads(header["meta"])
        if not isinstance(meta, dict):
            raise TypeError(f"meta must be a JSON object, got {type(meta).__name__}")
        trained = json.loads(header["trained"]) if "trained" in header else None
        pre = Preprocess.from_dict(json.loads(header["preprocess"])) if "preprocess" in header else None
        asked = count_cost(arch, 224, num_classes, stem, width).params  # also checks stem and 0 < width <= 4
    except (ArchError, ValueError, TypeError, RecursionError) as e:
        if isinstance(e, ModelFileError):
            raise
        raise ModelFileError(f"{where}: malformed header ({str(e)[:300]})") from None
    # A model stores its parameters and about as many BatchNorm statistics at most: a file declaring
    # far more values than its architecture holds is refused before its tensors are copied.
    if declared > 2 * asked + 100_000:
        raise ModelFileError(f"{where}: the file declares {declared:,} tensor values but its architecture "
                             f"{arch.id} holds {asked:,} parameters (at most {2 * asked + 100_000:,} values with "
                             f"BatchNorm statistics); refusing to read them")
    tensors = _tensors(p, head, end, where)
    _authenticate(header, tensors, where, verify, key)
    # The model the header describes must fit in the weights the file stores; counted analytically
    # (no model built), so a crafted header cannot make load_model allocate more than the file holds.
    stored = sum(t.numel() for t in tensors.values())
    if asked > stored:
        raise ModelFileError(f"{where}: header asks for a model of {asked:,} parameters (architecture {arch.id}, "
                             f"num_classes={num_classes}, stem={stem!r}, width={width}) but the file stores "
                             f"{stored:,} values; refusing to build it")
    return ModelFile(arch, num_classes, stem, float(width), meta, tensors, role,
                     trained if isinstance(trained, bool) else None, pre, authenticated=key is not None)


def _tensors(p: Path, head: int, end: int, where: str) -> dict[str, torch.Tensor]:
    """The tensors stored between ``head`` and ``end`` (their sizes already bounded by the header)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(read_tensors(p, head, end))
    except OSError as e:
        raise ModelFileError(f"cannot read model file {where}: {e.strerror}") from None
    except (SafetensorError, ValueError, OverflowError) as e:
        raise ModelFileError(f"{where} is not a readable se-nas model file (truncated or not safetensors: {e})") from None


def _authenticate(header: dict, tensors: dict, where: str, verify: bool, key: bytes | str | None) -> None:
    """The checksum (``verify``) and, when ``key`` is given, the signature: refused in one line each."""
    digest = checksum(header, tensors) if verify or key is not None else header["sha256"]
    if verify and digest != header["sha256"]:
        raise ModelFileError(f"{where}: checksum mismatch (file says {header['sha256'][:16]}..., contents give "
                             f"{digest[:16]}...): the file was modified or corrupted after it was written")
    if key is not None:
        if _SIGNATURE not in header:
            raise ModelFileError(f"{where} is not signed, and a key was given: refusing an unauthenticated file")
        if not hmac.compare_digest(signature(digest, key), str(header[_SIGNATURE])):
            raise ModelFileError(f"{where}: signature does not match: the file was changed after it was signed, "
                                 "or signed with another key")


def load_model(path: str | Path, device: str | torch.device = "cpu", key: bytes | str | None = None) -> nn.Module:
    """Rebuild the model stored at ``path``: weights loaded, eval mode, on ``device``.

    With ``key``, the file must carry a valid signature made with it (see ``read_model``). The file's
    description is kept on the module as ``model.se_nas`` (a ``ModelFile`` without weights);
    ``model.se_nas.preprocess(images)`` turns raw images into the model's input.
    """
    from dataclasses import replace

    mf = read_model(path, key=key)
    try:
        model = mf.build().to(device)
    except ModelFileError as e:
        raise ModelFileError(f"{str(path)!r}: {e}") from None
    model.se_nas = replace(mf, state_dict={})
    return model
