"""Side-by-side wall-clock benchmark of SE: our SE-ResNet-50 against our plain ResNet-50, with timm's
seresnet50/resnet50 as the outside reference (issue 5).

For every model it measures, on the same input batch and thread count:
  * training throughput (images/s): forward, cross-entropy, backward and an SGD step;
  * inference throughput (images/s): eval mode under torch.inference_mode;
  * training memory: on CUDA the peak of torch.cuda.max_memory_allocated over one training step
    (minus what was allocated before it); on CPU, which has no allocator statistics, the bytes of the
    distinct activations autograd saves for backward during the forward pass (counted with
    torch.autograd.graph.saved_tensors_hooks, deduplicated by storage, parameters left out). Saved
    activations are what differ between the models; weights, gradients and optimizer state are the
    same size for a pair, so this ratio is stricter than one of whole-process peaks.
Models are interleaved within each repeat (the order rotates) so that machine noise hits every model
alike, and ratios SE/plain are taken per repeat and reported as medians; beside them, the ratio of
the fastest single steps ("best"), which a shared machine's interference (it only ever slows a step
down) disturbs least. CUDA timings use CUDA
events after a synchronize.

    .venv/bin/python scripts/bench_se.py                     # batch 64 at 32x32, all threads
    .venv/bin/python scripts/bench_se.py --threads 1 --repeats 7 --json out.json
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from se_nas.design.arch import PRESETS
from se_nas.nn.build import build_model
from se_nas.design.cost import count_cost
from se_nas.nn.fused import set_fast_se

import benchlib

# (SE model, plain model) pairs whose ratio is reported
PAIRS = {
    "ours 1x1, fast SE": ("se_resnet50", "resnet50"),
    "ours 1x1, reference SE": ("se_resnet50_ref", "resnet50"),
    "ours 3x3 (tv), fast SE": ("se_resnet50_tv", "resnet50_tv"),
    "ours 3x3 (tv), reference SE": ("se_resnet50_tv_ref", "resnet50_tv"),
    "timm": ("timm_seresnet50", "timm_resnet50"),
}


MODELS = ("resnet50", "se_resnet50", "se_resnet50_ref", "resnet50_tv", "se_resnet50_tv", "se_resnet50_tv_ref",
          "timm_resnet50", "timm_seresnet50")


def make_models(names: list[str], stem: str) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    models = {}
    for name in names:
        if name.startswith("timm_"):
            try:
                import timm
            except ModuleNotFoundError:
                sys.exit(f"bench_se.py: model {name!r} needs timm, which is not installed: "
                         "pip install -e '.[bench]', or leave timm's pair out with --no-timm")

            models[name] = timm.create_model(name.removeprefix("timm_"), num_classes=1000)
        else:
            model = build_model(PRESETS[name.removesuffix("_ref")], 1000, stem=stem)
            models[name] = set_fast_se(model, False) if name.endswith("_ref") else model
    return models


def flops_ratios(pairs: dict, image_size: int, stem: str) -> dict[str, float]:
    """SE/plain FLOPs at this input size (analytic count): 1 / this is the throughput ratio at
    which SE would cost in time exactly its share of FLOPs."""
    out = {}
    for label, (se, plain) in pairs.items():
        if not se.startswith("timm_"):
            out[label] = (count_cost(PRESETS[se.removesuffix("_ref")], image_size, 1000, stem).flops
                          / count_cost(PRESETS[plain], image_size, 1000, stem).flops)
    return out


def machine(device: torch.device, threads: int) -> dict:
    info = {**benchlib.machine(), "threads": threads, "load_average_start": benchlib.load_averages()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


class Timer:
    """Wall-clock on CPU; CUDA events on GPU (asynchronous kernels finish before the reading)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1000
        else:
            self.seconds = time.perf_counter() - self.t0


def time_steps(step, steps: int, batch: int, device: torch.device) -> tuple[float, float]:
    """Images/s over ``steps`` calls of ``step``, and in the fastest single call."""
    total, fastest = 0.0, math.inf
    for _ in range(steps):
        with Timer(device) as t:
            step()
        total += t.seconds
        fastest = min(fastest, t.seconds)
    return batch * steps / total, batch / fastest


def train_step(model, opt, x, y, amp: bool):
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def saved_bytes(model, x, y, amp: bool) -> int:
    """Bytes of the distinct activations autograd saves for backward in one training forward.

    Parameters that layers save (convolution weights) are left out: they are the same for a pair
    and would only dilute the ratio."""
    seen: dict[tuple, int] = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[(st.data_ptr(), t.device)] = st.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def cuda_peak_bytes(model, opt, x, y, amp: bool) -> int:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    train_step(model, opt, x, y, amp)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def run(args) -> dict:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    models = make_models(args.models, args.stem)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g).to(device, memory_format=fmt)
    y = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
    opts = {}
    for name, m in models.items():
        m.to(device, memory_format=fmt)
        opts[name] = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
    info = machine(device, torch.get_num_threads())
    info.update(batch=args.batch, image_size=args.image_size, stem=args.stem, device=str(device),
                channels_last=args.channels_last, amp=args.amp, compile=args.compile, repeats=args.repeats,
                steps=args.steps)
    if args.compile:  # compiled in the warm-up below (training and, at the first repeat, eval graphs)
        models = {name: torch.compile(m) for name, m in models.items()}

    memory: dict[str, int | None] = {}
    for name, m in models.items():
        t0 = time.perf_counter()
        train_step(m, opts[name], x, y, args.amp)  # warm-up: allocator, caches, lazy init, compilation
        if args.compile:
            print(f"{name}: compiled and ran one step in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        if device.type == "cuda":
            memory[name] = cuda_peak_bytes(m, opts[name], x, y, args.amp)
        else:  # what eager autograd saves; a compiled graph decides for itself what to save
            memory[name] = None if args.compile else saved_bytes(m, x, y, args.amp)
    names = list(models)
    train = {n: [] for n in names}  # per repeat: images/s over that repeat's steps
    infer = {n: [] for n in names}
    best = {n: {"train": 0.0, "infer": 0.0} for n in names}  # the fastest single step seen
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
        for name in order:
            m = models[name]
            m.train()
            rate, top = time_steps(lambda: train_step(m, opts[name], x, y, args.amp), args.steps, args.batch, device)
            train[name].append(rate)
            best[name]["train"] = max(best[name]["train"], top)
            m.eval()
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                m(x)  # warm the eval path
                rate, top = time_steps(lambda: m(x), args.steps, args.batch, device)
            infer[name].append(rate)
            best[name]["infer"] = max(best[name]["infer"], top)
        print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    info["load_average_end"] = benchlib.load_averages()

    def ratio(d, se, plain):
        return statistics.median(a / b for a, b in zip(d[se], d[plain]))

    pairs = {k: v for k, v in PAIRS.items() if v[0] in models and v[1] in models}
    parity = flops_ratios(pairs, args.image_size, args.stem)
    return {
        "machine": info,
        "models": {n: {"train_img_s": statistics.median(train[n]), "infer_img_s": statistics.median(infer[n]),
                       "train_mem_mib": None if memory[n] is None else memory[n] / 2**20,
                       "train_runs": train[n], "infer_runs": infer[n],
                       "train_best_img_s": best[n]["train"], "infer_best_img_s": best[n]["infer"]}
                   for n in names},
        "ratios": {k: {"se": se, "plain": plain, "train": ratio(train, se, plain),
                       "infer": ratio(infer, se, plain),
                       "memory": None if memory[se] is None else memory[se] / memory[plain],
                       "train_best": best[se]["train"] / best[plain]["train"],
                       "infer_best": best[se]["infer"] / best[plain]["infer"],
                       "flops": parity.get(k)}
                   for k, (se, plain) in pairs.items()},
        "memory_method": "cuda max_memory_allocated over one step" if device.type == "cuda"
        else "activation bytes saved for backward (saved_tensors_hooks, distinct storages, no parameters)",
    }


def markdown(res: dict) -> str:
    mi = res["machine"]
    lines = [
        f"Machine: {mi['cpu']}, {mi['cores']} cores, {mi['threads']} threads, torch {mi['torch']}"
        + (f", GPU {mi['gpu']}" if "gpu" in mi else "")
        + f"; load average {mi['load_average_start'][0]:.1f} at start, {mi['load_average_end'][0]:.1f} at end.",
        f"Batch {mi['batch']} at {mi['image_size']}x{mi['image_size']}, {mi['stem']} stem, device {mi['device']},"
        f" channels_last={mi['channels_last']}, amp={mi['amp']}, compile={mi['compile']}; median of {mi['repeats']} interleaved repeats"
        f" of {mi['steps']} steps (best: ratio of the fastest single steps). Memory: {res['memory_method']}.",
        "",
        "| model | train img/s | infer img/s | train memory (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for n, m in res["models"].items():
        mem = "-" if m["train_mem_mib"] is None else f"{m['train_mem_mib']:.1f}"
        lines.append(f"| {n} | {m['train_img_s']:.1f} | {m['infer_img_s']:.1f} | {mem} |")
    lines += ["", "| SE / plain | train throughput: median (best) | inference throughput: median (best)"
                  " | train memory | FLOPs (parity) |",
              "|---|---:|---:|---:|---:|"]
    for k, r in res["ratios"].items():
        flops = "-" if r["flops"] is None else f"{r['flops']:.4f}x ({1 / r['flops']:.3f}x)"
        mem = "-" if r["memory"] is None else f"{r['memory']:.3f}x"
        lines.append(f"| {k} ({r['se']} / {r['plain']}) | {r['train']:.3f}x ({r['train_best']:.3f}x)"
                     f" | {r['infer']:.3f}x ({r['infer_best']:.3f}x) | {mem} | {flops} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--stem", choices=("imagenet", "small"), default="imagenet",
                   help="our models' stem; timm's is always the imagenet one (default imagenet: like with like)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="timed steps per model per repeat")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every model first (minutes per model on CPU; no CPU memory figure)")
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma-separated subset of: " + ", ".join(MODELS) + " (suffix _ref: the reference SE path)")
    p.add_argument("--no-timm", action="store_true", help="skip timm's reference pair")
    p.add_argument("--json", help="also write the full results here")
    args = p.parse_args(argv)
    for k in ("batch", "image_size", "repeats", "steps"):
        if getattr(args, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be a positive integer, got {getattr(args, k)}")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        p.error(f"--models: unknown model(s) {unknown or args.models!r}; choose from {', '.join(MODELS)}")
    if args.no_timm:
        args.models = [m for m in args.models if not m.startswith("timm_")]
    res = run(args)
    return benchlib.publish(res, markdown(res), args.json)


if __name__ == "__main__":
    sys.exit(main())
