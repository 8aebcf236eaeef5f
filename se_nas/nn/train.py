"""The trainer: trains one candidate under a ``Recipe`` and returns its validation accuracy per epoch.

SGD with momentum and a per-step cosine schedule with linear warm-up by default (AdamW, step and
constant schedules optional), label smoothing, mixed precision (bf16 autocast where the GPU supports
it, else fp16 with a GradScaler) and channels_last on CUDA, DataLoader workers for file-backed data,
and a seed that makes a trial reproducible (same seed, same device -> the same history on CPU).

A NaN/inf loss, a diverged one (a window of steps averaging ``DIVERGED`` times the loss of a uniform
guess, ln C, or more: the model is confidently wrong) or running out of memory raises
``TrainingFailed`` with the reason, so a search can record the failure and go on. Accuracy at chance
is no such sign on its own: healthy proxies are often at chance after their first epoch.
``on_epoch(epoch, val_accuracy)`` is called after every epoch's validation and may stop the run early
(the search's rung rule); ``on_progress(Progress)`` after every step, for a live status line. With
``checkpoint=path`` the full state is written atomically after every epoch and a rerun resumes from
it, ending with the same history as an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import gc
import math
import random
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .data import DataBundle, DataError, TensorData
from ..errors import UsageError
from ..design.recipe import OPTIMIZERS, SCHEDULES, Recipe

NAN_CHECK_EVERY = 32  # steps between loss checks: one host sync per check instead of one per step
# A window of steps whose mean loss is this many times that of a uniform guess (ln C) has diverged.
# Healthy training of the built-in digits and tiny recipes stays below 1.4x (measured on presets and
# random designs); lr 10 reaches 20x to 1e12x within two epochs while staying finite.
DIVERGED = 10.0


class TrainingFailed(RuntimeError):
    """A trial that cannot finish (non-finite or diverged loss, out of memory); ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Progress:
    """Where a training run is, as passed to ``train(on_progress=...)``; ``str()`` is a short status line.

    ``on_progress`` is called after every optimisation step and once more after each epoch's validation
    (then ``val_accuracy`` is set). ``loss`` is the mean training loss of the latest checked window of
    steps (every ``NAN_CHECK_EVERY`` steps and at the end of each epoch; None before the first check),
    so reporting it costs no extra device sync.
    """

    epoch: int  # 1-based
    epochs: int
    step: int  # steps done in this epoch, 1..steps
    steps: int  # steps per epoch
    loss: float | None
    val_accuracy: float | None = None

    def __str__(self) -> str:
        text = f"epoch {self.epoch}/{self.epochs} step {self.step}/{self.steps}"
        if self.loss is not None:
            text += f" loss {self.loss:.3g}"
        if self.val_accuracy is not None:
            text += f" val {self.val_accuracy:.3f}"
        return text


@dataclass(frozen=True)
class TrainResult:
    accuracy: float  # validation top-1 in [0, 1] after the last epoch trained
    history: tuple[float, ...]  # validation accuracy after each epoch
    epochs: int  # epochs trained (fewer than recipe.epochs if stopped early)
    seconds: float  # wall time spent training and validating (summed over resumed runs)
    stopped_early: bool


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA if available, then Apple MPS, then CPU. Other names must be usable here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r} was asked for but CUDA is not available here; use device: auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"device {name!r} was asked for but MPS is not available here; use device: auto or cpu")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). Call before ``build_model`` to fix the init too."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    # Each epoch's data order and augmentation depend only on (seed, epoch), so a resumed run
    # replays exactly what an uninterrupted one would have seen.
    return (seed * 1_000_003 + epoch) % 2**63


def lr_factor(step: int, recipe: Recipe, steps_per_epoch: int) -> float:
    """Learning-rate multiplier at optimisation step ``step`` (0-based): linear warm-up, then the schedule."""
    warm = int(round(recipe.warmup_epochs * steps_per_epoch))
    if step < warm:
        return (step + 1) / warm
    return SCHEDULES[recipe.schedule](recipe, step, warm, steps_per_epoch)


def data_batches(ds: Dataset, batch_size: int, *, shuffle: bool, seed: int, drop_last: bool,
                 num_workers: int, pin: bool) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """``ds``'s (images, labels) batches in the order a training run with ``seed`` sees them."""
    g = torch.Generator().manual_seed(seed)
    if isinstance(ds, TensorData):  # in memory: one indexing op per batch, no per-sample collation
        return _tensor_batches(ds, batch_size, shuffle, g, drop_last)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, drop_last=drop_last,
                      num_workers=num_workers, pin_memory=pin, persistent_workers=False)


def _tensor_batches(ds: TensorData, batch_size: int, shuffle: bool, g: torch.Generator, drop_last: bool
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = len(ds)
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        yield ds.batch(order[i:i + batch_size])


def _steps_per_epoch(n: int, batch_size: int) -> tuple[int, bool]:
    # Drop the last partial batch when there is at least one full one: a batch of 1 breaks BatchNorm
    # at 1x1 spatial size, and equal batches keep the per-step schedule exact.
    if n >= batch_size:
        return n // batch_size, True
    return 1, False


AMP: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}  # one per recipe.AMP_DTYPES


def _amp_dtype(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    if recipe.amp is False or device.type != "cuda":
        return None
    if recipe.amp in AMP:  # chosen in the recipe
        return AMP[recipe.amp]
    # native bf16 only (Ampere and newer); emulated bf16 on older GPUs is slow: fp16 + GradScaler there
    with torch.cuda.device(device):
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str, *,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> float:
    """Top-1 accuracy of ``model`` over the ``(images, labels)`` batches of ``loader``."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        correct += (logits.argmax(1) == y).sum()
        total += y.numel()
    model.train(was_training)
    if total == 0:
        raise ValueError("evaluate: the validation data is empty")
    return correct.item() / total


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def _save_atomic(state: dict, path: Path) -> None:
    from ..design.files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(state, f))  # readers see the old or the new checkpoint, never half of one


# Recipe keys that do not change what is computed: a run may resume on another device or thread count.
_RUNTIME_KEYS = ("device", "threads", "num_workers", "rungs")


def _fingerprint(model: nn.Module, recipe: Recipe) -> dict:
    # A checkpoint only resumes the same model under the same training recipe.
    shapes = [list(p.shape) for p in model.state_dict().values()]
    training = {k: v for k, v in recipe.to_dict().items() if k not in _RUNTIME_KEYS}
    return {"recipe": training, "shapes": shapes}


def _load_checkpoint(path: Path, fingerprint: dict, device: torch.device) -> dict | None:
    """The saved state if it belongs to this model and recipe; None (with a warning) otherwise."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file: train from scratch, say why
        warnings.warn(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); starting from scratch")
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        warnings.warn(f"checkpoint {path} belongs to another model or recipe; starting from scratch")
        return None
    return state


def train(
    model: nn.Module,
    recipe: Recipe,
    data: DataBundle,
    *,
    device: torch.device | str | None = None,
    on_epoch: Callable[[int, float], bool] | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    step_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor, nn.Module], torch.Tensor] | None = None,
    max_grad_norm: float | None = None,
    data_on_device: bool | None = None,
) -> TrainResult:
    """Train ``model`` on ``data.train`` under ``recipe``; validate on ``data.val`` after every epoch.

    ``device`` overrides ``recipe.device``. ``on_epoch(epoch, val_accuracy)`` (epoch 1-based) returns
    True to stop early. ``checkpoint``: a file to save to after every epoch and resume from if present.
    ``progress`` shows a tqdm bar per epoch on stderr; ``on_progress(Progress)`` gets the same updates
    as values (after every step and every validation), e.g. for a caller's own live status line.
    ``step_loss(model, x, y, loss_fn)`` computes a step's loss instead of ``loss_fn(model(x), y)``
    (a supernet samples its path(s) there); it may draw from torch's RNG, reseeded every epoch.
    ``max_grad_norm`` clips each step's gradient norm, and a step whose gradients are not finite is
    skipped (no update) instead of writing NaN into the weights (the supernet's training uses it).
    ``data_on_device``: move in-memory data (``TensorData``: digits, CIFAR) to the training device
    once, so each batch's indexing, conversion, resizing and augmentation run there and a small
    proxy on a GPU does not wait on the CPU; None (the default) does so on every device but the CPU.
    Either way the batches come from the same CPU random numbers (``TensorData.to``).
    Raises ``TrainingFailed`` for a non-finite or diverged loss, or out of memory.
    """
    dev = pick_device(recipe.device if device is None else str(device))
    # fixed input shapes: let cuDNN pick the fastest kernels; both settings are put back afterwards
    with _torch_settings(recipe.threads, cudnn_benchmark=dev.type == "cuda"):
        data = data_for_device(data, dev, data_on_device)
        return _train(model, recipe, data, dev, on_epoch, checkpoint, progress, on_progress, step_loss,
                      max_grad_norm)


def data_for_device(data: DataBundle, device: torch.device | str, on_device: bool | None = None) -> DataBundle:
    """``data`` with its in-memory splits (``TensorData``) moved to ``device`` when ``on_device`` (None:
    unless ``device`` is the CPU); file-backed splits stay where they are, loaded by a DataLoader."""
    device = torch.device(device)
    if on_device is None:
        on_device = device.type != "cpu"
    if not on_device:
        return data
    moved = {k: getattr(data, k).to(device) for k in ("train", "val") if isinstance(getattr(data, k), TensorData)}
    return replace(data, **moved) if moved else data


@contextlib.contextmanager
def _torch_settings(threads: int | None, cudnn_benchmark: bool):
    """torch's process-wide thread count and cuDNN autotuning for one training, then as they were."""
    old = torch.get_num_threads(), torch.backends.cudnn.benchmark
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        if cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.set_num_threads(old[0])
        torch.backends.cudnn.benchmark = old[1]


@dataclass
class _Run:
    """One training's moving parts: what every epoch reads and writes, and its checkpoint holds."""

    model: nn.Module
    recipe: Recipe
    data: DataBundle
    dev: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    steps: int  # optimizer steps per epoch
    drop_last: bool
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    fingerprint: str
    history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    stopped: bool = False
    start_epoch: int = 1

    @property
    def result(self) -> TrainResult:
        return TrainResult(self.history[-1], tuple(self.history), len(self.history), self.seconds, self.stopped)

    def state(self, epoch: int) -> dict:
        """What the checkpoint after ``epoch`` holds."""
        return {"fingerprint": self.fingerprint, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(), "epoch": epoch,
                "history": self.history, "seconds": self.seconds, "stopped_early": self.stopped}


def _start(model, recipe: Recipe, data: DataBundle, dev: torch.device, ckpt: Path | None) -> _Run:
    """Seed, place the model, build optimizer, schedule, scaler and loss, and resume from ``ckpt``."""
    amp_dtype = _amp_dtype(recipe, dev)
    channels_last = recipe.channels_last and dev.type == "cuda"
    seed_everything(recipe.seed)

    n_train = len(data.train)
    if n_train == 0:
        raise DataError(f"dataset {data.name}: the training split is empty")
    steps, drop_last = _steps_per_epoch(n_train, recipe.batch_size)

    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = OPTIMIZERS[recipe.optimizer](model.parameters(), recipe)
    run = _Run(model, recipe, data, dev, amp_dtype, channels_last, steps, drop_last, opt,
               sched=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, recipe, steps)),
               scaler=torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16),
               loss_fn=nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing),
               fingerprint=_fingerprint(model, recipe))
    state = _load_checkpoint(ckpt, run.fingerprint, dev) if ckpt is not None and ckpt.is_file() else None
    if state is not None:
        model.load_state_dict(state["model"])
        run.opt.load_state_dict(state["optimizer"])
        run.sched.load_state_dict(state["scheduler"])
        run.scaler.load_state_dict(state["scaler"])
        run.history = list(state["history"])
        run.seconds = float(state["seconds"])
        run.stopped = bool(state["stopped_early"])
        run.start_epoch = int(state["epoch"]) + 1
    return run


def _step(run: _Run, x: torch.Tensor, y: torch.Tensor, step_loss, max_grad_norm) -> torch.Tensor:
    """One optimizer step on the batch (x, y); its loss."""
    x = x.to(run.dev, non_blocking=True)
    y = y.to(run.dev, non_blocking=True)
    if run.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(run.dev.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        loss = run.loss_fn(run.model(x), y) if step_loss is None else step_loss(run.model, x, y, run.loss_fn)
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if max_grad_norm is not None:
        run.scaler.unscale_(run.opt)
        norm = nn.utils.clip_grad_norm_(run.model.parameters(), max_grad_norm)
        if not math.isfinite(float(norm)):  # skipped, as AMP's scaler skips an overflow
            run.opt.zero_grad(set_to_none=True)
    run.scaler.step(run.opt)
    run.scaler.update()
    run.sched.step()
    return loss


def _epoch(run: _Run, epoch: int, progress: bool, on_progress, step_loss, max_grad_norm) -> tuple[float, float | None]:
    """Train one epoch, then validate: (validation accuracy, the last window's mean loss)."""
    recipe, steps, pin = run.recipe, run.steps, run.dev.type == "cuda"
    eseed = _epoch_seed(recipe.seed, epoch)
    torch.manual_seed(eseed)  # augmentation draws from the global RNG
    run.model.train()
    batches = data_batches(run.data.train, recipe.batch_size, shuffle=True, seed=eseed, drop_last=run.drop_last,
                           num_workers=recipe.num_workers, pin=pin)
    with tqdm(total=steps, desc=f"epoch {epoch}/{recipe.epochs}", unit="step", leave=False,
              disable=not progress) as bar:
        losses: list[torch.Tensor] = []
        loss_now: float | None = None
        for step, (x, y) in enumerate(batches):
            losses.append(_step(run, x, y, step_loss, max_grad_norm).detach())
            if len(losses) == NAN_CHECK_EVERY or step + 1 == steps:
                loss_now = _check_losses(losses, epoch, step, run.data.num_classes)
                losses.clear()
            bar.update(1)
            if on_progress is not None:
                on_progress(Progress(epoch, recipe.epochs, step + 1, steps, loss_now))
        val_batches = data_batches(run.data.val, recipe.batch_size * 2, shuffle=False, seed=0, drop_last=False,
                                   num_workers=recipe.num_workers, pin=pin)
        acc = evaluate(run.model, val_batches, run.dev, amp_dtype=run.amp_dtype, channels_last=run.channels_last)
        bar.set_postfix(val_acc=f"{acc:.3f}")
    return acc, loss_now


def _train(model, recipe, data, dev, on_epoch, checkpoint, progress, on_progress, step_loss,
           max_grad_norm=None) -> TrainResult:
    ckpt = Path(checkpoint) if checkpoint is not None else None
    run = _start(model, recipe, data, dev, ckpt)
    if run.stopped or run.start_epoch > recipe.epochs:
        return run.result
    failure: str | None = None
    epoch = run.start_epoch
    try:
        for epoch in range(run.start_epoch, recipe.epochs + 1):
            t0 = time.perf_counter()
            acc, loss_now = _epoch(run, epoch, progress, on_progress, step_loss, max_grad_norm)
            run.history.append(acc)
            if on_progress is not None:
                on_progress(Progress(epoch, recipe.epochs, run.steps, run.steps, loss_now, acc))
            run.stopped = bool(on_epoch(epoch, acc)) if on_epoch is not None else False
            run.seconds += time.perf_counter() - t0
            if ckpt is not None:
                _save_atomic(run.state(epoch), ckpt)
            if run.stopped:
                break
    except Exception as e:  # noqa: BLE001 - only out-of-memory is handled, everything else re-raised
        if not _is_oom(e):
            raise
        failure = (f"out of memory on {dev} at epoch {epoch} (batch size {recipe.batch_size}): "
                   f"{str(e).splitlines()[0][:200]}")
    if failure is not None:
        # Outside the except block, so the traceback (and the tensors its frames hold) is gone.
        run.opt.zero_grad(set_to_none=True)
        run.opt.state.clear()
        del model, run
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        raise TrainingFailed(failure)
    return run.result


def _check_losses(losses: list[torch.Tensor], epoch: int, last_step: int, classes: int) -> float:
    """The mean of ``losses`` (one window of steps ending at ``last_step``); fails on a non-finite loss
    or a diverged mean (``DIVERGED`` times ln ``classes``, the loss of a uniform guess, or more)."""
    stacked = torch.stack(losses).float()
    bad = (~torch.isfinite(stacked)).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        step = last_step - len(losses) + 1 + i + 1  # 1-based step within the epoch
        kind = "nan" if math.isnan(float(stacked[i])) else "inf"
        raise TrainingFailed(f"loss became {kind} at epoch {epoch} step {step}")
    mean, uniform = float(stacked.mean()), math.log(classes)
    if mean > DIVERGED * uniform:
        raise TrainingFailed(
            f"diverged: mean training loss {mean:.3g} at epoch {epoch} step {last_step + 1}, {mean / uniform:.3g}x "
            f"that of a uniform guess (ln {classes} = {uniform:.2f}); limit {DIVERGED:g}x; try a lower lr")
    return mean
