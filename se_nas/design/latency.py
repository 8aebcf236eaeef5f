"""Measured latency of SE designs on a device: the profile table of a space and an additive predictor.

FLOPs price SE badly: at 224x224 SE adds 0.35% FLOPs to ResNet-50 but 5-30% latency on a CPU, by
different factors for different choices (memory-bound pooling and scaling). Like MnasNet and
MobileNetV3, which searched SE placement against measured latency, se-nas measures every distinct
building block a space can produce on the target device once (``se_nas.nn.profile.profile``) and
predicts a design's latency as a sum of table entries (``predict_latency``), in microseconds, no model
built. This module is the table and the predictor; it needs no torch.

A table entry is one residual unit at its input size, keyed by the unit with its stage and index
neutralised (``geometry.resolve(...).units``), so units of one stage with the same shapes share an
entry and the key carries everything that changes the module (widths, stride, groups, SE choice and
slot). The stem, head and per-call overhead are one entry, ``rest``; the whole plain model is ``model``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import SeNasError
from ..design.arch import Arch, plain_arch
from ..design.geometry import Unit, resolve, unit_input_sizes
from ..design.untrusted import check_size, preview

TABLE_FORMAT = "se-nas/latency@1"
DEFAULT_RUNTIME = "torch"  # a table without a runtime field was timed in torch (eager)
RUNTIMES = ("torch", "onnxruntime")  # what may run the model (se_nas.nn.profile.RUNTIMES times each)
DTYPES = ("float32", "float16", "bfloat16")
REST = "rest"  # stem + head + per-call overhead: whole plain model minus its units
MODEL = "model"  # the whole plain model, end to end
# What an entry keeps of its repeats (and "n", their number). Each is an estimate on its own (a unit's
# p10 is its time minus its reference's p10 plus the reference's p10 beside the model), so an entry's
# p10 can exceed its median by noise. On a shared machine interference only ever adds time, and the
# p10 is the estimate it disturbs least.
STATS = ("median", "p10", "p90")
MAX_TABLE_BYTES = 32 << 20  # 32 MiB: the default space's full table is about 2 MB (a 100 MB one took 762 MB)


class LatencyError(SeNasError):
    """A table that can't be read, doesn't cover a design, or a profile that can't run as asked."""


# --- devices ---------------------------------------------------------------------------------------------
DEVICE_KINDS = ("cpu", "cuda")  # what a table may be profiled on (se_nas.nn.profile.TIMERS times each)


def parse_device(device: str) -> tuple[str, int | None]:
    """``"cpu"`` -> ("cpu", None); ``"cuda"`` / ``"cuda:1"`` -> ("cuda", index)."""
    kind, _, index = str(device).partition(":")
    if kind not in DEVICE_KINDS or (kind == "cpu" and index) or (index and not index.isdigit()):
        raise LatencyError(f"--device must be cpu or cuda[:N], got {device!r}")
    return kind, (int(index) if index else (0 if kind == "cuda" else None))


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


class LatencyWarning(UserWarning):
    """A table measured on another device, CPU/GPU model, thread count or torch version."""


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


def stage_units(form: Form, stage: int, choice) -> list[tuple[str, Unit, int]]:
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
            for key, u, s in stage_units(form, i, c):
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
    ``{key: {"median", "p10", "p90", "n"}}`` in milliseconds, and its ``check`` (``check_summary``:
    whole designs timed at the end of the profile, whence the table's uncertainty; None in a table
    written before se-nas measured one). The check is not part of the header, so re-checking a table
    keeps its hash."""

    header: dict[str, Any]
    entries: dict[str, dict[str, float]] = field(default_factory=dict)
    path: str = ""
    check: dict[str, Any] | None = None

    @property
    def runtime(self) -> str:
        """What runs the model: ``torch`` (eager; a table without the field) or ``onnxruntime``."""
        return self.header.get("runtime", DEFAULT_RUNTIME)

    @property
    def uncertainty_pct(self) -> float | None:
        """The table's relative uncertainty ``u`` in percent of a prediction (None: unknown)."""
        return None if self.check is None else self.check["u_pct"]

    def u_ms(self, ms: float) -> float | None:
        """``u`` in milliseconds at a prediction of ``ms`` (None: unknown)."""
        u = self.uncertainty_pct
        return None if u is None else ms * u / 100

    def plus_minus(self, ms: float) -> str:
        """``"104.20 ± 2.19 ms"``, or the prediction with its uncertainty said to be unknown."""
        u = self.u_ms(ms)
        return (f"{ms:.2f} ms (uncertainty unknown: a table from before se-nas measured one; "
                f"`se-nas latency check {self.path or 'TABLE'}` measures it)") if u is None else f"{ms:.2f} ± {u:.2f} ms"

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
        return (f"{'onnxruntime on ' if self.runtime != DEFAULT_RUNTIME else ''}{h['device']} ({h['device_name']}, {h['threads']} thread{'s' if h['threads'] != 1 else ''}), torch "
                f"{h['torch']}, {h['dtype']}, batch {h['batch']}, {f.image_size}x{f.image_size}"
                f"{', channels_last' if h['channels_last'] else ''}"
                f"{', process CPU time' if h['clock'] != 'wall' else ''}; {f.backbone} (stride on {f.stride_on}, "
                f"se_bias {str(f.se_bias).lower()}, stem {f.stem}, width {f.width:g})")

    def profile_command(self, new: bool = False) -> str:
        """The command that profiles (or resumes) this table's space; ``new``: afresh, into a new file."""
        h, f = self.header, self.form
        dev = h["device"] + (f" --threads {h['threads']}" if h["device"] == "cpu" else "")
        extra = "".join([f" --stem {f.stem}" if f.stem != "imagenet" else "",
                         f" --clock {h['clock']}" if h["clock"] != "wall" else "",
                         f" --width {f.width:g}" if f.width != 1 else "",
                         f" --num-classes {f.num_classes}" if f.num_classes != 1000 else "",
                         f" --batch {h['batch']}" if h["batch"] != 1 else "",
                         f" --dtype {h['dtype']}" if h["dtype"] != "float32" else "",
                         " --channels-last" if h["channels_last"] else "",
                         f" --runtime {self.runtime}" if self.runtime != DEFAULT_RUNTIME else ""])
        out = self.path or "TABLE"
        if new:  # a rerun to the same file resumes it (keeps its entries): a fresh profile needs a new file
            p = Path(out)
            out = str(p.with_name(f"{p.stem}-new{p.suffix}"))
        return (f"se-nas latency profile --space {h.get('space') or 'SPACE'} --device {dev} --image-size "
                f"{f.image_size}{extra} -o {out}")

    def save(self, path: str | Path | None = None) -> None:
        """Write atomically (a temporary file, then ``os.replace``): a killed profile leaves the last
        complete file."""
        from .files import atomic_write

        d = {"header": self.header, "entries": self.entries, **({"check": self.check} if self.check else {})}
        atomic_write(Path(path or self.path), json.dumps(d, indent=1, sort_keys=True) + "\n")


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


# --- the check: whole designs timed at the end of a profile, and the table's uncertainty ----------------
CHECK_RANDOM = 4  # random designs of the profiled options in the check (besides the plain and r=16 ones)
CHECK_SEED = 0  # the check's designs are the same on every run of a profile
DRIFT_FLOOR_PCT = 1.0  # below this a check's systematic error is not called drift, whatever its noise


def check_summary(rows: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    """A check's figures from ``rows``, each ``{"arch": Arch.to_dict(), "id", "predicted_ms", "times"}``
    (one whole design's timed calls, interleaved with the others'):

    - per design its median time and its prediction's error ``100 (predicted - measured) / measured``;
    - ``median_abs_error_pct``, ``worst_abs_error_pct``, and ``drift_pct``: the median signed error,
      the predictor's systematic shift against the whole designs (load or frequency that moved between
      the units' timings and these);
    - ``noise_pct``: the timings' own repeat noise, the median over designs of how far the median of
      their odd calls and of their even calls differ;
    - ``u_pct``, the table's uncertainty: the worst error, and never less than the noise. A relative
      figure (percent of a prediction), since an error grows with the model's time.
    """
    import statistics as st

    designs = []
    for r in rows:
        t = r["times"]
        measured = st.median(t)
        halves = 100 * abs(st.median(t[::2]) / st.median(t[1::2]) - 1) if len(t) > 1 else 0.0
        designs.append({"id": r["id"], "arch": r["arch"], "predicted_ms": r["predicted_ms"], "measured_ms": measured,
                        "error_pct": 100 * (r["predicted_ms"] - measured) / measured, "halves_pct": halves})
    errs = [d["error_pct"] for d in designs]
    noise = st.median(d["halves_pct"] for d in designs)
    worst = max(abs(e) for e in errs)
    return {"designs": designs, "rounds": rounds, "median_abs_error_pct": st.median(abs(e) for e in errs),
            "worst_abs_error_pct": worst, "drift_pct": st.median(errs), "noise_pct": noise,
            "u_pct": max(worst, noise)}


def drifted(check: dict[str, Any]) -> bool:
    """Whether a check's systematic error exceeds its own noise: ``|drift| > max(2 noise, 1%)``."""
    return abs(check["drift_pct"]) > max(2 * check["noise_pct"], DRIFT_FLOOR_PCT)


def check_line(table: "LatencyTable", check: dict[str, Any]) -> str:
    """One line on a check of ``table``: its errors and noise, and if it drifted, that it did and the
    command that profiles the table afresh."""
    n = len(check["designs"])
    text = (f"check of {n} whole designs: the predictions' error is {check['median_abs_error_pct']:.1f}% (median), "
            f"{check['worst_abs_error_pct']:.1f}% (worst), {check['drift_pct']:+.1f}% systematic; the timings' own "
            f"noise {check['noise_pct']:.1f}%")
    if not drifted(check):
        return text + f"; within its noise: predictions are ± {check['u_pct']:.1f}%"
    return (text + f". latency table {table.path!r} drifts beyond its own noise (|{check['drift_pct']:+.1f}%| > "
            f"max(2 x {check['noise_pct']:.1f}%, {DRIFT_FLOOR_PCT:g}%)): the machine ran faster or slower than when "
            f"it was profiled (load, clock frequency, another job); re-profile it on a quiet machine with: "
            f"{table.profile_command(new=True)}")


def _check_check(check: Any, where: str) -> None:
    """A table's stored check, as read from its file: the figures the uncertainty is made of."""
    figures = ("median_abs_error_pct", "worst_abs_error_pct", "drift_pct", "noise_pct", "u_pct")
    for q in figures:
        v = check.get(q) if isinstance(check, dict) else None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (q != "drift_pct" and v < 0):
            raise LatencyError(f"latency table {where}: check: {q} must be a finite number of percent"
                               f"{' >= 0' if q != 'drift_pct' else ''}, got {preview(v)}; `se-nas latency profile` "
                               "writes the check (a rerun to the same file measures only the check)")
    if not isinstance(check.get("designs"), list) or not check["designs"]:
        raise LatencyError(f"latency table {where}: check: designs must be a non-empty list, got "
                           f"{preview(check.get('designs'))}")


def load_table(path: str | Path, on_mismatch: Callable[[str], None] | None = None) -> LatencyTable:
    """Read a table file. One measured on another machine, thread count or torch version than this one
    is accepted with a warning naming the difference (``on_mismatch(text)``, default ``warnings.warn``).
    A file above ``MAX_TABLE_BYTES`` is refused before it is read, and every entry is checked."""
    from ..design.arch import read_text

    check_size(path, "latency table", LatencyError, MAX_TABLE_BYTES)
    text = read_text(path, "latency table", LatencyError)
    try:
        d = json.loads(text)
        header, entries = d["header"], d["entries"]
        if header.get("format") != TABLE_FORMAT:
            raise LatencyError(f"latency table {str(path)!r}: format must be {TABLE_FORMAT!r}, "
                               f"got {header.get('format')!r}")
        _check_entries(entries, repr(str(path)))
        check = d.get("check")
        if check is not None:
            _check_check(check, repr(str(path)))
        table = LatencyTable(header, entries, str(path), check)
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
        for key, u, s in stage_units(self.form, stage, choice):
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

