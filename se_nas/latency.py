"""Measured latency of SE designs on a device: a profile table per space and an additive predictor.

FLOPs price SE badly: at 224x224 SE adds 0.35% FLOPs to ResNet-50 but 5-30% latency on a CPU, by
different factors for different choices (memory-bound pooling and scaling). Like MnasNet and
MobileNetV3, which searched SE placement against measured latency, se-nas measures every distinct
building block a space can produce on the target device once (``profile``) and predicts a design's
latency as a sum of table entries (``predict_latency``), in microseconds, no model built.

A table entry is one residual unit at its input size, keyed by the unit with its stage and index
neutralised (``geometry.resolve(...).units``), so units of one stage with the same shapes share an
entry and the key carries everything that changes the module (widths, stride, groups, SE choice and
slot). Units are timed inside whole models, with a mark before and after each unit: alone, a unit runs
with other caches than inside a network (on a 2-core CPU, the time SE added to ResNet-50's stage 4
was 3x inside the model what it was alone, and a profile of units alone under-predicted SE designs
by 8%, median). Each "carrier" model takes one not yet measured choice in every stage, so one
forward pass measures an entry of every stage. The stem, head and per-call overhead are one entry,
``rest``: the whole plain model's time minus its units', so the plain model is predicted as measured
and a design differs from it by the units that change.

Measurements: warm-up first, then rounds, each running every model of a chunk once in turn
(interleaved, so load drift hits all alike), with the plain model in every chunk as the reference
that cancels drift between chunks; median, p10, p90 and the number of rounds are kept. The file is
rewritten atomically after every chunk, so a rerun resumes.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from .arch import Arch, plain_arch
from .geometry import Unit, resolve, unit_input_sizes
from .untrusted import check_size, preview

TABLE_FORMAT = "se-nas/latency@1"
DTYPES = ("float32", "float16", "bfloat16")
REST = "rest"  # stem + head + per-call overhead: whole plain model minus its units
MODEL = "model"  # the whole plain model, end to end
# What an entry keeps of its repeats (and "n", their number). Each is an estimate on its own (a unit's
# p10 is its time minus its reference's p10 plus the reference's p10 beside the model), so an entry's
# p10 can exceed its median by noise. On a shared machine interference only ever adds time, and the
# p10 is the estimate it disturbs least.
STATS = ("median", "p10", "p90")
MAX_TABLE_BYTES = 32 << 20  # 32 MiB: the default space's full table is about 2 MB (a 100 MB one took 762 MB)


class LatencyError(ValueError):
    """A table that can't be read, doesn't cover a design, or a profile that can't run as asked."""


class LatencyWarning(UserWarning):
    """A table measured on another device, CPU/GPU model, thread count or torch version."""


# --- devices and timers ------------------------------------------------------------------------
def parse_device(device: str) -> tuple[str, int | None]:
    """``"cpu"`` -> ("cpu", None); ``"cuda"`` / ``"cuda:1"`` -> ("cuda", index)."""
    kind, _, index = str(device).partition(":")
    if kind not in TIMERS or (kind == "cpu" and index) or (index and not index.isdigit()):
        raise LatencyError(f"--device must be cpu or cuda[:N], got {device!r}")
    return kind, (int(index) if index else (0 if kind == "cuda" else None))


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


TIMERS: dict[str, Callable] = {"cpu": _CpuClock, "cuda": _CudaClock}


def device_name(device: str) -> str:
    """The CPU model (``/proc/cpuinfo``) or the GPU's name of ``device``."""
    kind, index = parse_device(device)
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise LatencyError(f"--device {device} is not available here: torch {torch.__version__} sees no CUDA "
                               "device (use --device cpu, or profile on the machine that has the GPU)")
        if index >= torch.cuda.device_count():
            raise LatencyError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                               f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return torch.cuda.get_device_name(index)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --- what a table covers -------------------------------------------------------------------------
@dataclass(frozen=True)
class Form:
    """The network around the units: what the ``rest`` entry and the unit shapes depend on."""

    backbone: str
    stride_on: str = "1x1"
    se_bias: bool = False
    stem: str = "imagenet"
    width: float = 1.0
    image_size: int = 224
    num_classes: int = 1000

    @classmethod
    def of(cls, arch: Arch, stem: str, width: float, image_size: int, num_classes: int) -> "Form":
        return cls(arch.backbone, arch.stride_on, arch.se_bias, stem, float(width), image_size, num_classes)

    def plain(self) -> Arch:
        return plain_arch(Arch.uniform(self.backbone, None, stride_on=self.stride_on, se_bias=self.se_bias))


def unit_key(u: Unit, size: int) -> str:
    """A unit's table key: the unit with stage and index neutralised, and its input side."""
    return json.dumps({"unit": asdict(replace(u, stage=0, index=0)), "size": size}, sort_keys=True,
                      separators=(",", ":"))


def _stage_units(form: Form, stage: int, choice) -> list[tuple[str, Unit, int]]:
    """(key, unit, input side) of every unit of ``stage`` when it takes SE ``choice`` (None: plain)."""
    geom = resolve(form.plain().with_stage(stage, choice), form.stem, form.width)
    sizes = unit_input_sizes(geom, form.image_size)
    return [(unit_key(u, s), u, s) for u, s in zip(geom.units, sizes) if u.stage == stage]


def space_options(space, stem: str = "imagenet", width: float = 1.0, image_size: int | None = None,
                  archs: Iterable[Arch] | None = None, num_classes: int | None = None) -> tuple[Form, list[list]]:
    """The form of ``space`` and per stage the SE choices to profile (``None``, the plain unit, first):
    each stage's choice list (``SearchSpace.stage_options``), or with ``archs`` the ones they take.
    Input size and classes default to the space's deployment model's."""
    form = Form.of(space.plain(), stem, width, image_size or space.deploy_image_size,
                   num_classes or space.deploy_num_classes)
    n = len(space.stages)
    options: list[list] = [[None] for _ in range(n)]
    for a in archs if archs is not None else []:
        _check_form(form, a, "--arch")
    for i in range(n):
        for c in (space.stage_options(i) if archs is None else [a.stages[i] for a in archs]):
            if c not in options[i]:
                options[i].append(c)
    return form, options


def space_entries(space, stem: str = "imagenet", width: float = 1.0, image_size: int | None = None,
                  archs: Iterable[Arch] | None = None) -> tuple[Form, dict[str, tuple[Unit, int]]]:
    """The form of ``space`` and every distinct unit its designs can produce (or ``archs`` have), as
    ``{key: (unit, input side)}``."""
    form, options = space_options(space, stem, width, image_size, archs)
    entries: dict[str, tuple[Unit, int]] = {}
    for i, opts in enumerate(options):
        for c in opts:
            for key, u, s in _stage_units(form, i, c):
                entries.setdefault(key, (u, s))
    return form, entries


def _check_form(form: Form, arch: Arch, where: str) -> None:
    for name in ("backbone", "stride_on", "se_bias"):
        if getattr(arch, name) != getattr(form, name):
            raise LatencyError(f"{where}: design {arch.id} has {name}={getattr(arch, name)!r} but the space has "
                               f"{name}={getattr(form, name)!r}")


# --- the table file --------------------------------------------------------------------------------
@dataclass
class LatencyTable:
    """A profile: its header (device, machine, settings, the form it covers) and entries
    ``{key: {"median", "p10", "p90", "n"}}`` in milliseconds."""

    header: dict[str, Any]
    entries: dict[str, dict[str, float]] = field(default_factory=dict)
    path: str = ""

    @property
    def form(self) -> Form:
        return Form(**self.header["form"])

    @property
    def hash(self) -> str:
        """First 12 hex digits of the SHA-1 of the canonical header: which profile a study used."""
        return hashlib.sha1(json.dumps(self.header, sort_keys=True).encode()).hexdigest()[:12]

    def ms(self, key: str, stat: str = "median") -> float:
        return self.entries[key][stat]

    def describe(self) -> str:
        h, f = self.header, self.form
        return (f"{h['device']} ({h['device_name']}, {h['threads']} thread{'s' if h['threads'] != 1 else ''}), torch "
                f"{h['torch']}, {h['dtype']}, batch {h['batch']}, {f.image_size}x{f.image_size}"
                f"{', channels_last' if h['channels_last'] else ''}"
                f"{', process CPU time' if h['clock'] != 'wall' else ''}; {f.backbone} (stride on {f.stride_on}, "
                f"se_bias {str(f.se_bias).lower()}, stem {f.stem}, width {f.width:g})")

    def profile_command(self) -> str:
        """The command that profiles (or resumes) this table's space."""
        h, f = self.header, self.form
        dev = h["device"] + (f" --threads {h['threads']}" if h["device"] == "cpu" else "")
        extra = "".join([f" --stem {f.stem}" if f.stem != "imagenet" else "",
                         f" --clock {h['clock']}" if h["clock"] != "wall" else "",
                         f" --width {f.width:g}" if f.width != 1 else "",
                         f" --num-classes {f.num_classes}" if f.num_classes != 1000 else "",
                         f" --batch {h['batch']}" if h["batch"] != 1 else "",
                         f" --dtype {h['dtype']}" if h["dtype"] != "float32" else "",
                         " --channels-last" if h["channels_last"] else ""])
        return (f"se-nas latency profile --space {h.get('space') or 'SPACE'} --device {dev} --image-size "
                f"{f.image_size}{extra} -o {self.path or 'TABLE'}")

    def save(self, path: str | Path | None = None) -> None:
        """Write atomically (a temporary file, then ``os.replace``): a killed profile leaves the last
        complete file."""
        from .files import atomic_write

        atomic_write(Path(path or self.path),
                     json.dumps({"header": self.header, "entries": self.entries}, indent=1, sort_keys=True) + "\n")


def _check_entries(entries: Any, where: str) -> None:
    """Every entry of a table read from a file: a mapping of ``STATS`` to finite latencies >= 0 ms and
    ``n``, its number of repeats; one line naming the file and the first entry that is not."""
    if not isinstance(entries, dict):
        raise LatencyError(f"latency table {where}: entries must be a mapping of entry to statistics, got "
                           f"{preview(entries)}")
    for key, entry in entries.items():
        if not isinstance(entry, dict):
            raise LatencyError(f"latency table {where}: entry {preview(key)} must be a mapping of "
                               f"{', '.join(STATS)} and n, got {preview(entry)}")
        missing = [q for q in (*STATS, "n") if q not in entry]
        if missing:
            raise LatencyError(f"latency table {where}: entry {preview(key)} has no {', '.join(missing)}; each "
                               f"entry holds {', '.join(STATS)} (ms) and n")
        for q in STATS:
            v = entry[q]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise LatencyError(f"latency table {where}: entry {preview(key)}: {q} must be a finite number of "
                                   f"milliseconds >= 0, got {preview(v)}")
        n = entry["n"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise LatencyError(f"latency table {where}: entry {preview(key)}: n (the number of repeats) must be a "
                               f"positive integer, got {preview(n)}")


def load_table(path: str | Path, on_mismatch: Callable[[str], None] | None = None) -> LatencyTable:
    """Read a table file. One measured on another machine, thread count or torch version than this one
    is accepted with a warning naming the difference (``on_mismatch(text)``, default ``warnings.warn``).
    A file above ``MAX_TABLE_BYTES`` is refused before it is read, and every entry is checked."""
    from .arch import read_text

    check_size(path, "latency table", LatencyError, MAX_TABLE_BYTES)
    text = read_text(path, "latency table", LatencyError)
    try:
        d = json.loads(text)
        header, entries = d["header"], d["entries"]
        if header.get("format") != TABLE_FORMAT:
            raise LatencyError(f"latency table {str(path)!r}: format must be {TABLE_FORMAT!r}, "
                               f"got {header.get('format')!r}")
        _check_entries(entries, repr(str(path)))
        table = LatencyTable(header, entries, str(path))
        table.form  # noqa: B018 - validates the form
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise LatencyError(f"latency table {str(path)!r} is not a se-nas latency table ({type(e).__name__}: {e}); "
                           "`se-nas latency profile ... -o FILE` writes one") from None
    diff = machine_differences(table.header)
    if diff:
        msg = f"latency table {str(path)!r} was measured {diff}; its predictions are for that machine"
        (on_mismatch or (lambda m: warnings.warn(m, LatencyWarning, stacklevel=3)))(msg)
    return table


def machine_differences(header: dict[str, Any]) -> str:
    """How this machine differs from the one a table was measured on ('' if it doesn't): the device's
    name (CPU model or GPU) and torch's version."""
    import torch

    parts = []
    here_torch = torch.__version__.split("+")[0]
    if header["torch"] != here_torch:
        parts.append(f"with torch {header['torch']} (here {here_torch})")
    try:
        here = device_name(header["device"])
    except LatencyError:
        here = f"no {header['device']} device"
    if header["device_name"] != here:
        parts.append(f"on {header['device_name']!r} (here {here!r})")
    return ", ".join(parts)


# --- profiling -----------------------------------------------------------------------------------------
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

    from .build import build_model

    kind, index = parse_device(device)
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
    if kind == "cpu":
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise LatencyError(f"--threads must be a positive integer, got {threads!r}")
        torch.set_num_threads(threads)
    form, options = space_options(space, stem, width, image_size, archs, num_classes)
    header = {"format": TABLE_FORMAT, "device": kind if kind == "cpu" else f"cuda:{index}",
              "device_name": device_name(device), "threads": torch.get_num_threads() if kind == "cpu" else None,
              "torch": torch.__version__.split("+")[0], "dtype": dtype, "batch": batch,
              "channels_last": bool(channels_last), "clock": clock, "form": asdict(form), "space": _space_ref(space)}
    path = Path(path)
    if path.exists():
        table = load_table(path, on_mismatch=lambda m: None)
        diff = {k: (table.header.get(k), v) for k, v in header.items() if table.header.get(k) != v}
        if diff:
            raise LatencyError(f"latency table {str(path)!r} was profiled with other settings ("
                               + ", ".join(f"{k} {a!r}, now {b!r}" for k, (a, b) in diff.items())
                               + "); write this profile to another file with -o")
    else:
        table = LatencyTable(header, {}, str(path))
    dev = torch.device(kind, index) if kind == "cuda" else torch.device("cpu")
    tdtype = getattr(torch, dtype)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    clock_ = TIMERS[kind](dev, clock)
    x = torch.randn(batch, 3, form.image_size, form.image_size, device=dev, dtype=tdtype).contiguous(memory_format=fmt)
    plain = form.plain()

    def carrier(arch: Arch) -> "_Carrier":
        model = build_model(arch, form.num_classes, form.stem, form.width).to(dev, tdtype, memory_format=fmt).eval()
        return _Carrier(model, arch, form, clock_)

    def missing(i, c):
        return any(k not in table.entries for k, _, _ in _stage_units(form, i, c))

    todo = [[c for c in opts[1:] if missing(i, c)] for i, opts in enumerate(options)]
    keys = {k for i, opts in enumerate(options) for c in opts for k, _, _ in _stage_units(form, i, c)}
    total = len(keys) + 1
    with torch.inference_mode():
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
    return table


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
    from .builtin import SPACES_DIR

    source = Path(space.source) if space.source else None
    return space.name if source is None or source.parent == SPACES_DIR else str(source)


def _set_rest(table: LatencyTable, plain_keys: list[str]) -> None:
    whole = table.entries[MODEL]
    table.entries[REST] = {**{q: max(0.0, whole[q] - sum(table.ms(k, q) for k in plain_keys)) for q in STATS},
                           "n": whole["n"]}


# --- prediction ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Latency:
    """A design's predicted latency in milliseconds: per stage (its units) and the rest (stem, head,
    per-call overhead)."""

    ms: float
    stages: tuple[float, ...]
    rest: float


class LatencyPredictor:
    """Predicts designs' latency from a table: per stage and SE choice the sum of its units' entries,
    computed on first use and cached, so a design costs one dict lookup per stage."""

    def __init__(self, table: LatencyTable, stat: str = "median"):
        if stat not in STATS:
            raise LatencyError(f"latency statistic must be one of {', '.join(STATS)}, got {stat!r}")
        self.table, self.form, self.stat = table, table.form, stat
        self._stage: dict[tuple[int, Any], float] = {}
        self.rest = table.ms(REST, stat) if REST in table.entries else None

    def stage_ms(self, stage: int, choice) -> float:
        try:
            return self._stage[stage, choice]
        except KeyError:
            pass
        total = 0.0
        for key, u, s in _stage_units(self.form, stage, choice):
            if key not in self.table.entries:
                raise self._missing(u, s)
            total += self.table.ms(key, self.stat)
        self._stage[stage, choice] = total
        return total

    def _missing(self, u: Unit, size: int) -> LatencyError:
        se = "no SE" if u.se is None else f"SE {u.se.label} in its {u.slot} slot"
        return LatencyError(
            f"latency table {self.table.path!r} has no entry for stage {u.stage + 1} unit {u.index + 1} "
            f"({u.in_ch}->{u.out_ch} channels at {size}x{size}) with {se}; profile it with: "
            f"{self.table.profile_command()} (a rerun measures only what is missing; --arch FILE adds one design)")

    def ms(self, arch: Arch) -> float:
        """The predicted latency of ``arch`` in milliseconds (the fast path of ``predict``)."""
        self.check(arch)
        stage = self._stage
        total = self.rest
        for i, c in enumerate(arch.stages):
            v = stage.get((i, c))
            total += self.stage_ms(i, c) if v is None else v
        return total

    def check(self, arch: Arch) -> None:
        f = self.form
        if (arch.backbone, arch.stride_on, arch.se_bias) != (f.backbone, f.stride_on, f.se_bias) or self.rest is None:
            raise LatencyError(
                f"latency table {self.table.path!r} covers {f.backbone} (stride on {f.stride_on}, se_bias "
                f"{str(f.se_bias).lower()}), not design {arch.id}: {arch.backbone} (stride on {arch.stride_on}, "
                f"se_bias {str(arch.se_bias).lower()}); profile a space of that form with: se-nas latency "
                f"profile --space SPACE --device {self.table.header['device']} -o OTHER.json")

    def predict(self, arch: Arch) -> Latency:
        total = self.ms(arch)
        return Latency(total, tuple(self._stage[i, c] for i, c in enumerate(arch.stages)), self.rest)


_PREDICTORS: dict[tuple[str, str], LatencyPredictor] = {}


def predictor(table: LatencyTable | str | Path) -> LatencyPredictor:
    """The predictor of a table (a table file path is read once per process and cached)."""
    if isinstance(table, LatencyTable):
        return LatencyPredictor(table)
    path = str(table)
    stamp = str(os.stat(path).st_mtime_ns) if os.path.exists(path) else ""
    if (path, stamp) not in _PREDICTORS:
        _PREDICTORS[path, stamp] = LatencyPredictor(load_table(path))
    return _PREDICTORS[path, stamp]


def predict_latency(arch: Arch, table: LatencyTable | str | Path, image_size: int | None = None) -> Latency:
    """Predicted latency of ``build_model(arch, ...)`` on the device ``table`` was profiled on, as the
    sum of its entries (stem/head/overhead, then each unit); ``image_size`` only checks the table's."""
    p = predictor(table)
    p.check(arch)
    if image_size is not None and image_size != p.form.image_size:
        size = p.form.image_size
        command = p.table.profile_command().replace(f"--image-size {size}", f"--image-size {image_size}")
        raise LatencyError(f"latency table {p.table.path!r} was profiled at {size}x{size}, not "
                           f"{image_size}x{image_size}; profile it with: {command}")
    return p.predict(arch)

