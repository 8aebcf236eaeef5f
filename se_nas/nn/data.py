"""Training and validation data for trials, with no download.

``load_data(recipe)`` returns a ``DataBundle`` (train and validation ``Dataset``s yielding a float
tensor ``3 x S x S`` and an int label, the number of classes, a name). Sources:

- ``digits`` (the default): scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), which
  ship with scikit-learn. Scaled to [0, 1], normalised, repeated to 3 channels and kept in memory at
  8x8; each batch is resized to ``image_size`` (bilinear). Split: stratified 80/20 train/validation with the fixed
  seed 0, the same for every trial whatever its seed.
- ``cifar10`` / ``cifar100``: the standard python-format folder (``data_batch_1..5`` and
  ``test_batch``, or ``train`` and ``test`` for CIFAR-100). Validation is a stratified 10% hold-out of
  the training set (seed 0); the test set is never read, so a search cannot overfit it. Images stay
  32x32 uint8 in memory and are resized per batch (on the training device: a GPU trainer moves
  in-memory data there once, ``TensorData.to``). Training images get random-crop (pad 4 at 32x32)
  and horizontal-flip augmentation. The batches are pickles, which can run code when loaded: they
  are read with an unpickler that allows numpy arrays, dicts, lists, numbers and bytes only.
- ``imagefolder``: ``data_dir/train`` and ``data_dir/val`` (ImageNet layout) if both exist, else one
  folder of class subfolders with a stratified 10% hold-out (seed 0). Resize and centre crop to
  ``image_size`` (random-resized crop and flip for training).

``recipe.max_train_samples`` keeps a stratified subset of the training split. Splits are documented
in ``trials/README.md``.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from ..errors import SeNasError
from ..design.recipe import Recipe

SPLIT_SEED = 0  # the train/validation split never depends on the trial seed
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(SeNasError):
    """A dataset path that is missing or malformed: says what was expected and what was found."""


@dataclass(frozen=True)
class DataBundle:
    """The data of one recipe: what a trial trains and validates on."""

    train: Dataset
    val: Dataset
    num_classes: int
    name: str


class TensorData(Dataset):
    """Images held in memory as one tensor (N, 3, S, S), with optional crop/flip augmentation.

    ``batch(indices)`` returns a whole batch in one indexing operation; the trainer uses it to skip the
    per-sample DataLoader path for in-memory data. Images may be stored as uint8 (CIFAR: 4x less
    memory) and are converted, normalised and (with ``size``) resized per batch, so a large
    ``image_size`` never multiplies the memory held. ``to(device)`` moves the tensors to the training
    device, where that per-batch work then runs (the trainer does so on a GPU).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, augment: bool = False, pad: int = 4,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 size: int | None = None):
        if images.ndim != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"images must be (N, C, H, W) with N labels, got {tuple(images.shape)} and "
                             f"{tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()
        self.augment = augment
        self.pad = pad
        self.size = size
        self.mean = None if mean is None else torch.tensor(mean).view(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor(std).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.batch(torch.tensor([i]))
        return x[0], int(y[0])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> "TensorData":
        """This data with its tensors on ``device`` (itself if they are there already): the per-batch
        work (indexing, conversion, normalisation, resizing, augmentation) then runs on ``device``.
        The random numbers of the shuffle and the augmentation still come from torch's CPU generators,
        in the same order, so the batches are the CPU path's for the same seed (bitwise on the CPU)."""
        device = torch.device(device)
        if device == self.device:
            return self
        moved = TensorData.__new__(TensorData)
        moved.__dict__.update(self.__dict__)
        moved.images, moved.labels = self.images.to(device), self.labels.to(device)
        moved.mean = None if self.mean is None else self.mean.to(device)
        moved.std = None if self.std is None else self.std.to(device)
        return moved

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if idx.device != self.images.device:
            idx = idx.to(self.images.device, non_blocking=True)
        x = self.images[idx]
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        if self.size is not None and self.size != x.shape[-1]:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if self.augment:
            x = _crop_flip(x, self.pad)
        return x, self.labels[idx]


def _crop_flip(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-sample random crop from a zero-padded image and random horizontal flip, vectorised.

    Draws from torch's global CPU RNG, which the trainer seeds per epoch, so augmentation is
    reproducible; on another device only the draws are copied there, so its crops and flips are the
    CPU's.
    """
    n, c, h, w = x.shape
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), device="cpu").to(dev, non_blocking=True)
    ox = torch.randint(0, 2 * pad + 1, (n,), device="cpu").to(dev, non_blocking=True)
    rows = (oy[:, None] + torch.arange(h, device=dev))[:, :, None]  # (n, h, 1)
    cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, :]  # (n, 1, w)
    flip = (torch.rand(n, device="cpu") < 0.5).to(dev, non_blocking=True)
    cols = torch.where(flip[:, None, None], cols.flip(-1), cols)
    out = xp.permute(0, 2, 3, 1)[torch.arange(n, device=dev)[:, None, None], rows, cols]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


def stratified_split(labels: Sequence[int] | np.ndarray, fraction: float, seed: int = SPLIT_SEED
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out): ``round(fraction * n_c)`` samples of each class c held out.

    Within each class the order is a seeded permutation, so the split depends only on the labels and
    the seed. Both index arrays are sorted.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(fraction * len(idx)))
        held.append(idx[:k])
        kept.append(idx[k:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def stratified_take(labels: Sequence[int] | np.ndarray, n: int, seed: int = SPLIT_SEED) -> np.ndarray:
    """Sorted indices of ``n`` samples whose class proportions follow ``labels`` as closely as possible.

    Classes take turns (each class's samples in seeded random order, ranked by their relative position
    within the class), so any prefix is balanced.
    """
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels))
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        keys[idx] = (np.arange(len(idx)) + rng.random()) / len(idx)  # relative rank within the class
    return np.sort(np.argsort(keys, kind="stable")[:n])


def _cap(ds: Dataset, labels: np.ndarray, recipe: Recipe) -> Dataset:
    if recipe.max_train_samples is None or recipe.max_train_samples >= len(labels):
        return ds
    idx = stratified_take(labels, recipe.max_train_samples)
    if isinstance(ds, TensorData):
        return TensorData(ds.images[idx], ds.labels[idx], augment=ds.augment, pad=ds.pad,
                          mean=None if ds.mean is None else ds.mean.flatten().tolist(),
                          std=None if ds.std is None else ds.std.flatten().tolist(), size=ds.size)
    return Subset(ds, idx.tolist())


# --- digits -------------------------------------------------------------------------------------------
def _digits(recipe: Recipe) -> DataBundle:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).div_(16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    y = torch.tensor(d.target, dtype=torch.long)
    tr, va = stratified_split(d.target, 0.2)
    # Normalise with the training split's statistics (the validation split must not leak into them).
    mean, std = x[tr].mean(), x[tr].std()
    x = ((x - mean) / std).repeat(1, 3, 1, 1).contiguous()
    # Kept at 8x8 (1.4 MB) and resized per batch, so image_size 1024 does not hold 23 GB of copies.
    train = TensorData(x[tr], y[tr], size=recipe.image_size)
    return DataBundle(_cap(train, d.target[tr], recipe), TensorData(x[va], y[va], size=recipe.image_size), 10,
                      "digits")


# --- CIFAR ----------------------------------------------------------------------------------------------
_CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    label=b"labels", classes=10),
    "cifar100": dict(folder="cifar-100-python", train=["train"], label=b"fine_labels", classes=100),
}


def _cifar_root(name: str, data_dir: Path) -> Path:
    spec = _CIFAR[name]
    if not data_dir.exists():
        raise DataError(f"dataset {name}: data_dir {str(data_dir)!r} does not exist; expected the python-format "
                        f"folder {spec['folder']!r} (or the folder that holds it) with {', '.join(spec['train'])}")
    if not data_dir.is_dir():
        raise DataError(f"dataset {name}: data_dir {str(data_dir)!r} is a file; expected a folder")
    for root in (data_dir, data_dir / spec["folder"]):
        if all((root / f).is_file() for f in spec["train"]):
            return root
    found = sorted(p.name for p in data_dir.iterdir())[:10]
    raise DataError(f"dataset {name}: {str(data_dir)!r} is not a CIFAR python-format folder; expected files "
                    f"{', '.join(spec['train'])} (in it or in {spec['folder']}/), found: {found or 'nothing'}")


# What a CIFAR python-format batch may ask the unpickler to load: numpy's array reconstruction, under
# numpy 1's module names (the files were pickled by Python 2) and numpy 2's, and ``_codecs.encode``,
# which Python 3 uses for bytes at protocol 2. Dicts, lists, ints and bytes need no global.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that loads numpy arrays, dicts, lists, numbers and bytes, and refuses every other
    global: a pickle can call any function it names (a crafted ``data_batch_1`` ran code), and CIFAR's
    batches need none but numpy's array reconstruction."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"it asks to load {module[:60]}.{name[:60]}; a CIFAR batch holds only "
                                         "numpy arrays, lists, dicts and bytes, and nothing else is unpickled "
                                         "(it could run code)")
        if module.startswith("numpy.core."):  # numpy 2 moved numpy.core to numpy._core (the old name warns)
            try:
                return super().find_class("numpy._core." + module[len("numpy.core."):], name)
            except (ImportError, AttributeError):
                pass
        return super().find_class(module, name)


def _read_batch(path: Path, label_key: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise DataError(f"dataset {name}: {path} is not a CIFAR python-format batch (a pickled dict with "
                        f"b'data' and {label_key!r}): {type(e).__name__}: {e}") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(f"dataset {name}: {path}: expected b'data' of shape (N, 3072) and N labels, got "
                        f"{data.shape} and {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar(recipe: Recipe) -> DataBundle:
    name = recipe.dataset
    spec = _CIFAR[name]
    root = _cifar_root(name, Path(recipe.data_dir))
    parts = [_read_batch(root / f, spec["label"], name) for f in spec["train"]]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = np.concatenate([p[1] for p in parts])
    if labels.min() < 0 or labels.max() >= spec["classes"]:
        raise DataError(f"dataset {name}: labels must be in 0..{spec['classes'] - 1}, found "
                        f"{labels.min()}..{labels.max()}")
    tr, va = stratified_split(labels, 0.1)
    y = torch.from_numpy(labels)
    # Kept at 32x32 uint8 (150 MB for CIFAR-10); resized per batch to image_size.
    norm = dict(mean=CIFAR_MEAN, std=CIFAR_STD, size=recipe.image_size)
    pad = max(1, recipe.image_size // 8)  # 4 pixels at 32x32
    train = TensorData(images[tr], y[tr], augment=recipe.augment, pad=pad, **norm)
    val = TensorData(images[va], y[va], **norm)
    return DataBundle(_cap(train, labels[tr], recipe), val, spec["classes"], name)


# --- ImageFolder ------------------------------------------------------------------------------------------
def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "(not installed)"


def matching_torchvision(torch_version: str) -> str | None:
    """The torchvision release built for ``torch_version`` (torchvision's compatibility table: torch 2.N.x
    goes with torchvision 0.(N+15).x, e.g. 2.4.1 with 0.19.1), without a local tag such as ``+cu121``."""
    import re

    m = re.match(r"2\.(\d+)\.(\d+)", torch_version)
    return f"0.{int(m.group(1)) + 15}.{m.group(2)}" if m else None


def check_torchvision() -> None:
    """Import torchvision, turning a torch/torchvision pair that does not fit together (its import raises
    ``operator torchvision::nms does not exist``) or a missing torchvision into one line that names both
    versions and a matching pair to install."""
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError) as e:
        tv, want = _version("torchvision"), matching_torchvision(torch.__version__)
        table = "torchvision's compatibility table: https://github.com/pytorch/vision#installation"
        if tv == "(not installed)":
            raise DataError(f"dataset imagefolder needs torchvision, which is not installed; install the one built "
                            f"for torch {torch.__version__}" + (f": `pip install torchvision=={want}`" if want else "")
                            + f" ({table})") from None
        pair = f"`pip install torch=={torch.__version__.split('+')[0]} torchvision=={want}`" if want else "a listed pair"
        raise DataError(f"torch {torch.__version__} and torchvision {tv} do not work together (import torchvision: "
                        f"{str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); install a matching pair, "
                        f"e.g. {pair} ({table})") from None


def _image_folder(path: Path, transform, what: str):
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(path), transform=transform)
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"dataset imagefolder: {what} {str(path)!r} must hold one subfolder per class with "
                        f"images in it: {e}") from None


def _imagefolder(recipe: Recipe) -> DataBundle:
    check_torchvision()  # where torchvision is first needed
    from torchvision import transforms as T

    root = Path(recipe.data_dir)
    if not root.is_dir():
        raise DataError(f"dataset imagefolder: data_dir {str(root)!r} is not a folder; expected data_dir/train "
                        f"and data_dir/val with one subfolder per class, or one folder of class subfolders")
    s = recipe.image_size
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    resize = max(s, round(s * 256 / 224))  # the usual 256 -> 224 centre crop, scaled
    eval_tf = T.Compose([T.Resize(resize), T.CenterCrop(s), T.ToTensor(), norm])
    train_tf = (T.Compose([T.RandomResizedCrop(s), T.RandomHorizontalFlip(), T.ToTensor(), norm])
                if recipe.augment else eval_tf)
    if (root / "train").is_dir() and (root / "val").is_dir():
        train = _image_folder(root / "train", train_tf, "training folder")
        val = _image_folder(root / "val", eval_tf, "validation folder")
        if train.classes != val.classes:
            raise DataError(f"dataset imagefolder: {root}/train and {root}/val must have the same class "
                            f"subfolders, got {len(train.classes)} and {len(val.classes)} "
                            f"(first difference: {sorted(set(train.classes) ^ set(val.classes))[:3]})")
        labels = np.asarray(train.targets)
        classes = train.classes
    else:
        full_train = _image_folder(root, train_tf, "data_dir")
        full_val = _image_folder(root, eval_tf, "data_dir")
        tr, va = stratified_split(full_train.targets, 0.1)
        train, val = Subset(full_train, tr.tolist()), Subset(full_val, va.tolist())
        labels = np.asarray(full_train.targets)[tr]
        classes = full_train.classes
    return DataBundle(_cap(train, labels, recipe), val, len(classes), f"imagefolder:{root.name}")


# The loader of each dataset a recipe may name (``se_nas.design.recipe.DATASETS``, the same names).
LOADERS: dict[str, Callable[[Recipe], DataBundle]] = {
    "digits": _digits,
    "cifar10": _cifar,
    "cifar100": _cifar,
    "imagefolder": _imagefolder,
}


def load_data(recipe: Recipe) -> DataBundle:
    """The training and validation data that ``recipe`` names (see the module docstring for splits)."""
    return LOADERS[recipe.dataset](recipe)
