"""Trial recipes: how a candidate architecture is trained, as a validated value and a YAML file.

A ``Recipe`` says which data, which proxy of the deployment model (input size, stem, width
multiplier) and which optimisation (epochs, batch size, optimizer, learning-rate schedule, seed,
device, AMP). It is frozen and validated on construction, so a bad value fails before any model is
built. Recipes live in YAML files that users copy and edit; the built-in ones are in the repository's
``trials/`` folder (``digits`` is the default of ``se-nas search``; ``tiny`` is for tests; ``cifar10``
and ``imagenet`` are for users with data and GPUs). See ``trials/README.md``.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import yaml

if TYPE_CHECKING:  # annotations only: this floor imports no torch
    import torch

from ..errors import SeNasError
from .arch import read_text
from .builtin import RECIPE_DIR
from .backbones import STEMS
from .untrusted import MAX_YAML_BYTES, check_size, load_yaml, preview

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# Upper bounds that catch a typo before it allocates: image_size 100000 would ask for terabytes.
MAX_IMAGE_SIZE = 1024  # ImageNet models train at 224-600
MAX_BATCH_SIZE = 65536  # per process
MAX_EPOCHS = 10000
MAX_SEED = 2**63 - 1  # torch's generators take 64-bit seeds
# amp's explicit choices (true picks bf16 where the GPU has it natively, else fp16); nn.train.AMP
# maps them to dtypes, and fp16 trains with a GradScaler
AMP_DTYPES = ("bf16", "fp16")


# --- optimizers and learning-rate schedules: a name -> implementation table each ----------------------
# torch is imported where an optimizer is made, not at import: this floor is read without torch.
def _sgd(params: Iterable[torch.nn.Parameter], r: Recipe) -> torch.optim.Optimizer:
    import torch

    return torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)


def _adamw(params: Iterable[torch.nn.Parameter], r: Recipe) -> torch.optim.Optimizer:
    import torch

    return torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay)


OPTIMIZERS: dict[str, Callable[[Iterable[torch.nn.Parameter], Recipe], torch.optim.Optimizer]] = {
    "sgd": _sgd,  # with momentum, Nesterov off
    "adamw": _adamw,
}


# A schedule maps (recipe, step, warm-up steps, steps per epoch) to the lr multiplier after warm-up.
def _cosine(r: Recipe, step: int, warm: int, steps_per_epoch: int) -> float:
    t = (step - warm) / max(1, r.epochs * steps_per_epoch - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))  # to 0 at the last step


def _step(r: Recipe, step: int, warm: int, steps_per_epoch: int) -> float:
    return r.step_gamma ** ((step // steps_per_epoch) // r.step_epochs)


def _constant(r: Recipe, step: int, warm: int, steps_per_epoch: int) -> float:
    return 1.0


SCHEDULES: dict[str, Callable[[Recipe, int, int, int], float]] = {
    "cosine": _cosine,
    "step": _step,
    "constant": _constant,
}


# The datasets a recipe may name. Their loaders are ``se_nas.nn.data.LOADERS``, one per name here
# (tests/test_recipe.py holds the two tables to the same names).
DATASETS: dict[str, str] = {
    "digits": "scikit-learn's handwritten digits, built in (no download)",
    "cifar10": "CIFAR-10 in its python format, from data_dir",
    "cifar100": "CIFAR-100 in its python format, from data_dir",
    "imagefolder": "an ImageFolder tree (data_dir/train, data_dir/val)",
}


class RecipeError(SeNasError):
    """A recipe that breaks a rule; the message names the file (if any), the key and the value."""


def builtin_recipes() -> list[str]:
    """Names ``load_recipe`` resolves without a path: the YAML files in the repository's trials/."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


@dataclass(frozen=True)
class Recipe:
    """How one trial trains its candidate.

    dataset:           a name of ``DATASETS``: "digits" (built in, no download),
                       "cifar10", "cifar100", "imagefolder".
    data_dir:          folder of the dataset (not used by "digits"); ``~`` is expanded.
    image_size:        side of the square training input in pixels (1..1024).
    stem, width:       the proxy model: ``build_model(arch, classes, stem, width)``.
    epochs:            epochs per trial (1..10000); ``rungs`` are the epochs after which early
                       stopping may stop it.
    batch_size:        training batch size, 1..65536 (evaluation uses twice as much).
    optimizer:         a name of ``OPTIMIZERS``: "sgd" (with ``momentum``, Nesterov off) or "adamw".
    lr:                peak learning rate, reached after ``warmup_epochs`` of linear warm-up.
    schedule:          a name of ``SCHEDULES``: "cosine" (to 0 at the last step), "step" (times
                       ``step_gamma`` every ``step_epochs``) or "constant"; applied per step.
    weight_decay:      applied to every parameter (the paper's ResNet recipe does the same).
    label_smoothing:   cross-entropy label smoothing in [0, 1).
    seed:              data order, augmentation and (if the caller seeds before building) the init.
    num_workers:       DataLoader worker processes for file-backed data (in-memory data needs none).
    threads:           CPU threads for torch ops in this process (None: PyTorch's default, one per
                       core). Set it to cores / parallel trials: oversubscribed CPU threads spin-wait
                       and can make training 10-50x slower.
    device:            "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:N", "mps".
    amp, channels_last: mixed precision and NHWC memory layout; both take effect on CUDA only. amp:
                       true (bf16 where the GPU has it natively, else fp16 with loss scaling),
                       false, or one of ``AMP_DTYPES`` to choose.
    augment:           random-crop and flip augmentation of the training set (CIFAR, ImageFolder).
    max_train_samples: keep a stratified subset of this many training samples (None keeps all).
    """

    dataset: str = "digits"
    data_dir: str | None = None
    image_size: int = 16
    stem: str = "small"
    width: float = 0.125
    epochs: int = 5
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.5
    step_epochs: int = 30
    step_gamma: float = 0.1
    label_smoothing: float = 0.0
    seed: int = 0
    num_workers: int = 0
    threads: int | None = None
    device: str = "auto"
    amp: bool | str = True
    channels_last: bool = True
    augment: bool = True
    rungs: tuple[int, ...] = ()
    max_train_samples: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _RULES[f.name](f.name, getattr(self, f.name)))
        # Rules between fields.
        if self.dataset != "digits" and self.data_dir is None:
            raise RecipeError(f"data_dir is required for dataset {self.dataset!r} (the folder with its files)")
        if self.warmup_epochs >= self.epochs:
            raise RecipeError(
                f"warmup_epochs must be less than epochs ({self.epochs}), got warmup_epochs={self.warmup_epochs!r}"
            )
        bad = [r for r in self.rungs if r >= self.epochs]
        if bad:
            raise RecipeError(
                f"rungs must be epochs before the last one (1..{self.epochs - 1}), got rungs={preview(list(self.rungs))}"
            )

    @property
    def fidelity(self) -> str:
        """What a figure trained under this recipe is measured on, in words a finding names:
        ``digits 16 px, width 0.125, 5 epochs``."""
        subset = f" ({self.max_train_samples} training images)" if self.max_train_samples else ""
        return (f"{self.dataset}{subset} {self.image_size} px, width {self.width:g}, "
                f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-friendly values (rungs as a list)."""
        d = asdict(self)
        d["rungs"] = list(self.rungs)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "recipe") -> Recipe:
        """A recipe from a mapping; missing keys take the defaults. Errors start with ``where``."""
        if not isinstance(d, Mapping):
            raise RecipeError(f"{where}: a recipe must be a mapping of keys to values, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        for key in d:
            if key not in known:
                raise RecipeError(f"{where}: unknown key {preview(key)}; allowed keys: {', '.join(known)}")
        try:
            return cls(**d)
        except RecipeError as e:
            raise RecipeError(f"{where}: {e}") from None


def _fail(key: str, value: Any, rule: str) -> RecipeError:
    return RecipeError(f"{key} must be {rule}, got {key}={preview(value)}")


def _int(key: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise _fail(key, value, f"an integer >= {low}" if high is None else f"an integer in {low}..{high}")
    return value


def _float(key: str, value: Any, low: float, high: float, *, low_open: bool = False, high_open: bool = True) -> float:
    v = value
    if isinstance(v, str):
        # PyYAML reads "1e-4" (no dot) as a string; accept it as the number the user meant.
        try:
            v = float(v)
        except ValueError:
            raise _fail(key, value, "a number") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _fail(key, value, "a finite number")
    ok_low = v > low if low_open else v >= low
    ok_high = v < high if high_open else v <= high
    if not (ok_low and ok_high):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise _fail(key, value, f"a number in {interval}")
    return float(v)


def _choice(key: str, value: Any, allowed: Iterable[str]) -> str:
    """One of the names of a table (or a tuple of names)."""
    if not isinstance(value, str) or value not in allowed:
        raise RecipeError(f"unknown {key} {preview(value)}; allowed: {', '.join(allowed)}")
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(key, value, "true or false")
    return value


def _amp(key: str, value: Any) -> bool | str:
    if isinstance(value, bool) or (isinstance(value, str) and value in AMP_DTYPES):
        return value
    raise _fail(key, value, f"true, false, {' or '.join(AMP_DTYPES)}")


def _folder(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, Path)) or not str(value):
        raise _fail(key, value, "a folder path or null")
    return str(Path(value).expanduser())


def _device(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _DEVICE_RE.match(value):
        raise _fail(key, value, "one of auto, cpu, cuda, cuda:N, mps")
    return value


def _rungs(key: str, value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise _fail(key, value, "a list of increasing epoch numbers")
    rungs = tuple(_int(key, r, 1) for r in value)
    if any(b <= a for a, b in zip(rungs, rungs[1:])):
        raise _fail(key, list(value), "a list of strictly increasing epoch numbers")
    return rungs


def _optional(rule: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda key, value: None if value is None else rule(key, value)


# One rule per field: it returns the validated (and normalised) value or raises a RecipeError.
_RULES: dict[str, Callable[[str, Any], Any]] = {
    "dataset": lambda k, v: _choice(k, v, DATASETS),
    "data_dir": _folder,
    "image_size": lambda k, v: _int(k, v, 1, MAX_IMAGE_SIZE),
    "stem": lambda k, v: _choice(k, v, STEMS),
    "width": lambda k, v: _float(k, v, 0, 4, low_open=True, high_open=False),
    "epochs": lambda k, v: _int(k, v, 1, MAX_EPOCHS),
    "batch_size": lambda k, v: _int(k, v, 1, MAX_BATCH_SIZE),
    "optimizer": lambda k, v: _choice(k, v, OPTIMIZERS),
    "lr": lambda k, v: _float(k, v, 0, 10, low_open=True, high_open=False),
    "momentum": lambda k, v: _float(k, v, 0, 1),
    "weight_decay": lambda k, v: _float(k, v, 0, 1),
    "schedule": lambda k, v: _choice(k, v, SCHEDULES),
    "warmup_epochs": lambda k, v: _float(k, v, 0, math.inf),
    "step_epochs": lambda k, v: _int(k, v, 1, MAX_EPOCHS),
    "step_gamma": lambda k, v: _float(k, v, 0, 1, low_open=True, high_open=False),
    "label_smoothing": lambda k, v: _float(k, v, 0, 1),
    "seed": lambda k, v: _int(k, v, 0, MAX_SEED),
    "num_workers": lambda k, v: _int(k, v, 0),
    "threads": _optional(lambda k, v: _int(k, v, 1)),
    "device": _device,
    "amp": _amp,
    "channels_last": _bool,
    "augment": _bool,
    "rungs": _rungs,
    "max_train_samples": _optional(lambda k, v: _int(k, v, 1)),
}


def load_recipe(name_or_path: str | Path | Recipe) -> Recipe:
    """A built-in recipe by name (``digits``, ``tiny``, ``cifar10``, ``imagenet``) or a YAML file."""
    if isinstance(name_or_path, Recipe):
        return name_or_path
    text = str(name_or_path)
    builtin = builtin_recipes()
    if isinstance(name_or_path, str) and text in builtin:
        path = RECIPE_DIR / f"{text}.yaml"
    else:
        path = Path(text).expanduser()
    if not path.exists():
        raise RecipeError(
            f"recipe {text!r}: no such file; give a YAML file or a built-in recipe name: {', '.join(builtin)}"
        )
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.yaml"))[:8]
        raise RecipeError(f"recipe {text!r} is a directory; give one YAML file (in it: {', '.join(inside) or 'none'}) "
                          f"or a built-in recipe name: {', '.join(builtin)}")
    check_size(path, "recipe", RecipeError, MAX_YAML_BYTES)
    content = read_text(path, "recipe", RecipeError)
    try:
        data = load_yaml(content, str(path), RecipeError)
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}:{_yaml_problem(e, content)}") from None
    except RecursionError:
        raise RecipeError(f"{path}: YAML nested too deeply; a recipe is one mapping of keys to values") from None
    if data is None:  # as an empty space file is: an empty recipe is more likely a mistake than a wish
        raise RecipeError(f"{path}: the file is empty; a recipe is a mapping of keys to values (missing keys take "
                          f"the defaults: `se-nas recipes tiny` prints one to start from)")
    return Recipe.from_dict(data, where=str(path))


def _yaml_problem(e: yaml.YAMLError, text: str) -> str:
    """``LINE:COLUMN: not valid YAML: PROBLEM``, the parser's error in one line (it prints up to 8)."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        line, column = e.problem_mark.line + 1, e.problem_mark.column + 1
        problem = e.problem or e.context
    elif isinstance(e, yaml.reader.ReaderError):  # a character YAML does not allow (binary content)
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        problem = str(e).splitlines()[0]
    else:
        return f" not valid YAML: {str(e).splitlines()[0]}"
    return f"{line}:{column}: not valid YAML: {problem}"
