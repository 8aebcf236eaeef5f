"""An SE architecture as data: the one value that travels through se-nas.

``Arch`` says which backbone and, for each stage, whether it has SE blocks and which ones
(reduction ratio r, squeeze operator, excitation gate, insertion point). It is frozen, validated on
construction, round-trips through JSON without loss and has a short canonical id. Building
(``se_nas.nn.build``), costing (``se_nas.design.cost``), search, reports and export all read it; nothing parses
a display string back (compare timm's ``ByoBlockCfg`` and Optuna's ``FixedTrial``).

Proxy training settings (stem, width multiplier, number of classes) are not part of the design: they
are arguments of ``build_model`` and ``count_cost``, so one ``Arch`` is both the deployed model and
its cheap proxy.
"""
from __future__ import annotations

import hashlib
import json
import reprlib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import SeNasError
from .choices import ABBREV, GATES, POSITIONS, SQUEEZES, ChoiceError, pick
from .backbones import BACKBONES, STRIDE_ON

ARCH_FORMAT = "se-nas/arch@1"


class ArchError(SeNasError):
    """An architecture description that breaks a rule; the message names the field and the value."""


def read_text(path: str | Path, what: str, error: type[ValueError]) -> str:
    """The UTF-8 text of file ``path``, or an ``error`` in one line naming ``what``, the file and why not
    (missing, a directory, unreadable, binary)."""
    p = Path(path)
    if p.is_dir():
        raise error(f"{what} {str(p)!r} is a directory, not a file")
    try:
        return p.read_text(encoding="utf-8")
    except OSError as e:
        raise error(f"cannot read {what} {str(p)!r}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise error(f"{what} {str(p)!r} is not a text file: byte 0x{e.object[e.start]:02x} at position {e.start} "
                    f"is not UTF-8") from None


_show = reprlib.repr  # a user's value in an error message, shortened (a 1 MB list stays one short line)


@dataclass(frozen=True)
class StageSE:
    """The SE blocks of one stage (every unit of the stage gets one).

    reduction: r of the paper; the hidden width is ``max(1, C // r)`` (see ``se_hidden``).
    squeeze:   "avg" (the paper's default), "max", "avgmax" (sum of both), "none" (NoSqueeze).
    gate:      "sigmoid" (default), "hardsigmoid", "tanh", "relu".
    position:  "standard", "pre", "post", "identity", "after_3x3" (Fig. 5 and Table 15).
    """

    reduction: int = 16
    squeeze: str = "avg"
    gate: str = "sigmoid"
    position: str = "standard"

    def __post_init__(self) -> None:
        r = self.reduction
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ArchError(f"reduction ratio must be a positive integer, got reduction={_show(r)}")
        for name, table in (("squeeze", SQUEEZES), ("gate", GATES), ("position", POSITIONS)):
            try:
                pick(table, getattr(self, name), name)
            except ChoiceError as e:
                raise ArchError(str(e)) from None

    @property
    def label(self) -> str:
        return f"r{self.reduction}/{ABBREV[self.squeeze]}/{ABBREV[self.gate]}/{ABBREV[self.position]}"


def se_hidden(channels: int, reduction: int, divisor: int = 1) -> int:
    """Hidden width of the excitation bottleneck: ``C // r``, at least 1.

    Floor division gives exactly C/r for every width the paper uses (C is a multiple of r); the floor
    of 1 keeps narrow proxies (width multipliers, large r) valid. With ``divisor`` > 1 (MobileNetV3)
    ``C // r`` is rounded as torchvision's ``_make_divisible`` does: to the nearest multiple, at least
    ``divisor``, and never more than 10% below ``C // r``.
    """
    v = channels // reduction
    if divisor == 1:
        return max(1, v)
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


@dataclass(frozen=True)
class Arch:
    """A full SE backbone design.

    backbone:  a name from ``se_nas.design.backbones.BACKBONES``.
    stages:    one entry per stage: a ``StageSE`` or ``None`` (no SE in that stage).
    stride_on: "1x1" (the paper's and original ResNet's bottleneck) or "3x3" (torchvision's).
    se_bias:   biases in the two excitation layers. Default False: the paper's excitation
               ``sigma(W2 delta(W1 z))`` has none (timm and torchvision add them; +0.02M on ResNet-50).
    """

    backbone: str
    stages: tuple[StageSE | None, ...]
    stride_on: str = "1x1"
    se_bias: bool = False

    def __post_init__(self) -> None:
        try:
            spec = pick(BACKBONES, self.backbone, "backbone")
        except ChoiceError as e:
            raise ArchError(str(e)) from None
        if self.stride_on not in STRIDE_ON:
            raise ArchError(f"unknown stride_on {_show(self.stride_on)}; allowed: {', '.join(STRIDE_ON)}")
        if not isinstance(self.se_bias, bool):
            raise ArchError(f"se_bias must be true or false, got se_bias={_show(self.se_bias)}")
        if self.stride_on not in spec.stride_forms:
            raise ArchError(f"stride_on {self.stride_on!r} is not available on {self.backbone} (it has no strided "
                            f"bottleneck to choose for); allowed: {', '.join(spec.stride_forms)}")
        stages = tuple(self.stages)
        if len(stages) != len(spec.depths):
            raise ArchError(
                f"{self.backbone} has {len(spec.depths)} stages, got {len(stages)} stage entries"
            )
        for i, s in enumerate(stages):
            if s is not None and not isinstance(s, StageSE):
                raise ArchError(f"stages[{i}] must be a StageSE or None, got {_show(s)}")
            if s is not None and s.position not in spec.positions:
                raise ArchError(f"stages[{i}]: position {s.position!r} is not available on {self.backbone}"
                                f"{NO_SLOT.get(spec.unit, '')}; allowed: {', '.join(spec.positions)}")
        object.__setattr__(self, "stages", stages)

    # --- constructors
    @classmethod
    def uniform(cls, backbone: str, se: StageSE | None = StageSE(), **kw: Any) -> "Arch":
        """The same SE choice (or none) in every stage: ``Arch.uniform("resnet50")`` is SE-ResNet-50."""
        n = len(BACKBONES[backbone].depths) if backbone in BACKBONES else 1  # __post_init__ names the error
        return cls(backbone, (se,) * n, **kw)

    def with_stage(self, index: int, se: StageSE | None) -> "Arch":
        if not 0 <= index < len(self.stages):
            raise ArchError(f"stage index must be in 0..{len(self.stages) - 1}, got {index}")
        stages = list(self.stages)
        stages[index] = se
        return replace(self, stages=tuple(stages))

    # --- identity and display
    @property
    def has_se(self) -> bool:
        return any(s is not None for s in self.stages)

    @property
    def id(self) -> str:
        """Short canonical id: the first 10 hex digits of the SHA-1 of the canonical JSON."""
        return hashlib.sha1(self.to_json().encode()).hexdigest()[:10]

    @property
    def label(self) -> str:
        """Human-readable summary, for display only: ``resnet50 r16/avg/sig/std | - | ...``."""
        return f"{self.backbone} " + " | ".join("-" if s is None else s.label for s in self.stages)

    def __str__(self) -> str:
        return f"{self.id} {self.label}"

    # --- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": ARCH_FORMAT,
            "backbone": self.backbone,
            "stride_on": self.stride_on,
            "se_bias": self.se_bias,
            "stages": [None if s is None else asdict(s) for s in self.stages],
        }

    def to_json(self, indent: int | None = None) -> str:
        """Canonical JSON: sorted keys; with ``indent=None``, no whitespace (the id hashes this)."""
        sep = (",", ":") if indent is None else (",", ": ")
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent, separators=sep)

    @classmethod
    def from_dict(cls, d: Any, where: str = "architecture") -> "Arch":
        if not isinstance(d, dict):
            raise ArchError(f"{where}: expected a JSON object, got {type(d).__name__}")
        allowed = {"format", "backbone", "stride_on", "se_bias", "stages"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ArchError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
        if "format" in d and d["format"] != ARCH_FORMAT:
            raise ArchError(f"{where}: format must be {ARCH_FORMAT!r}, got {_show(d['format'])}")
        if "backbone" not in d:
            raise ArchError(f"{where}: missing key 'backbone'; allowed: {', '.join(BACKBONES)}")
        stages = d.get("stages")
        if not isinstance(stages, list):
            raise ArchError(f"{where}: 'stages' must be a list (one entry per stage), got {_show(stages)}")
        stages = tuple(_stage_from_dict(s, f"{where}: stages[{i}]") for i, s in enumerate(stages))
        try:
            return cls(backbone=d["backbone"], stages=stages, stride_on=d.get("stride_on", "1x1"),
                       se_bias=d.get("se_bias", False))
        except ArchError as e:
            raise ArchError(f"{where}: {e}") from None

    @classmethod
    def from_json(cls, text: str, where: str = "architecture") -> "Arch":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ArchError(f"{where}: malformed JSON ({e})") from None
        except RecursionError:
            raise ArchError(f"{where}: JSON nested too deeply; an architecture is an object of stage objects "
                            f"(3 levels)") from None
        return cls.from_dict(d, where)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Arch":
        return cls.from_json(read_text(path, "architecture file", ArchError), where=str(path))


def _stage_from_dict(s: Any, where: str) -> StageSE | None:
    if s is None or s is False:
        return None
    if not isinstance(s, dict):
        raise ArchError(f"{where}: expected an object or null (no SE), got {_show(s)}")
    names = {f.name for f in fields(StageSE)}
    unknown = sorted(set(s) - names)
    if unknown:
        raise ArchError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(sorted(names))}")
    try:
        return StageSE(**s)
    except ArchError as e:
        raise ArchError(f"{where}: {e}") from None


# Why a family lacks some insertion points (for the error that refuses them).
NO_SLOT = {
    "vgg": ": a VGG block has no residual branch: no shortcut for identity, no addition for post",
    "depthwise_separable": ": a depthwise-separable block has no residual branch: no shortcut for identity, "
                           "no addition for post",
    "inverted_residual": ": most of its units have no shortcut: identity and post would not exist there",
}

# The SE design each family is compared against (``baseline_arch``): the paper's r=16 in every stage,
# except where the family has its own (MobileNetV3: r=4 after the depthwise convolution, hard-sigmoid,
# in the stages Howard et al. chose; Table 1 of "Searching for MobileNetV3").
_MBV3_SE = StageSE(4, gate="hardsigmoid", position="after_3x3")
# Each entry carries the name every report and sentence calls it by, so no text says "r=16" where it is not.
PAPER_SE = "r=16 SE"
REFERENCE_SE: dict[str, tuple[str, tuple[StageSE | None, ...]]] = {
    "mobilenet_v3_large": ("MobileNetV3's own SE", (None, None, _MBV3_SE, None, _MBV3_SE, _MBV3_SE)),
}


def _reference(backbone: str) -> tuple[StageSE | None, ...]:
    own = REFERENCE_SE.get(backbone)
    return own[1] if own else (StageSE(),) * len(BACKBONES[backbone].depths)


def baseline_name(backbone: str) -> str:
    """What the reference SE design of ``baseline_arch`` is called in user-facing text: "r=16 SE" (the
    paper's), or the family's own ("MobileNetV3's own SE")."""
    own = REFERENCE_SE.get(backbone)
    return own[0] if own else PAPER_SE


# --- presets: each family plain and with its SE (the paper's r=16 in every stage, or its own);
# for residual bottleneck families also the torchvision form (``_tv``, stride on the 3x3).
# A family named after its SE model names its plain form ``*_plain``; its presets take the form of
# that model (SENet-154: stride on the 3x3, as timm; MobileNetV3: biases in the SE, as torchvision).
SE_NAMED = {"senet154": {"stride_on": "3x3"}, "mobilenet_v3_large": {"se_bias": True}}
PRESETS: dict[str, Arch] = {}
for _name, _spec in BACKBONES.items():
    _kw = SE_NAMED.get(_name, {})
    _plain, _se = (f"{_name}_plain", _name) if _name in SE_NAMED else (_name, f"se_{_name}")
    PRESETS[_plain] = Arch.uniform(_name, None, stride_on=_kw.get("stride_on", "1x1"))
    PRESETS[_se] = Arch(_name, _reference(_name), **_kw)
    if "3x3" in _spec.stride_forms and _name not in SE_NAMED:
        PRESETS[f"{_name}_tv"] = Arch.uniform(_name, None, stride_on="3x3")
        PRESETS[f"se_{_name}_tv"] = Arch.uniform(_name, StageSE(), stride_on="3x3")


def baseline_arch(arch: Arch) -> Arch:
    """The reference SE design on ``arch``'s backbone: the paper's r=16 (avg, sigmoid, standard) in every
    stage, or the family's own (``REFERENCE_SE``)."""
    return replace(arch, stages=_reference(arch.backbone))


def plain_arch(arch: Arch) -> Arch:
    """``arch``'s backbone with no SE at all."""
    return replace(arch, stages=(None,) * len(arch.stages))


def resolve_arch(ref: str | Path | Arch) -> Arch:
    """An Arch from an Arch, a preset name or a JSON file path (the CLI's ``ARCH`` argument)."""
    if isinstance(ref, Arch):
        return ref
    ref = str(ref)
    if ref in PRESETS:
        return PRESETS[ref]
    if ref.endswith(".json") or Path(ref).exists():
        return Arch.load(ref)
    raise ArchError(
        f"architecture {ref!r} is neither a JSON file nor a preset; presets: {', '.join(PRESETS)}"
    )
