"""One command that exercises every CUDA path of se-nas on one GPU (issue 22, section 3), in under
8 minutes and with no download; ``--device cpu`` runs a smaller version of the same steps (the CI
smoke test, tests/test_gpu_check.py).

The data is CIFAR-shaped and made on the fly: a python-format CIFAR-10 folder (``data_batch_1..5``,
32x32x3 uint8, 10 classes) is written to a scratch folder, each image its class's random template
plus noise (so a proxy learns it within an epoch), and read back with ``se_nas.nn.data.load_data``
like real CIFAR: the Ray workers load it the same way. The steps (``STEPS``, name -> function):

    data        an epoch of in-memory batches (shuffle, uint8 -> float, normalise, crop/flip) made
                on the device against the CPU path's, batch by batch (bitwise on the CPU)
    train-fp32  the proxy trained in float32, data on the device
    train-amp   the same with the recipe's AMP (bf16 where the GPU has it natively, else fp16 with a
                GradScaler) and channels_last; the autocast dtype and memory format are checked
    train-fp16  train-amp with ``amp: fp16`` (float16 autocast and the GradScaler's loss scaling),
                which a GPU with native bf16 never takes by default
    train-host  train-amp with the data left on the host (the old path), for the images/s beside it
    supernet    the tiny space's SE supernet trained a few steps (sandwich rule), one path extracted
                and evaluated
    latency     the latency profile (CUDA events on a GPU) of 3 designs, each design's prediction
                checked against its whole-model timing
    ray-search  a 2-trial Ray search with --gpus-per-trial 0.5, so both trials share the GPU at once
                (on the CPU: one CPU per trial); checks that they ran concurrently
    export      a proxy trained and exported on the device (model file, TorchScript, ONNX), loaded on
                the CPU: weights bitwise, outputs equal

It prints a table (step, device, images/s, peak GPU memory, GPU utilisation, pass/fail, a note) and
exits 1 if a step fails. Utilisation and the memory of other processes (the Ray trials) come from
``nvidia-smi`` sampled every 0.25 s while a step runs, else ``torch.cuda.utilization()``, else "-".

    python scripts/gpu_check.py                     # the first CUDA GPU (else: the CPU, smaller)
    python scripts/gpu_check.py --device cpu        # the CI smoke run
    python scripts/gpu_check.py --steps data,train-amp --json gpu_check.json
"""
from __future__ import annotations

import argparse
import json
import math
import pickle
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from se_nas.design.arch import Arch
from se_nas.design.recipe import Recipe
from se_nas.design.space import load_space
from se_nas.nn.build import build_model
from se_nas.nn.data import load_data
from se_nas.nn.train import AMP, data_for_device, evaluate, seed_everything, train

import benchlib

SPACE = "tiny"  # ResNet-18, a few SE choices per stage


@dataclass(frozen=True)
class Size:
    """How big each step is on one kind of device."""

    per_batch: int  # images per data_batch_N file (5 files; 10% of them held out for validation)
    width: float  # the proxy's width multiplier
    batch_size: int
    epochs: int
    supernet_samples: int  # training images the supernet sees (one epoch)
    search_samples: int  # training images per Ray trial
    search_epochs: int
    profile: dict  # se_nas.nn.profile.profile's form and rounds
    latency_tolerance: float  # |predicted / measured - 1| allowed per design
    threads: int | None


SIZES = {
    "cuda": Size(per_batch=4000, width=0.5, batch_size=256, epochs=3, supernet_samples=8192, search_samples=12000,
                 search_epochs=3, profile=dict(stem="imagenet", width=1.0, image_size=224, batch=8, rounds=30),
                 latency_tolerance=0.15, threads=None),
    "cpu": Size(per_batch=128, width=0.125, batch_size=32, epochs=1, supernet_samples=128, search_samples=256,
                search_epochs=2, profile=dict(stem="small", width=0.25, image_size=32, batch=1, rounds=15,
                                               clock="process"),
                latency_tolerance=0.6, threads=1),
}


@dataclass
class Row:
    step: str
    device: str
    images_per_s: float | None = None
    peak_mib: str = "-"
    util: str = "-"
    ok: bool = False
    note: str = ""
    seconds: float = 0.0


@dataclass
class Context:
    device: torch.device
    size: Size
    work: Path
    recipe: Recipe  # the proxy recipe on the synthetic CIFAR folder
    data: object  # its DataBundle, loaded once


# --- the data ------------------------------------------------------------------------------------------
def write_cifar(folder: Path, per_batch: int, seed: int = 0) -> Path:
    """A CIFAR-10 python-format folder of ``5 * per_batch`` images: each its class's template (a colour
    of its own plus random 4x4 blocks scaled to 32x32, which crops and flips keep) blended with noise."""
    rng = np.random.default_rng(seed)
    colours = rng.permutation(np.stack(np.meshgrid([40, 215], [40, 215], [40, 128, 215]), -1).reshape(-1, 3))[:10]
    pattern = rng.integers(0, 256, (10, 3, 4, 4)).repeat(8, axis=2).repeat(8, axis=3)
    templates = 0.75 * colours[:, :, None, None] + 0.25 * pattern
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        labels = rng.integers(0, 10, per_batch)
        noise = rng.integers(0, 256, (per_batch, 3, 32, 32))
        images = (0.7 * templates[labels] + 0.3 * noise).astype(np.uint8)
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": images.reshape(per_batch, -1), b"labels": labels.tolist()}, f, protocol=2)
    return folder


# --- measuring the GPU while a step runs ----------------------------------------------------------------
class GpuMonitor:
    """Samples the GPU's utilisation, memory used and compute processes every ``every`` seconds."""

    def __init__(self, device: torch.device, every: float = 0.25):
        self.device, self.every = device, every
        self.smi = shutil.which("nvidia-smi") if device.type == "cuda" else None
        self.util: list[float] = []
        self.mem: list[float] = []
        self.procs = 0  # the most compute processes seen on the GPU at once
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _query(self, *args: str) -> list[str]:
        out = subprocess.run([self.smi, *args, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=5)
        return [line.strip() for line in out.stdout.splitlines() if line.strip()]

    def _sample(self) -> None:
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        if self.smi:
            try:
                util, mem = self._query("-i", str(index), "--query-gpu=utilization.gpu,memory.used")[0].split(",")
                self.util.append(float(util))
                self.mem.append(float(mem))
                self.procs = max(self.procs, len(self._query("-i", str(index), "--query-compute-apps=pid")))
                return
            except (OSError, subprocess.SubprocessError, IndexError, ValueError):
                self.smi = None
        try:
            self.util.append(float(torch.cuda.utilization(index)))
        except Exception:  # noqa: BLE001 - torch.cuda.utilization needs pynvml; then there is no figure
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def __enter__(self) -> "GpuMonitor":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._sample()
            self.base_mem = self.mem[-1] if self.mem else None
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    def fill(self, row: Row, other_processes: bool = False) -> None:
        if self.device.type != "cuda":
            return
        here = torch.cuda.max_memory_allocated(self.device) / 2**20
        if other_processes and self.mem and self.base_mem is not None:
            row.peak_mib = f"{max(self.mem) - self.base_mem:.0f} (smi)"  # the trials' processes, not this one
        else:
            row.peak_mib = f"{here:.0f}"
        if self.util:
            row.util = f"{statistics.fmean(self.util):.0f}% (max {max(self.util):.0f}%)"


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# --- the steps ---------------------------------------------------------------------------------------
def _epoch(ds, batch_size: int, seed: int) -> list:
    """One training epoch's batches of in-memory data, as the trainer draws them (per-epoch seed on the
    global RNG for the augmentation, a seeded generator for the order)."""
    torch.manual_seed(seed)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    stop = len(ds) - len(ds) % batch_size
    return [ds.batch(order[i:i + batch_size]) for i in range(0, stop, batch_size)]


def step_data(ctx: Context, row: Row) -> None:
    dev, ds = ctx.device, ctx.data.train
    on_dev = data_for_device(ctx.data, dev, True).train
    rate = {}
    for name, d in (("host", ds), ("device", on_dev)):
        _epoch(d, ctx.size.batch_size, 1)  # warm-up
        _sync(dev)
        t0 = time.perf_counter()
        batches = _epoch(d, ctx.size.batch_size, 3)
        _sync(dev)
        rate[name] = len(batches) * ctx.size.batch_size / (time.perf_counter() - t0)
        if name == "host":
            want = batches
    got = batches
    if not all(x.device.type == dev.type for x, _ in got):
        raise AssertionError(f"device batches are on {got[0][0].device}, not {dev}")
    labels = all(torch.equal(y.cpu(), wy) for (_, y), (_, wy) in zip(got, want))
    diff = max(float((x.cpu() - wx).abs().max()) for (x, _), (wx, _) in zip(got, want))
    row.images_per_s = rate["device"]
    row.note = (f"{len(got)} batches: labels {'equal' if labels else 'DIFFER'}, max abs diff {diff:.2g}; "
                f"host path {rate['host']:.0f} img/s")
    exact = dev.type == "cpu"
    row.ok = len(got) == len(want) and labels and (diff == 0.0 if exact else diff <= 1e-5)


def _train_proxy(ctx: Context, row: Row, *, amp: bool | str, channels_last: bool, on_device: bool | None) -> None:
    space = load_space(SPACE)
    arch = space.baseline()  # r=16 SE: the SE kernels run too
    recipe = replace(ctx.recipe, amp=amp, channels_last=channels_last)
    seed_everything(recipe.seed)
    model = build_model(arch, ctx.data.num_classes, recipe.stem, recipe.width)
    seen = {}

    def step_loss(model, x, y, loss_fn):  # runs inside the trainer's autocast
        logits = model(x)
        seen.setdefault("dtype", logits.dtype)
        seen.setdefault("channels_last", x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1)
        return loss_fn(logits, y)

    result = train(model, recipe, ctx.data, device=ctx.device, step_loss=step_loss, data_on_device=on_device)
    n = len(ctx.data.train) - len(ctx.data.train) % recipe.batch_size
    row.images_per_s = n * result.epochs / result.seconds
    chance = 1 / ctx.data.num_classes
    want_dtype = (torch.float32 if not (amp and ctx.device.type == "cuda") else AMP[amp] if amp in AMP else
                  torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16)
    want_cl = channels_last and ctx.device.type == "cuda"
    row.note = (f"acc {result.accuracy:.3f} after {result.epochs} epoch(s) (chance {chance:.2f}); "
                f"autocast {str(seen.get('dtype')).replace('torch.', '')}, channels_last {seen.get('channels_last')}")
    row.ok = (all(math.isfinite(a) for a in result.history) and result.accuracy > chance + 0.1
              and seen.get("dtype") == want_dtype and seen.get("channels_last") == want_cl)


def step_train_fp32(ctx: Context, row: Row) -> None:
    _train_proxy(ctx, row, amp=False, channels_last=False, on_device=None)


def step_train_amp(ctx: Context, row: Row) -> None:
    _train_proxy(ctx, row, amp=True, channels_last=True, on_device=None)


def step_train_fp16(ctx: Context, row: Row) -> None:
    _train_proxy(ctx, row, amp="fp16", channels_last=True, on_device=None)


def step_train_host(ctx: Context, row: Row) -> None:
    _train_proxy(ctx, row, amp=True, channels_last=True, on_device=False)


def step_supernet(ctx: Context, row: Row) -> None:
    from se_nas.nn.supernet import extract
    from se_nas.search.oneshot import train_supernet

    space = load_space(SPACE)
    recipe = replace(ctx.recipe, max_train_samples=ctx.size.supernet_samples)
    data = load_data(recipe)
    net, result, draw = train_supernet(space, recipe, data, epochs=1, device=ctx.device)
    path = space.baseline()
    model = extract(net, path).to(ctx.device)
    val = [data.val.batch(torch.arange(i, min(i + 256, len(data.val)))) for i in range(0, len(data.val), 256)]
    acc = evaluate(model, val, ctx.device)
    n = len(data.train) - len(data.train) % recipe.batch_size
    row.images_per_s = n / result.seconds
    row.note = (f"{len(draw.drawn)} paths drawn (sandwich), {len(draw.broken)} broken; path {path.id} "
                f"extracted: val acc {acc:.3f}")
    row.ok = math.isfinite(result.accuracy) and len(draw.drawn) > 0 and 0.0 <= acc <= 1.0


def three_designs(space) -> list[Arch]:
    """The plain backbone, the paper's r=16 SE and one random design of the space."""
    rng = random.Random(0)
    drawn = Arch(space.backbone, tuple(rng.choice(space.stage_options(i)) for i in range(len(space.stages))),
                 stride_on=space.stride_on, se_bias=space.se_bias)
    return [space.plain(), space.baseline(), drawn]


def step_latency(ctx: Context, row: Row) -> None:
    from se_nas.design.latency import predictor
    from se_nas.nn.profile import TIMERS, measure_interleaved, profile

    space, p, dev = load_space(SPACE), ctx.size.profile, ctx.device
    designs = three_designs(space)
    device = "cpu" if dev.type == "cpu" else f"cuda:{dev.index or 0}"
    threads = 1 if dev.type == "cpu" else None
    table = profile(space, ctx.work / "latency.json", device=device, threads=threads, archs=designs, **p)
    pred = predictor(table)
    x = torch.randn(p["batch"], 3, p["image_size"], p["image_size"], device=dev)
    models = {a.id: build_model(a, table.form.num_classes, p["stem"], p["width"]).to(dev).eval() for a in designs}
    timer = TIMERS[dev.type](dev, p.get("clock", "wall"))
    with torch.inference_mode():
        times = measure_interleaved({k: (lambda m=m: m(x)) for k, m in models.items()}, timer, p["rounds"], 3)
    errors = {}
    for a in designs:
        measured = statistics.median(times[a.id])
        errors[a.id] = pred.ms(a) / measured - 1
    plain_ms = statistics.median(times[designs[0].id])
    row.images_per_s = p["batch"] * 1000 / plain_ms
    row.note = (f"{table.header['device_name']}, batch {p['batch']} at {p['image_size']} px: plain {plain_ms:.3g} ms; "
                "predicted vs whole model " + ", ".join(f"{k} {100 * e:+.1f}%" for k, e in errors.items()))
    row.ok = all(abs(e) <= ctx.size.latency_tolerance for e in errors.values())


def step_ray_search(ctx: Context, row: Row, monitor: GpuMonitor) -> None:
    import ray

    from se_nas.design.budget import Budget
    from se_nas.record.study import records
    from se_nas.search.stages import SearchConfig, run_search

    gpu = ctx.device.type == "cuda"
    recipe = replace(ctx.recipe, epochs=ctx.size.search_epochs, max_train_samples=ctx.size.search_samples,
                     device="auto" if gpu else "cpu")
    config = SearchConfig(study="gpu-check", space=SPACE, recipe=recipe, budget=Budget(), backend="ray", n_trials=2,
                          cpus_per_trial=1, gpus_per_trial=0.5 if gpu else 0.0, early_stop="none", progress=False,
                          calibration_seeds=0, confirm_top=0, root=ctx.work / "studies", seed=0)
    t0 = time.perf_counter()
    try:
        study = run_search(config)
    finally:
        ray.shutdown()
    seconds = time.perf_counter() - t0
    recs = records(study)
    trained = [r for r in recs if r.trained and r.accuracy is not None and r.backend == "ray"]
    windows = sorted((t.datetime_start, t.datetime_complete) for t in study.trials)
    overlap = any(b < a_end for (_, a_end), (b, _) in zip(windows, windows[1:]))
    pids = {(t.user_attrs.get("node") or {}).get("pid") for t in study.trials}
    n = sum(r.epochs for r in trained) * (recipe.max_train_samples - recipe.max_train_samples % recipe.batch_size)
    row.images_per_s = n / seconds  # the whole search's, Ray's start included
    together = monitor.procs >= 2 if gpu and monitor.smi else overlap
    row.note = (f"{len(trained)}/2 trials trained in {seconds:.0f} s (Ray start included), worker pids {len(pids)}; "
                + (f"at most {monitor.procs} processes on the GPU at once" if gpu and monitor.smi
                   else f"trials overlapped: {overlap}")
                + "; trials: " + ", ".join(f"{r.status.value}" + (f" {r.accuracy:.3f}" if r.accuracy is not None else
                                                                   f" ({r.reason[:100]})") for r in recs))
    row.ok = len(trained) == 2 and together


def step_export(ctx: Context, row: Row) -> None:
    from se_nas.products.export import export_onnx, export_torchscript, load_model, save_trained

    dev = ctx.device
    arch = load_space(SPACE).baseline()
    recipe = replace(ctx.recipe, epochs=1)
    seed_everything(recipe.seed)
    model = build_model(arch, ctx.data.num_classes, recipe.stem, recipe.width)
    result = train(model, recipe, ctx.data, device=dev)  # the model stays on the device
    model.eval()
    path = save_trained(ctx.work / "proxy.safetensors", model, arch, recipe, ctx.data, result)
    cpu_model = load_model(path, "cpu")
    weights = all(torch.equal(v.detach().cpu(), cpu_model.state_dict()[k]) for k, v in model.state_dict().items())
    x, _ = ctx.data.val.batch(torch.arange(min(64, len(ctx.data.val))))
    with torch.no_grad():
        want = cpu_model(x)
        scale = float(want.abs().max())
        old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 against fp32
        try:
            t0 = time.perf_counter()
            on_dev = model(x.to(dev))
            _sync(dev)
            row.images_per_s = len(x) / (time.perf_counter() - t0)
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
        diffs = {"device": float((on_dev.float().cpu() - want).abs().max()) / scale}
        with warnings.catch_warnings():  # torch.jit's own deprecation notice, on every save and load
            warnings.simplefilter("ignore", FutureWarning)
            ts = torch.jit.load(str(export_torchscript(model, ctx.work / "proxy.pt", recipe.image_size)),
                                map_location="cpu")
        diffs["torchscript"] = float((ts(x) - want).abs().max()) / scale
    try:
        import onnxruntime as ort

        onnx_path = export_onnx(model, ctx.work / "proxy.onnx", recipe.image_size)
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        diffs["onnx"] = float((got - want).abs().max()) / scale
    except ImportError:
        diffs["onnx"] = None
    limits = {"device": 0.0 if dev.type == "cpu" else 1e-3, "torchscript": 1e-5, "onnx": 1e-4}
    row.note = (f"weights {'bitwise equal' if weights else 'DIFFER'} after save on {dev.type}, load on cpu; "
                "max abs diff / max abs logit against the CPU model: "
                + ", ".join(f"{k} {'-' if v is None else f'{v:.1g}'}" for k, v in diffs.items())
                + (" (onnxruntime not installed)" if diffs["onnx"] is None else ""))
    row.ok = weights and all(v is None or v <= limits[k] for k, v in diffs.items())


# name -> function; a function taking a third argument gets the step's GpuMonitor
STEPS: dict[str, Callable] = {
    "data": step_data,
    "train-fp32": step_train_fp32,
    "train-amp": step_train_amp,
    "train-fp16": step_train_fp16,
    "train-host": step_train_host,
    "supernet": step_supernet,
    "latency": step_latency,
    "ray-search": step_ray_search,
    "export": step_export,
}
OTHER_PROCESSES = {"ray-search"}  # steps whose GPU work runs in other processes


# --- running and printing -----------------------------------------------------------------------------
def run_step(name: str, ctx: Context) -> Row:
    row = Row(name, str(ctx.device))
    fn = STEPS[name]
    t0 = time.perf_counter()
    with GpuMonitor(ctx.device) as monitor:
        try:
            fn(ctx, row, monitor) if name in OTHER_PROCESSES else fn(ctx, row)
        except Exception as e:  # noqa: BLE001 - a failing step is a row of the table, not the end of the check
            row.ok = False
            row.note = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''} {row.note}".strip()
    row.seconds = time.perf_counter() - t0
    monitor.fill(row, other_processes=name in OTHER_PROCESSES)
    return row


def table(rows: list[Row]) -> str:
    lines = ["| step | device | images/s | peak GPU MiB | GPU util | result | seconds | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ips = "-" if r.images_per_s is None else f"{r.images_per_s:,.0f}"
        lines.append(f"| {r.step} | {r.device} | {ips} | {r.peak_mib} | {r.util} | {'pass' if r.ok else 'FAIL'} | "
                     f"{r.seconds:.1f} | {r.note.replace('|', '/')} |")
    return "\n".join(lines)


def pick(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise SystemExit(f"gpu_check: --device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"gpu_check: --device {device} asked for, but CUDA is not available here "
                         f"(torch {torch.__version__}); use --device cpu for the smaller CPU run")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise SystemExit(f"gpu_check: --device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (CUDA if available, else cpu), cpu, cuda or cuda:N; "
                    "the CPU runs a smaller version")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated steps to run (default all: "
                    f"{', '.join(STEPS)})")
    ap.add_argument("--json", type=Path, help="also write the rows and the machine to this JSON file")
    args = ap.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise SystemExit(f"gpu_check: --steps: unknown step(s) {', '.join(map(repr, unknown[:5])) or '(none given)'}; "
                         f"allowed: {', '.join(STEPS)}")
    dev = pick(args.device)
    size = SIZES[dev.type]
    if size.threads is not None:
        torch.set_num_threads(size.threads)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else benchlib.cpu_model()
    print(f"gpu_check: {name}; torch {torch.__version__}"
          + (f", CUDA {torch.version.cuda}" if dev.type == "cuda" else "") + f"; steps: {', '.join(steps)}", flush=True)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="se-nas-gpu-check-"))
    rows = []
    try:
        folder = write_cifar(work / "cifar-10-batches-py", size.per_batch)
        recipe = Recipe(dataset="cifar10", data_dir=str(folder), image_size=32, stem="small", width=size.width,
                        epochs=size.epochs, batch_size=size.batch_size, lr=0.05, warmup_epochs=0, seed=0,
                        device=str(dev), threads=size.threads)
        ctx = Context(dev, size, work, recipe, load_data(recipe))
        for s in steps:
            rows.append(run_step(s, ctx))
            r = rows[-1]
            print(f"  {s}: {'pass' if r.ok else 'FAIL'} in {r.seconds:.1f} s: {r.note}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t0
    print(table(rows))
    print(f"{sum(r.ok for r in rows)}/{len(rows)} steps passed in {total:.0f} s on {dev} ({name})")
    if args.json:
        args.json.write_text(json.dumps({"device": str(dev), "device_name": name, "torch": torch.__version__,
                                         "cuda": torch.version.cuda, "seconds": total, "machine": benchlib.machine(),
                                         "rows": [asdict(r) for r in rows]}, indent=1))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
