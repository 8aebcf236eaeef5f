"""Search spaces as files: which SE designs a search may propose.

A space is a YAML file (built-in ones live in ``<repo>/search_spaces/``; copy one and edit it). It
names a backbone, the deployment model the budget is measured on, and for every stage the values the
sampler may pick for each axis of the SE design (Hu et al., TPAMI 2019, Sec. 6: reduction ratio,
squeeze operator, excitation gate, insertion point, and which stages get SE at all)::

    backbone: resnet50
    stride_on: 1x1            # the paper's ResNet (3.86 GFLOPs)
    se_bias: false
    deploy: {image_size: 224, num_classes: 1000}
    choices:                  # every stage, unless a stage overrides an axis
      enabled: [true, false]
      reduction: [2, 4, 8, 16, 32]
      squeeze: [avg, max, avgmax, none]
      gate: [sigmoid, hardsigmoid, tanh, relu]
      position: [standard, pre, post, identity, after_3x3]
    stages:                   # optional per-stage overrides: a value fixes it, a list restricts it
      s4: {reduction: [8, 16, 32]}

With ``shared: true`` the SE design (reduction, squeeze, gate, position) is one choice for the
whole network and only ``enabled`` varies per stage: the paper's ablations change one axis for every
stage at once (Tables 10-16), and Table 13 turns stages on and off.

``SearchSpace.sample(trial)`` draws an ``Arch`` define-by-run with stable parameter names
(``s1.enabled``, ``s1.reduction``, ... or ``se.reduction`` when shared); an axis with a single value
is fixed, not suggested, and SE parameters of a disabled stage are never suggested.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SeNasError
from .arch import NO_SLOT, Arch, ArchError, StageSE, baseline_arch, plain_arch
from .builtin import SPACES_DIR
from .choices import GATES, POSITIONS, SQUEEZES
from .backbones import BACKBONES, STRIDE_ON
from .pareto import pareto_front
from .untrusted import MAX_YAML_BYTES, check_size, load_yaml, preview

DEFAULT_SPACE = "resnet50-per-stage"
AXES = ("enabled", "reduction", "squeeze", "gate", "position")
SE_AXES = AXES[1:]
TOP_KEYS = ("name", "description", "backbone", "stride_on", "se_bias", "shared", "deploy", "choices", "stages")
DEPLOY_KEYS = ("image_size", "num_classes")
MAX_VALUES = 64  # per axis: 64 reduction ratios make 5,121 options per stage, costed in about a second


class SpaceError(SeNasError):
    """A search-space file that can't be read or breaks a rule; names the file, the key and the value."""


@dataclass(frozen=True)
class SearchSpace:
    """Per-stage choices for each SE axis. ``stages[i][axis]`` is the tuple of allowed values."""

    name: str
    backbone: str
    stages: tuple[dict[str, tuple], ...]
    stride_on: str = "1x1"
    se_bias: bool = False
    shared: bool = False
    deploy_image_size: int = 224
    deploy_num_classes: int = 1000
    source: str = field(default="", compare=False)

    # --- sampling
    def sample(self, trial) -> Arch:
        """Draw one architecture through ``trial.suggest_categorical`` (define-by-run)."""

        def pick(name: str, values: tuple):
            return values[0] if len(values) == 1 else trial.suggest_categorical(name, list(values))

        enabled = [pick(f"s{i + 1}.enabled", st["enabled"]) for i, st in enumerate(self.stages)]
        if self.shared:
            se = None
            if any(enabled):  # the shared design only exists if some stage uses it
                st = self.stages[0]
                se = StageSE(**{a: pick(f"se.{a}", st[a]) for a in SE_AXES})
            stages = tuple(se if on else None for on in enabled)
        else:
            stages = tuple(
                StageSE(**{a: pick(f"s{i + 1}.{a}", st[a]) for a in SE_AXES}) if on else None
                for i, (on, st) in enumerate(zip(enabled, self.stages))
            )
        return Arch(self.backbone, stages, stride_on=self.stride_on, se_bias=self.se_bias)

    @property
    def deploy(self):
        """The deployment model the budget is checked on (``se_nas.design.budget.Deploy``)."""
        from .budget import Deploy

        return Deploy(self.deploy_image_size, self.deploy_num_classes)

    # --- facts about the space
    def plain(self) -> Arch:
        return plain_arch(Arch.uniform(self.backbone, None, stride_on=self.stride_on, se_bias=self.se_bias))

    def baseline(self) -> Arch:
        """The paper's fixed design on this backbone: SE r=16 (avg, sigmoid, standard) in every stage."""
        return baseline_arch(self.plain())

    def stage_options(self, i: int) -> list[StageSE | None]:
        """Every value stage ``i`` can take on its own (``None`` = no SE)."""
        st = self.stages[i]
        opts: list[StageSE | None] = [None] if False in st["enabled"] else []
        if True in st["enabled"]:
            opts += [StageSE(*combo) for combo in itertools.product(*(st[a] for a in SE_AXES))]
        return opts

    def size(self) -> int:
        """Number of distinct architectures in the space."""
        if not self.shared:
            return math.prod(len(self.stage_options(i)) for i in range(len(self.stages)))
        n_designs = math.prod(len(self.stages[0][a]) for a in SE_AXES)
        patterns = list(itertools.product(*(st["enabled"] for st in self.stages)))
        return sum(n_designs if any(p) else 1 for p in patterns)

    def cost_frontier(self, image_size: int | None = None, num_classes: int | None = None) -> list[tuple[int, int, Arch]]:
        """Every (FLOPs, parameters) trade-off of the space on the deployment model: the architectures
        no other one beats on both, as ``(flops, params, arch)``, fewest FLOPs first. Exact.

        SE cost is additive over stages (each stage's blocks depend only on that stage's choice), so
        the frontier is built stage by stage from each stage's own frontier (sums of costs, pruned
        after each stage) without enumerating the space. A shared space is small enough to enumerate.
        """
        from .cost import count_cost

        size = image_size or self.deploy_image_size
        classes = num_classes or self.deploy_num_classes
        plain = self.plain()
        c0 = count_cost(plain, size, classes)

        def added(i: int, se: StageSE | None) -> tuple[int, int]:
            """What ``se`` in stage ``i`` adds to the plain network's (FLOPs, parameters)."""
            c = count_cost(plain.with_stage(i, se), size, classes)
            return c.flops - c0.flops, c.params - c0.params

        n = len(self.stages)
        if self.shared:  # every on/off pattern with every design: sums of the designs' stage costs
            st = self.stages[0]
            designs = [StageSE(*combo) for combo in itertools.product(*(st[a] for a in SE_AXES))]
            deltas = np.array([[added(i, d) for i in range(n)] for d in designs], dtype=np.int64)
            costs, picks = [], []
            for pattern in itertools.product(*(s["enabled"] for s in self.stages)):
                on = np.array(pattern, dtype=bool)
                if on.any():
                    costs.append(deltas[:, on].sum(axis=1))
                    picks += [tuple(d if o else None for o in pattern) for d in designs]
                else:
                    costs.append(np.zeros((1, 2), dtype=np.int64))
                    picks.append((None,) * n)
            front_cost = np.concatenate(costs)
            keep = _front(front_cost)
            front_cost, front = front_cost[keep], [picks[k] for k in keep]
        else:  # stage by stage: each stage's own frontier added to the frontier of the stages before
            front_cost, front = np.zeros((1, 2), dtype=np.int64), [()]
            for i in range(n):
                opts = self.stage_options(i)
                own = np.array([added(i, o) for o in opts], dtype=np.int64)
                keep = _front(own)
                own, opts = own[keep], [opts[k] for k in keep]
                merged = (front_cost[:, None, :] + own[None, :, :]).reshape(-1, 2)
                keep = _front(merged)
                front_cost = merged[keep]
                front = [front[k // len(opts)] + (opts[k % len(opts)],) for k in keep]
        return [(c0.flops + int(f), c0.params + int(p), replace(plain, stages=picks))
                for (f, p), picks in zip(front_cost, front)]

    def cheapest(self, image_size: int | None = None, num_classes: int | None = None) -> tuple[Arch, Arch]:
        """(fewest GFLOPs, fewest parameters) architectures of the space on the deployment model:
        the two ends of ``cost_frontier``."""
        front = self.cost_frontier(image_size, num_classes)
        return front[0][2], front[-1][2]

    def to_dict(self) -> dict[str, Any]:
        """Canonical form, stored with a study so a rerun can refuse a different space."""
        return {
            "name": self.name, "backbone": self.backbone, "stride_on": self.stride_on,
            "se_bias": self.se_bias, "shared": self.shared,
            "deploy": {"image_size": self.deploy_image_size, "num_classes": self.deploy_num_classes},
            "stages": [{a: list(st[a]) for a in AXES} for st in self.stages],
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "search space", name: str = "") -> "SearchSpace":
        return _parse(d, where, name)

    def describe(self) -> str:
        lines = [f"{self.name}: {self.backbone} (stride on {self.stride_on}), {self.size():,} architectures"
                 + (", one SE design shared by all stages" if self.shared else "")]
        for i, st in enumerate(self.stages):
            lines.append(f"  s{i + 1}: " + "; ".join(f"{a} {'/'.join(map(str, st[a]))}" for a in AXES))
        return "\n".join(lines)


def list_spaces() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(name_or_path: str | Path = DEFAULT_SPACE) -> SearchSpace:
    """A space from a built-in name (``search_spaces/<name>.yaml``) or a YAML file path."""
    import yaml

    ref = str(name_or_path)
    path = Path(ref)
    if not (ref.endswith((".yaml", ".yml")) or path.exists()):
        builtin = SPACES_DIR / f"{ref}.yaml"
        if not builtin.exists():
            raise SpaceError(f"search space {ref!r} is neither a YAML file nor a built-in space; "
                             f"built-in: {', '.join(list_spaces())}")
        path = builtin
    check_size(path, "search space file", SpaceError, MAX_YAML_BYTES)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpaceError(f"cannot read search space file {str(path)!r}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise SpaceError(f"{path}: not a text file (byte {e.object[e.start]:#04x} at offset {e.start} is not "
                         f"UTF-8); a search space is a YAML file") from None
    try:
        d = load_yaml(text, str(path), SpaceError)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpaceError(f"{where}: malformed YAML: {problem}") from None
    space = _parse(d, str(path), path.stem)
    return replace(space, source=str(path))


def _values(v: Any, where: str, key: str, allowed: tuple) -> tuple:
    vals = v if isinstance(v, list) else [v]
    if not vals:
        raise SpaceError(f"{where}: {key} must list at least one value; allowed: {_fmt(allowed)}")
    if len(vals) > MAX_VALUES:
        raise SpaceError(f"{where}: {key} lists {len(vals)} values; at most {MAX_VALUES} are allowed per axis "
                         f"(each value multiplies the space and the budget check before the first trial)")
    out = []
    for x in vals:
        ok = (isinstance(x, bool) and x in allowed) if key == "enabled" else (
            (isinstance(x, int) and not isinstance(x, bool) and x >= 1) if key == "reduction"
            else (isinstance(x, str) and x in allowed))
        if not ok:
            raise SpaceError(f"{where}: unknown {key} value {preview(x)}; allowed: {_fmt(allowed)}")
        if x not in out:
            out.append(x)
    return tuple(out)


def _fmt(allowed: tuple) -> str:
    if allowed == ("int",):
        return "positive integers (the reduction ratio r)"
    return ", ".join(str(a).lower() if isinstance(a, bool) else str(a) for a in allowed)


ALLOWED = {"enabled": (True, False), "reduction": ("int",), "squeeze": tuple(SQUEEZES),
           "gate": tuple(GATES), "position": tuple(POSITIONS)}
DEFAULT_CHOICES = {"enabled": (True, False), "reduction": (16,), "squeeze": ("avg",),
                   "gate": ("sigmoid",), "position": ("standard",)}


def _check_keys(d: dict, allowed: tuple, where: str) -> None:
    unknown = [k for k in d if k not in allowed]
    if unknown:
        raise SpaceError(f"{where}: unknown key {preview(unknown[0])}; allowed: {', '.join(allowed)}")


def _parse(d: Any, where: str, name: str) -> SearchSpace:
    if not isinstance(d, dict):
        raise SpaceError(f"{where}: expected a mapping of keys ({', '.join(TOP_KEYS)}), got {type(d).__name__}")
    _check_keys(d, TOP_KEYS, where)
    backbone = d.get("backbone")
    if not isinstance(backbone, str) or backbone not in BACKBONES:
        what = "unknown backbone" if isinstance(backbone, str) else "backbone must be one name, got"
        raise SpaceError(f"{where}: {what} {preview(backbone)}; allowed: {', '.join(BACKBONES)}")
    n = len(BACKBONES[backbone].depths)
    stride_on = d.get("stride_on", "1x1")
    if stride_on not in STRIDE_ON:
        raise SpaceError(f"{where}: unknown stride_on {preview(stride_on)}; allowed: {', '.join(STRIDE_ON)}")
    flags = {}
    for key in ("se_bias", "shared"):
        flags[key] = d.get(key, False)
        if not isinstance(flags[key], bool):
            raise SpaceError(f"{where}: {key} must be true or false, got {preview(flags[key])}")

    deploy = d.get("deploy", {}) or {}
    if not isinstance(deploy, dict):
        raise SpaceError(f"{where}: deploy must be a mapping with {', '.join(DEPLOY_KEYS)}, got {preview(deploy)}")
    _check_keys(deploy, DEPLOY_KEYS, f"{where}: deploy")
    dep = {"image_size": deploy.get("image_size", 224), "num_classes": deploy.get("num_classes", 1000)}
    for k, v in dep.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SpaceError(f"{where}: deploy.{k} must be a positive integer, got {preview(v)}")

    choices = d.get("choices", {}) or {}
    if not isinstance(choices, dict):
        raise SpaceError(f"{where}: choices must be a mapping of axes ({', '.join(AXES)}), got {preview(choices)}")
    _check_keys(choices, AXES, f"{where}: choices")
    base = {a: _values(choices[a], f"{where}: choices", a, ALLOWED[a]) if a in choices else DEFAULT_CHOICES[a]
            for a in AXES}

    overrides = d.get("stages", {}) or {}
    stage_keys = tuple(f"s{i + 1}" for i in range(n))
    if not isinstance(overrides, dict):
        raise SpaceError(f"{where}: stages must be a mapping from stage ({', '.join(stage_keys)}) to axes")
    _check_keys(overrides, stage_keys, f"{where}: stages")
    stages = []
    for key in stage_keys:
        ov = overrides.get(key, {}) or {}
        if not isinstance(ov, dict):
            raise SpaceError(f"{where}: stages.{key} must be a mapping of axes ({', '.join(AXES)}), got {preview(ov)}")
        _check_keys(ov, AXES, f"{where}: stages.{key}")
        if flags["shared"] and set(ov) - {"enabled"}:
            bad = sorted(set(ov) - {"enabled"})[0]
            raise SpaceError(f"{where}: stages.{key}: key {preview(bad)} is not allowed with shared: true "
                             f"(one SE design for all stages); allowed: enabled")
        stages.append({a: _values(ov[a], f"{where}: stages.{key}", a, ALLOWED[a]) if a in ov else base[a]
                       for a in AXES})
    allowed_positions = BACKBONES[backbone].positions
    for key, st in zip(stage_keys, stages):
        bad = [p for p in st["position"] if p not in allowed_positions]
        if bad:
            raise SpaceError(f"{where}: position {preview(bad[0])} (stage {key}) is not available on {backbone}"
                             f"{NO_SLOT.get(BACKBONES[backbone].unit, '')}; allowed: {', '.join(allowed_positions)}")
    try:  # a design the builder rejects should fail here, not in the middle of a search
        Arch.uniform(backbone, StageSE(), stride_on=stride_on, se_bias=flags["se_bias"])
    except ArchError as e:
        raise SpaceError(f"{where}: {e}") from None
    return SearchSpace(
        name=str(d.get("name") or name or "space"), backbone=backbone, stages=tuple(stages),
        stride_on=stride_on, se_bias=flags["se_bias"], shared=flags["shared"],
        deploy_image_size=dep["image_size"], deploy_num_classes=dep["num_classes"],
    )


def _front(costs: np.ndarray) -> np.ndarray:
    """Indices of the ``(flops, params)`` rows no other row beats on both, fewest FLOPs first (of
    equal rows, the first)."""
    idx = np.flatnonzero(pareto_front(costs, ("minimize", "minimize")))
    _, first = np.unique(costs[idx], axis=0, return_index=True)
    return idx[first]
