"""The SE inference tax: what r=16 SE costs over a plain ResNet-50 in deployed inference (issue 22),
side by side in one run, per runtime.

Batch 1 at 224x224, one thread, warm, eval mode. Every variant is called once per round, in an order
that rotates each round, so that the load of a shared machine hits all of them alike; figures are
medians over the rounds (process CPU time and wall time of each call), ratios SE/plain the medians of
the per-round ratios. FLOPs parity (the analytic count, 1.0035x for ResNet-50) is the ratio SE would
cost if time followed FLOPs.

Variants:
  * ours, PyTorch eager, unfused: the straightforward SE code (``set_fast_se(model, False)``),
    x * sigmoid(fc2(relu(fc1(mean(x))))) with 1x1 convolutions;
  * ours, eager, no_grad: the eval path the training loop's validation runs (excitation as matrix
    products, nothing folded): what every eval call ran before the BatchNorm fold;
  * ours, eager, inference_mode: the deployed path, the SE scale folded into the last BatchNorm
    (``se_nas.nn.fused.bn_se_inference``);
  * timm's resnet50 / seresnet50 (eager, inference_mode): the outside anchor;
  * ONNX Runtime on the CPU (if onnxruntime is importable): our pair exported with
    ``se_nas.products.export.export_onnx`` (BatchNorm folded into the convolutions by ORT), and timm's.

``--parts`` adds where the tax goes: the SE pieces of the 16 units (squeeze, excitation, the
BatchNorm with and without the SE scale) timed alone on the model's own maps and weights.

    nice -n 10 python scripts/bench_se_tax.py                      # 24 rounds
    nice -n 10 python scripts/bench_se_tax.py --rounds 48 --parts --json tax.json
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import benchlib

from se_nas.design.arch import PRESETS
from se_nas.design.cost import count_cost
from se_nas.nn.build import build_model
from se_nas.nn.fused import set_fast_se

# (label, SE variant, plain variant)
PAIRS = (
    ("ours, eager, unfused SE", "ours_se_unfused", "ours_plain"),
    ("ours, eager, no_grad (validation's path)", "ours_se_nograd", "ours_plain_nograd"),
    ("ours, eager, inference_mode (BN-folded SE)", "ours_se_fused", "ours_plain"),
    ("timm, eager", "timm_seresnet50", "timm_resnet50"),
    ("ours, ONNX Runtime", "ort_ours_se", "ort_ours_plain"),
    ("timm, ONNX Runtime", "ort_timm_seresnet50", "ort_timm_resnet50"),
)


def torch_models(args) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    plain = build_model(PRESETS["resnet50"]).eval()
    se = build_model(PRESETS["se_resnet50"]).eval()
    models = {"ours_plain": plain, "ours_se": se, "ours_se_unfused": set_fast_se(copy.deepcopy(se), False)}
    if not args.no_timm:
        try:
            import timm
        except ModuleNotFoundError:
            sys.exit("bench_se_tax.py: timm's anchor pair needs timm: pip install -e '.[bench]', or --no-timm")
        for name in ("resnet50", "seresnet50"):
            models[f"timm_{name}"] = timm.create_model(name, num_classes=1000).eval()
    return models


def check_fused(se: torch.nn.Module, x: torch.Tensor) -> float:
    """Largest |fused - unfused| logit, on the SE model with its BatchNorm statistics and affine
    parameters randomised (so that the fold has real numbers to fold)."""
    m = copy.deepcopy(se)
    g = torch.Generator().manual_seed(1)
    for bn in m.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            for t, lo, hi in ((bn.weight.data, 0.5, 1.5), (bn.bias.data, -0.2, 0.2),
                              (bn.running_mean, -0.1, 0.1), (bn.running_var, 0.5, 1.5)):
                t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    with torch.no_grad():
        ref = set_fast_se(copy.deepcopy(m), False)(x)
    with torch.inference_mode():
        out = m(x)
    return (out - ref).abs().max().item()


def ort_sessions(models: dict, image_size: int, threads: int, tmp: Path) -> dict:
    """ONNX Runtime CPU sessions of the exported models (all graph optimisations: BN folded)."""
    import onnxruntime as ort

    from se_nas.products.export import export_onnx

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    out = {}
    for name, src in (("ort_ours_plain", "ours_plain"), ("ort_ours_se", "ours_se"),
                      ("ort_timm_resnet50", "timm_resnet50"), ("ort_timm_seresnet50", "timm_seresnet50")):
        if src in models:
            path = export_onnx(models[src], tmp / f"{src}.onnx", image_size)
            out[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return out


def callables(models: dict, sessions: dict, x: torch.Tensor) -> dict:
    def eager(m, ctx):
        def call():
            with ctx():
                m(x)
        return call

    calls = {"ours_plain": eager(models["ours_plain"], torch.inference_mode),
             "ours_plain_nograd": eager(models["ours_plain"], torch.no_grad),
             "ours_se_unfused": eager(models["ours_se_unfused"], torch.inference_mode),
             "ours_se_nograd": eager(models["ours_se"], torch.no_grad),
             "ours_se_fused": eager(models["ours_se"], torch.inference_mode)}
    for name in ("timm_resnet50", "timm_seresnet50"):
        if name in models:
            calls[name] = eager(models[name], torch.inference_mode)
    feed = {"images": x.numpy()}
    for name, sess in sessions.items():
        calls[name] = (lambda s: lambda: s.run(None, feed))(sess)
    return calls


def measure(calls: dict, rounds: int, warmup: int) -> dict:
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    cpu = {n: [] for n in names}
    wall = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            c0, w0 = benchlib.cpu(), time.perf_counter()
            calls[name]()
            cpu[name].append(benchlib.cpu() - c0)
            wall[name].append(time.perf_counter() - w0)
    return {"cpu": cpu, "wall": wall}


def se_parts(models: dict, x: torch.Tensor, rounds: int) -> dict:
    """Where the eager tax goes: the SE pieces of the 16 SE units timed alone (process CPU ms per
    forward, summed over the units, median over interleaved rounds) on the maps the model computes
    for ``x`` (each unit's last convolution's output), with the model's own weights."""
    from se_nas.nn.fused import excite, bn_se_inference

    model = models["ours_se"]
    units = [u for u in model.modules() if hasattr(u, "bn_se_foldable") and hasattr(u.se_residual, "fc1")]
    maps = []
    hooks = [getattr(u, f"conv{u.depth}").register_forward_hook(lambda m, i, o: maps.append(o.clone()))
             for u in units]
    with torch.inference_mode():
        model(x)
    for h in hooks:
        h.remove()
    pieces = {
        "BatchNorm alone (what a plain unit runs)": lambda c, u: u.last_bn(c),
        "squeeze: mean over the map": lambda c, u: c.mean((2, 3)),
        "mean and excitation (2 matrix-vector products, gates)": lambda c, u: excite(u.se_residual, c.mean((2, 3))),
        "unfused: BatchNorm, then the SE module": lambda c, u: u.se_residual(u.last_bn(c)),
        "fused: bn_se_inference": lambda c, u: bn_se_inference(c, u.last_bn, u.se_residual),
    }
    times = {k: [] for k in pieces}
    with torch.inference_mode():
        for r in range(rounds):
            for name, f in pieces.items():
                t0 = benchlib.cpu()
                for c, u in zip(maps, units):
                    f(c, u)
                times[name].append(benchlib.cpu() - t0)
    weights = sum(p.numel() * p.element_size() for u in units for p in u.se_residual.parameters())
    return {"units": len(units), "excitation_weight_mib": weights / 2**20,
            "ms": {k: statistics.median(v) * 1e3 for k, v in times.items()}}


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    info = {**benchlib.machine(), "threads": torch.get_num_threads(), "nice": os.nice(0),
            "load_average_start": benchlib.load_averages(), "batch": 1, "image_size": args.image_size,
            "rounds": args.rounds, "warmup": args.warmup}
    models = torch_models(args)
    x = torch.randn(1, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(0))
    info["fused_max_abs_diff"] = check_fused(models["ours_se"], x)
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_onnx:
            try:
                import onnxruntime
            except ModuleNotFoundError:
                print("bench_se_tax.py: onnxruntime is not installed; the ONNX Runtime rows are left out "
                      "(pip install -e '.[onnx]')", file=sys.stderr)
            else:
                info["onnxruntime"] = onnxruntime.__version__
                sessions = ort_sessions(models, args.image_size, args.threads, Path(tmp))
        times = measure(callables(models, sessions, x), args.rounds, args.warmup)
    info["load_average_end"] = benchlib.load_averages()
    parity = (count_cost(PRESETS["se_resnet50"], args.image_size).flops
              / count_cost(PRESETS["resnet50"], args.image_size).flops)
    res = {"machine": info, "flops_parity": parity,
           "variants": {n: {"cpu_ms": statistics.median(v) * 1e3,
                            "wall_ms": statistics.median(times["wall"][n]) * 1e3,
                            "cpu_min_ms": min(v) * 1e3, "cpu_runs_ms": [t * 1e3 for t in v]}
                        for n, v in times["cpu"].items()},
           "pairs": {}}
    for label, se, plain in PAIRS:
        if se in times["cpu"] and plain in times["cpu"]:
            res["pairs"][label] = {
                "se": se, "plain": plain,
                **{f"{clock}_ratio": statistics.median(a / b for a, b in zip(times[clock][se], times[clock][plain]))
                   for clock in ("cpu", "wall")},
                "min_ratio": min(times["cpu"][se]) / min(times["cpu"][plain])}
    if args.parts:
        res["parts"] = se_parts(models, x, args.parts_rounds)
    return res


def markdown(res: dict) -> str:
    mi = res["machine"]
    lines = [
        f"Machine: {mi['cpu']}, {mi['cores']} cores, {mi['threads']} thread(s), torch {mi['torch']}"
        + (f", onnxruntime {mi['onnxruntime']}" if "onnxruntime" in mi else "")
        + f"; nice {mi['nice']}; load average {mi['load_average_start'][0]:.2f} at start, "
          f"{mi['load_average_end'][0]:.2f} at end.",
        f"Batch 1 at {mi['image_size']}x{mi['image_size']}, eval mode, {mi['warmup']} warm-up calls, "
        f"{mi['rounds']} interleaved rounds (one call of each variant per round, order rotating); "
        f"medians. Fused against unfused SE logits: max |diff| {mi['fused_max_abs_diff']:.1e}.",
        "",
        "| variant | CPU ms (median) | wall ms (median) | CPU ms (min) |",
        "|---|---:|---:|---:|",
    ]
    for n, v in res["variants"].items():
        lines.append(f"| {n} | {v['cpu_ms']:.1f} | {v['wall_ms']:.1f} | {v['cpu_min_ms']:.1f} |")
    lines += ["", f"FLOPs parity (ours, analytic): {res['flops_parity']:.4f}x.", "",
              "| SE / plain | CPU time | wall time | fastest calls |", "|---|---:|---:|---:|"]
    for label, p in res["pairs"].items():
        lines.append(f"| {label} | {p['cpu_ratio']:.4f}x | {p['wall_ratio']:.4f}x | {p['min_ratio']:.4f}x |")
    if "parts" in res:
        parts, plain = res["parts"], res["variants"]["ours_plain"]["cpu_ms"]
        lines += ["", f"Where the eager tax goes: the SE pieces of the {parts['units']} SE units timed alone "
                  f"(process CPU ms per forward, summed over the units; the excitation reads "
                  f"{parts['excitation_weight_mib']:.1f} MiB of weights per image):", "",
                  "| piece | ms | % of plain forward |", "|---|---:|---:|"]
        for k, v in parts["ms"].items():
            lines.append(f"| {k} | {v:.2f} | {100 * v / plain:.1f}% |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=24, help="timed calls of each variant (default 24)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--no-timm", action="store_true", help="leave timm's anchor pair out")
    p.add_argument("--no-onnx", action="store_true", help="leave the ONNX Runtime rows out")
    p.add_argument("--parts", action="store_true", help="add the SE pieces' times (where the tax goes)")
    p.add_argument("--parts-rounds", type=int, default=15)
    p.add_argument("--json", help="also write the full results here")
    args = p.parse_args(argv)
    for k in ("rounds", "warmup", "threads", "image_size", "parts_rounds"):
        if getattr(args, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be a positive integer, got {getattr(args, k)}")
    res = run(args)
    return benchlib.publish(res, markdown(res), args.json)


if __name__ == "__main__":
    sys.exit(main())
