"""Profiling a device: every distinct unit a space can produce, timed inside whole models, into a
latency table (``se_nas.design.latency``, which holds the table and the predictor that reads it).

Units are timed inside whole models, with a mark before and after each unit: alone, a unit runs
with other caches than inside a network (on a 2-core CPU, the time SE added to ResNet-50's stage 4
was 3x inside the model what it was alone, and a profile of units alone under-predicted SE designs
by 8%, median). Each "carrier" model takes one not yet measured choice in every stage, so one
forward pass measures an entry of every stage. The stem, head and per-call overhead are one entry,
``rest``: the whole plain model's time minus its units', so the plain model is predicted as measured
and a design differs from it by the units that change.

Measurements: warm-up first, then rounds, each running every model of a chunk once in turn
(interleaved, so load drift hits all alike), with the plain model in every chunk as the reference
that cancels drift between chunks; median, p10, p90 and the number of rounds are kept. The file is
rewritten atomically after every chunk, so a rerun resumes. On a GPU, CUDA events time the marks.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from ..design.arch import Arch
from ..design.geometry import resolve, unit_input_sizes
from ..design.latency import (CHECK_RANDOM, CHECK_SEED, DEFAULT_RUNTIME, DTYPES, MODEL, REST, STATS, TABLE_FORMAT,
                              Form, LatencyError, LatencyPredictor, LatencyTable, check_summary, stage_units,
                              device_name, load_table, parse_device, space_options, unit_key)


# --- devices and timers ------------------------------------------------------------------------
# Clocks of the CPU timer. "wall" is what a user waits; "process" is this process's CPU time, which
# other jobs on a shared machine do not inflate (only their cache traffic): with one thread it equals
# the wall time of an idle machine, so it measures a loaded machine's latency as if idle.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "process": time.process_time}


class _CpuClock:
    """Marks on a CPU clock; ``ms(a, b)`` between two marks."""

    def __init__(self, dev, clock: str = "wall"):
        self.mark = CLOCKS[clock]

    def ms(self, a: float, b: float) -> float:
        return (b - a) * 1e3

    def sync(self) -> None:
        pass

    def __call__(self, call: Callable[[], Any]) -> float:
        """The time of one ``call()`` in milliseconds."""
        self.sync()
        a = self.mark()
        call()
        b = self.mark()
        self.sync()
        return self.ms(a, b)


class _CudaClock(_CpuClock):
    """Marks are CUDA events recorded on the stream; read after a synchronize (kernels are asynchronous)."""

    def __init__(self, dev, clock: str = "wall"):
        import torch

        self.torch, self.dev = torch, dev

    def mark(self):
        e = self.torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    def ms(self, a, b) -> float:
        return a.elapsed_time(b)

    def sync(self) -> None:
        self.torch.cuda.synchronize(self.dev)


TIMERS: dict[str, Callable] = {"cpu": _CpuClock, "cuda": _CudaClock}  # one per latency.DEVICE_KINDS


# --- runtimes: what runs the model being timed ------------------------------------------------------
class _Torch:
    """Eager torch (``torch.inference_mode``): units timed by forward hooks on their modules."""

    name = "torch"

    def __init__(self, kind: str, threads: int | None, clock: str):
        pass

    def call(self, model, x) -> Callable[[], Any]:
        """One forward pass of the whole ``model`` on ``x``."""
        return lambda: model(x)

    def carrier(self, model, arch: Arch, form: Form, clock) -> "_Carrier":
        return _Carrier(model, arch, form, clock)


class _OnnxRuntime:
    """ONNX Runtime's CPU execution provider, on the model exported to ONNX (the TorchScript-based
    exporter, opset 17) with every graph optimisation (BatchNorm folded into the convolutions, NCHWc
    layouts). Units are timed by ORT's own per-node profile: each node's kernel time, summed per unit
    by the module name ORT keeps in the node's name (a layout reorder ORT inserted goes to the unit
    before it)."""

    name = "onnxruntime"

    def __init__(self, kind: str, threads: int | None, clock: str):
        self.ort = import_onnxruntime()
        if kind != "cpu":
            raise LatencyError(f"--runtime onnxruntime times its CPU execution provider: use --device cpu, got {kind}")
        if clock != "wall":
            raise LatencyError("--runtime onnxruntime times wall clock (its per-node profile is wall time): "
                               f"--clock wall, got {clock!r}")
        self.threads = threads or 1

    def session(self, model, x, profile: bool = False):
        import io
        import tempfile
        import warnings

        import torch

        buffer = io.BytesIO()
        with warnings.catch_warnings():  # the legacy exporter's deprecation, tracing's branch warnings
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17, input_names=["images"],
                              output_names=["logits"])
        opts = self.ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = self.threads, 1
        opts.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if profile:
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="se-nas-ort-")) / "profile")
        return self.ort.InferenceSession(buffer.getvalue(), opts, providers=["CPUExecutionProvider"])

    def call(self, model, x) -> Callable[[], Any]:
        sess, feed = self.session(model, x), {"images": x.numpy()}
        return lambda: sess.run(None, feed)

    def carrier(self, model, arch: Arch, form: Form, clock) -> "_OrtCarrier":
        return _OrtCarrier(self, model, arch, form, clock)


def import_onnxruntime():
    """The ``onnxruntime`` module, or one line naming the extra that installs it."""
    try:
        import onnxruntime
    except ImportError:
        raise LatencyError("--runtime onnxruntime needs the onnxruntime package: pip install 'se-nas[onnxruntime]' "
                           "(or pip install onnxruntime)") from None
    return onnxruntime


RUNTIMES: dict[str, Callable] = {"torch": _Torch, "onnxruntime": _OnnxRuntime}  # one per latency.RUNTIMES


def runtime(name: str, kind: str = "cpu", threads: int | None = 1, clock: str = "wall"):
    """The runtime ``name`` (a ``RUNTIMES`` entry) set up for ``kind`` / ``threads`` / ``clock``."""
    from ..design.choices import pick

    try:
        make = pick(RUNTIMES, name, "--runtime")
    except ValueError as e:
        raise LatencyError(str(e)) from None
    return make(kind, threads, clock)


def _stats(times: list[float]) -> dict[str, float]:
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else [times[0]] * 9
    return {"median": statistics.median(times), "p10": q[0], "p90": q[-1], "n": len(times)}


def measure_interleaved(calls: dict[str, Callable[[], Any]], timer, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Times of each call over ``rounds`` rounds, each round timing every call once in turn, after
    ``warmup`` untimed calls of each."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    out: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, call in calls.items():
            out[k].append(timer(call))
    return out


def profile(space, path: str | Path, *, device: str = "cpu", threads: int | None = 1, batch: int = 1,
            image_size: int | None = None, dtype: str = "float32", channels_last: bool = False,
            stem: str = "imagenet", width: float = 1.0, archs: Iterable[Arch] | None = None, rounds: int = 15,
            num_classes: int | None = None, warmup: int = 3, chunk: int = 6, clock: str = "wall",
            runtime_: str = DEFAULT_RUNTIME, check: int = CHECK_RANDOM,
            progress: Callable[[int, int], None] | None = None) -> LatencyTable:
    """Measure every distinct unit ``space`` can produce (or those ``archs`` have) on ``device`` and
    write the table to ``path``; an existing table with the same header is resumed (its entries are
    kept, the missing ones measured). ``progress(done, total)`` is called after every chunk.
    ``runtime_`` runs the models (``RUNTIMES``: eager torch, or ONNX Runtime on the CPU).

    Then the check (``check`` random designs of the profiled options, seeded, besides the plain and
    the r=16-everywhere design; 0: none): each whole design timed ``rounds`` times, interleaved, and
    compared with its prediction (``latency.check_summary``), stored in the table as its uncertainty.
    The check's designs are profiled too, so the r=16 design may add entries to a space without r=16.

    Units are timed inside whole models (a hook before and after each unit), because a unit alone
    runs with other caches than inside a network. Each "carrier" model takes a not yet measured
    choice in every stage, so one forward pass measures an entry of every stage; a chunk of carriers
    is measured interleaved with the plain model, and an entry is its time minus the plain unit's at the same place in the same
    chunk plus that plain unit's time in the first chunk (load drift between chunks cancels)."""
    import torch

    kind, index = parse_device(device)
    _check_settings(kind, threads, batch, dtype, rounds, chunk, clock)
    if isinstance(check, bool) or not isinstance(check, int) or check < 0:
        raise LatencyError(f"--check must be a whole number of random designs >= 0, got {check!r}")
    rt = runtime(runtime_, kind, threads, clock)
    if kind == "cpu":
        torch.set_num_threads(threads)
    form, options = space_options(space, stem, width, image_size, archs, num_classes)
    designs = check_designs(form, options, check) if check else []
    for a in designs:  # the check's designs are priced from the table: profile what they need
        for i, c in enumerate(a.stages):
            if c not in options[i]:
                options[i].append(c)
    header = {"format": TABLE_FORMAT, "device": kind if kind == "cpu" else f"cuda:{index}",
              "device_name": device_name(device), "threads": torch.get_num_threads() if kind == "cpu" else None,
              "torch": torch.__version__.split("+")[0], "dtype": dtype, "batch": batch,
              "channels_last": bool(channels_last), "clock": clock, "form": asdict(form), "space": _space_ref(space),
              **({"runtime": rt.name} if rt.name != DEFAULT_RUNTIME else {})}  # a torch table's header is as before
    table = _table_to_resume(Path(path), header)
    dev = torch.device(kind, index) if kind == "cuda" else torch.device("cpu")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, form.image_size, form.image_size, device=dev,
                    dtype=getattr(torch, dtype)).contiguous(memory_format=fmt)
    timer = TIMERS[kind](dev, clock)
    with torch.inference_mode():
        _measure(table, form, options, x, fmt, timer, rounds, warmup, chunk, progress, rt)
        if designs:
            table.check = measure_check(table, designs, x, fmt, timer, rounds, warmup, rt)
            table.save()
    return table


def check_designs(form: Form, options: list[list], n_random: int) -> list[Arch]:
    """The check's designs: the plain backbone, r=16 SE everywhere (the paper's) and ``n_random``
    designs drawn from ``options`` (each stage's profiled choices) with ``CHECK_SEED``: the same on
    every run."""
    import random

    from ..design.arch import StageSE

    plain = form.plain()
    rng = random.Random(CHECK_SEED)
    out = [plain, replace(plain, stages=tuple(StageSE() for _ in plain.stages))]
    out += [replace(plain, stages=tuple(rng.choice(o) for o in options)) for _ in range(n_random)]
    return list(dict.fromkeys(out))


def recheck(table: LatencyTable, rounds: int | None = None, warmup: int = 3) -> dict[str, Any]:
    """The check of ``table`` measured again now, on its device, runtime and settings: its stored
    designs (a table without a check: the plain design and r=16 everywhere if the table prices it),
    timed whole and compared with its predictions (``latency.check_summary``)."""
    import torch

    from ..design.arch import Arch

    h, form = table.header, table.form
    kind, index = parse_device(h["device"])
    rt = runtime(table.runtime, kind, h["threads"], h["clock"])
    if kind == "cpu":
        torch.set_num_threads(h["threads"])
    if table.check:
        designs = [Arch.from_dict(d["arch"], f"latency table {table.path!r}: check") for d in table.check["designs"]]
        rounds = rounds or table.check["rounds"]
    else:
        p = LatencyPredictor(table)  # the plain design and r=16 everywhere, where the table prices it
        designs = [d for d in check_designs(form, [[None] for _ in form.plain().stages], 0) if _priced(p, d)]
        rounds = rounds or 15
    dev = torch.device(kind, index) if kind == "cuda" else torch.device("cpu")
    fmt = torch.channels_last if h["channels_last"] else torch.contiguous_format
    x = torch.randn(h["batch"], 3, form.image_size, form.image_size, device=dev,
                    dtype=getattr(torch, h["dtype"])).contiguous(memory_format=fmt)
    with torch.inference_mode():
        return measure_check(table, designs, x, fmt, TIMERS[kind](dev, h["clock"]), rounds, warmup, rt)


def _priced(p: LatencyPredictor, arch: Arch) -> bool:
    try:
        p.ms(arch)
        return True
    except LatencyError:
        return False


def measure_check(table: LatencyTable, designs: list[Arch], x, fmt, timer, rounds: int, warmup: int,
                  rt=None) -> dict[str, Any]:
    """Time each of ``designs`` whole (``rounds`` interleaved calls) on the table's runtime, and compare
    with the table's predictions (``latency.check_summary``)."""
    from .build import build_model

    rt = rt or runtime(table.runtime)
    form, predictor = table.form, LatencyPredictor(table)
    calls = {}
    for a in designs:
        model = build_model(a, form.num_classes, form.stem, form.width).to(x.device, x.dtype, memory_format=fmt).eval()
        calls[a.id] = rt.call(model, x)
    times = measure_interleaved(calls, timer, rounds, warmup)
    rows = [{"id": a.id, "arch": a.to_dict(), "predicted_ms": predictor.ms(a), "times": times[a.id]} for a in designs]
    return check_summary(rows, rounds)


def _check_settings(kind: str, threads, batch, dtype: str, rounds, chunk, clock: str) -> None:
    """The profile's flags, each refused in one line naming it."""
    if clock not in CLOCKS or (kind == "cuda" and clock != "wall"):
        raise LatencyError(f"--clock must be one of {', '.join(CLOCKS) if kind == 'cpu' else 'wall'} on {kind}, "
                           f"got {clock!r}")
    if clock == "process" and threads != 1:
        raise LatencyError(f"--clock process measures one thread's latency (CPU time adds up over threads), "
                           f"got --threads {threads}")
    if dtype not in DTYPES:
        raise LatencyError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    for name, v in (("--batch", batch), ("--rounds", rounds), ("--chunk", chunk)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise LatencyError(f"{name} must be a positive integer, got {v!r}")
    if kind == "cpu" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise LatencyError(f"--threads must be a positive integer, got {threads!r}")


def _table_to_resume(path: Path, header: dict) -> LatencyTable:
    """The table at ``path`` to resume (refused if profiled with other settings), or a new one. A
    resumed table keeps its header (so its hash), and a header without a runtime is a torch table's."""
    if not path.exists():
        return LatencyTable(header, {}, str(path))
    table = load_table(path, on_mismatch=lambda m: None)
    old = {"runtime": DEFAULT_RUNTIME, **table.header}
    new = {"runtime": DEFAULT_RUNTIME, **header}
    diff = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
    if diff:
        raise LatencyError(f"latency table {str(path)!r} was profiled with other settings ("
                           + ", ".join(f"{k} {a!r}, now {b!r}" for k, (a, b) in diff.items())
                           + "); write this profile to another file with -o")
    return table


def _measure(table: LatencyTable, form: Form, options, x, fmt, clock, rounds: int, warmup: int, chunk: int,
             progress: Callable[[int, int], None] | None, rt) -> None:
    """Fill ``table`` with the entries ``options`` still miss: the plain model first, then chunks of
    carriers interleaved with it; the table is saved after each."""
    from .build import build_model

    plain = form.plain()

    def carrier(arch: Arch) -> "_Carrier":
        model = build_model(arch, form.num_classes, form.stem, form.width).to(x.device, x.dtype, memory_format=fmt)
        return rt.carrier(model.eval(), arch, form, clock)

    def missing(i, c):
        return any(k not in table.entries for k, _, _ in stage_units(form, i, c))

    todo = [[c for c in opts[1:] if missing(i, c)] for i, opts in enumerate(options)]
    keys = {k for i, opts in enumerate(options) for c in opts for k, _, _ in stage_units(form, i, c)}
    total = len(keys) + 1
    base = carrier(plain)
    plain_keys = [k for k, _, _ in base.units]
    pooled = None  # a fresh table: the plain model's samples over the whole profile, its anchor
    if any(missing(i, None) for i in range(len(options))) or MODEL not in table.entries:
        pooled = base.measure([base], x, 2 * rounds, warmup)[0]
        _anchor(table, pooled, plain_keys)
        table.save()
    deltas: dict[str, tuple[str, dict[str, float], int]] = {}  # key: (plain key, minus it in its chunk, n)
    n_carriers = max(map(len, todo))
    archs_ = [replace(plain, stages=tuple(t[j] if j < len(t) else None for t in todo)) for j in range(n_carriers)]
    if progress:
        progress(total - sum(k not in table.entries for k in keys), total)
    for start in range(0, n_carriers, chunk):
        carriers = [base] + [carrier(a) for a in archs_[start:start + chunk]]
        measured = base.measure(carriers, x, rounds, warmup)
        here = {k: _stats(v) for k, v in measured[0].items() if k != MODEL}
        for c, samples in zip(carriers[1:], measured[1:]):
            for (k, u, s), (ref, _, _) in zip(c.units, base.units):
                if k not in table.entries:
                    st = _stats(samples[k])
                    deltas[k] = (ref, {q: st[q] - here[ref][q] for q in STATS}, st["n"])
        if pooled is not None:  # the anchor follows the plain model through the whole profile
            for k, v in measured[0].items():
                pooled[k] += v
            _anchor(table, pooled, plain_keys)
        for k, (ref, d, n) in deltas.items():
            # a difference of noisy times can come out below zero for a tiny unit on a loaded
            # machine; no unit takes negative time, and the table's reader refuses one
            table.entries[k] = {**{q: max(0.0, d[q] + table.ms(ref, q)) for q in STATS}, "n": n}
        del carriers, measured
        table.save()
        if progress:
            progress(total - sum(k not in table.entries for k in keys), total)


class _Carrier:
    """A whole model with a mark before and after each of its units: one forward pass times the model
    and every unit in it."""

    def __init__(self, model, arch: Arch, form: Form, clock, hooks: bool = True):
        from .build import make_unit

        geom = resolve(arch, form.stem, form.width)
        self.units = [(unit_key(u, s), u, s) for u, s in zip(geom.units, unit_input_sizes(geom, form.image_size))]
        kind = type(make_unit(geom.units[0], arch.se_bias))  # the builder's module type of a unit
        modules = [m for m in model.modules() if type(m) is kind]
        if len(modules) != len(self.units):
            raise LatencyError(f"the model of {arch.id} has {len(modules)} unit modules, its geometry "
                               f"{len(self.units)}: the builder and geometry disagree")
        self.model, self.clock, self.marks = model, clock, []
        self.names = [n for n, m in model.named_modules() if type(m) is kind]  # the units' module names
        for m in modules if hooks else ():
            m.register_forward_pre_hook(lambda mod, inp: self.marks.append(self.clock.mark()))
            m.register_forward_hook(lambda mod, inp, out: self.marks.append(self.clock.mark()))

    def run(self, x) -> dict[str, float]:
        """One forward pass: the model's time and each unit key's (the mean over the units sharing it)."""
        clock = self.clock
        self.marks.clear()
        clock.sync()
        a = clock.mark()
        self.model(x)
        b = clock.mark()
        clock.sync()
        per_key: dict[str, list[float]] = {}
        for (k, _, _), i in zip(self.units, range(0, len(self.marks), 2)):
            per_key.setdefault(k, []).append(clock.ms(self.marks[i], self.marks[i + 1]))
        return {MODEL: clock.ms(a, b), **{k: statistics.fmean(v) for k, v in per_key.items()}}

    def warm(self, x) -> None:
        self.model(x)

    def finish(self, samples: dict[str, list[float]], warmup: int) -> None:
        """Complete ``samples`` after the rounds (ONNX Runtime's unit times are read then)."""

    @staticmethod
    def measure(carriers: list["_Carrier"], x, rounds: int, warmup: int) -> list[dict[str, list[float]]]:
        """Each carrier's samples over ``rounds`` rounds, each round running every carrier once in turn."""
        for c in carriers:
            for _ in range(warmup):
                c.warm(x)
        out: list[dict[str, list[float]]] = [{} for _ in carriers]
        for _ in range(rounds):
            for c, o in zip(carriers, out):
                for k, v in c.run(x).items():
                    o.setdefault(k, []).append(v)
        for c, o in zip(carriers, out):
            c.finish(o, warmup)
        return out


class _OrtCarrier(_Carrier):
    """A whole model in two ONNX Runtime sessions: one plain, whose passes the clock times whole (as
    the model runs deployed), and one with ORT's per-node profile on, run right after it in each round,
    whose nodes' kernel times summed per unit are the units' times (read after the rounds). Profiling
    costs time between nodes, not in them: the whole pass is timed without it."""

    def __init__(self, rt: _OnnxRuntime, model, arch: Arch, form: Form, clock):
        super().__init__(model, arch, form, clock, hooks=False)  # no torch hooks: the model runs in ONNX Runtime
        self.session = self.profiled = None
        self.rt = rt

    def _feed(self, x):
        if self.session is None:
            self.session = self.rt.session(self.model, x)
            self.feed = {"images": x.numpy()}
        if self.profiled is None:
            self.profiled = self.rt.session(self.model, x, profile=True)
        return self.feed

    def warm(self, x) -> None:
        feed = self._feed(x)
        self.session.run(None, feed)
        self.profiled.run(None, feed)

    def run(self, x) -> dict[str, float]:
        feed = self._feed(x)
        ms = self.clock(lambda: self.session.run(None, feed))
        self.profiled.run(None, feed)
        return {MODEL: ms}

    def finish(self, samples: dict[str, list[float]], warmup: int) -> None:
        import json
        import os
        import shutil

        file = self.profiled.end_profiling()
        self.profiled = None  # a session profiles once: the next measurement (the plain carrier's) starts another
        events = json.loads(Path(file).read_text())
        shutil.rmtree(os.path.dirname(file), ignore_errors=True)
        runs = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
        nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
        runs = runs[-len(samples[MODEL]):]  # the timed passes: the warm-up ones came first
        per_run: list[dict[str, list[float]]] = [{} for _ in runs]
        keys = [k for k, _, _ in self.units]
        segments = [f"/{n}/" for n in self.names]
        for i, (a, b) in enumerate(runs):
            unit = None  # a node without a module name (a layout reorder) belongs to the unit before it
            totals = [0.0] * len(keys)
            for e in nodes:
                if not a <= e["ts"] <= b:
                    continue
                if e["name"].startswith("/"):
                    unit = next((j for j, s in enumerate(segments) if s in e["name"]), None)
                if unit is not None:
                    totals[unit] += e["dur"] / 1e3
            for k, t in zip(keys, totals):
                per_run[i].setdefault(k, []).append(t)
        for d in per_run:
            for k, v in d.items():
                samples.setdefault(k, []).append(statistics.fmean(v))


def _space_ref(space) -> str:
    """How the profile command names ``space``: its built-in name, else its file."""
    from ..design.builtin import SPACES_DIR

    source = Path(space.source) if space.source else None
    return space.name if source is None or source.parent == SPACES_DIR else str(source)


def _anchor(table: LatencyTable, pooled: dict[str, list[float]], plain_keys: list[str]) -> None:
    """The plain model's entries (whole, each unit, the rest) from its ``pooled`` samples: every chunk
    measures it, so the table's level is the plain model's over the whole profile, not its first
    seconds (on a shared machine the same model's time moves by several percent within minutes)."""
    for k, times in pooled.items():
        table.entries[k] = _stats(times)
    _set_rest(table, plain_keys)


def _set_rest(table: LatencyTable, plain_keys: list[str]) -> None:
    whole = table.entries[MODEL]
    table.entries[REST] = {**{q: max(0.0, whole[q] - sum(table.ms(k, q) for k in plain_keys)) for q in STATS},
                           "n": whole["n"]}
