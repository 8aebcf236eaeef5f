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
from ..design.latency import (DTYPES, MODEL, REST, STATS, TABLE_FORMAT, Form, LatencyError, LatencyTable, stage_units,
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
            progress: Callable[[int, int], None] | None = None) -> LatencyTable:
    """Measure every distinct unit ``space`` can produce (or those ``archs`` have) on ``device`` and
    write the table to ``path``; an existing table with the same header is resumed (its entries are
    kept, the missing ones measured). ``progress(done, total)`` is called after every chunk.

    Units are timed inside whole models (a hook before and after each unit), because a unit alone
    runs with other caches than inside a network. Each "carrier" model takes a not yet measured
    choice in every stage, so one forward pass measures an entry of every stage; a chunk of carriers
    is measured interleaved with the plain model, and an entry is its time minus the plain unit's at the same place in the same
    chunk plus that plain unit's time in the first chunk (load drift between chunks cancels)."""
    import torch

    kind, index = parse_device(device)
    _check_settings(kind, threads, batch, dtype, rounds, chunk, clock)
    if kind == "cpu":
        torch.set_num_threads(threads)
    form, options = space_options(space, stem, width, image_size, archs, num_classes)
    header = {"format": TABLE_FORMAT, "device": kind if kind == "cpu" else f"cuda:{index}",
              "device_name": device_name(device), "threads": torch.get_num_threads() if kind == "cpu" else None,
              "torch": torch.__version__.split("+")[0], "dtype": dtype, "batch": batch,
              "channels_last": bool(channels_last), "clock": clock, "form": asdict(form), "space": _space_ref(space)}
    table = _table_to_resume(Path(path), header)
    dev = torch.device(kind, index) if kind == "cuda" else torch.device("cpu")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, form.image_size, form.image_size, device=dev,
                    dtype=getattr(torch, dtype)).contiguous(memory_format=fmt)
    with torch.inference_mode():
        _measure(table, form, options, x, fmt, TIMERS[kind](dev, clock), rounds, warmup, chunk, progress)
    return table


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
    """The table at ``path`` to resume (refused if profiled with other settings), or a new one."""
    if not path.exists():
        return LatencyTable(header, {}, str(path))
    table = load_table(path, on_mismatch=lambda m: None)
    diff = {k: (table.header.get(k), v) for k, v in header.items() if table.header.get(k) != v}
    if diff:
        raise LatencyError(f"latency table {str(path)!r} was profiled with other settings ("
                           + ", ".join(f"{k} {a!r}, now {b!r}" for k, (a, b) in diff.items())
                           + "); write this profile to another file with -o")
    return table


def _measure(table: LatencyTable, form: Form, options, x, fmt, clock, rounds: int, warmup: int, chunk: int,
             progress: Callable[[int, int], None] | None) -> None:
    """Fill ``table`` with the entries ``options`` still miss: the plain model first, then chunks of
    carriers interleaved with it; the table is saved after each."""
    from .build import build_model

    plain = form.plain()

    def carrier(arch: Arch) -> "_Carrier":
        model = build_model(arch, form.num_classes, form.stem, form.width).to(x.device, x.dtype, memory_format=fmt)
        return _Carrier(model.eval(), arch, form, clock)

    def missing(i, c):
        return any(k not in table.entries for k, _, _ in stage_units(form, i, c))

    todo = [[c for c in opts[1:] if missing(i, c)] for i, opts in enumerate(options)]
    keys = {k for i, opts in enumerate(options) for c in opts for k, _, _ in stage_units(form, i, c)}
    total = len(keys) + 1
    base = carrier(plain)
    if any(missing(i, None) for i in range(len(options))) or MODEL not in table.entries:
        samples = base.measure([base], x, 2 * rounds, warmup)[0]
        table.entries[MODEL] = _stats(samples.pop(MODEL))
        for k, times in samples.items():
            table.entries[k] = _stats(times)
        _set_rest(table, [k for k, _, _ in base.units])
        table.save()
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
                if k in table.entries:
                    continue
                st = _stats(samples[k])
                # a difference of noisy times can come out below zero for a tiny unit on a loaded
                # machine; no unit takes negative time, and the table's reader refuses one
                table.entries[k] = {**{q: max(0.0, st[q] - here[ref][q] + table.ms(ref, q)) for q in STATS},
                                    "n": st["n"]}
        del carriers, measured
        table.save()
        if progress:
            progress(total - sum(k not in table.entries for k in keys), total)


class _Carrier:
    """A whole model with a mark before and after each of its units: one forward pass times the model
    and every unit in it."""

    def __init__(self, model, arch: Arch, form: Form, clock):
        from .build import make_unit

        geom = resolve(arch, form.stem, form.width)
        self.units = [(unit_key(u, s), u, s) for u, s in zip(geom.units, unit_input_sizes(geom, form.image_size))]
        kind = type(make_unit(geom.units[0], arch.se_bias))  # the builder's module type of a unit
        modules = [m for m in model.modules() if type(m) is kind]
        if len(modules) != len(self.units):
            raise LatencyError(f"the model of {arch.id} has {len(modules)} unit modules, its geometry "
                               f"{len(self.units)}: the builder and geometry disagree")
        self.model, self.clock, self.marks = model, clock, []
        for m in modules:
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

    @staticmethod
    def measure(carriers: list["_Carrier"], x, rounds: int, warmup: int) -> list[dict[str, list[float]]]:
        """Each carrier's samples over ``rounds`` rounds, each round running every carrier once in turn."""
        for c in carriers:
            for _ in range(warmup):
                c.model(x)
        out: list[dict[str, list[float]]] = [{} for _ in carriers]
        for _ in range(rounds):
            for c, o in zip(carriers, out):
                for k, v in c.run(x).items():
                    o.setdefault(k, []).append(v)
        return out


def _space_ref(space) -> str:
    """How the profile command names ``space``: its built-in name, else its file."""
    from ..design.builtin import SPACES_DIR

    source = Path(space.source) if space.source else None
    return space.name if source is None or source.parent == SPACES_DIR else str(source)


def _set_rest(table: LatencyTable, plain_keys: list[str]) -> None:
    whole = table.entries[MODEL]
    table.entries[REST] = {**{q: max(0.0, whole[q] - sum(table.ms(k, q) for k in plain_keys)) for q in STATS},
                           "n": whole["n"]}
