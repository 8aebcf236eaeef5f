"""``compare.json`` read back as typed values, validated on read.

``se-nas compare`` (``se_nas.products.compare``) writes ``<out>/<study>/compare.json``; the report reads it.
The file is user-editable and may be stale, truncated or hand-made, so every field the report uses
is checked here, once, for its type: a bad file is one ``StudyError`` line that names the file, the
field and the value, never a ``KeyError`` or a format error deep in a renderer. Renderers then only
read ``Comparison`` (and still escape every string: a file's text is never markup).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..design.arch import PAPER_SE, baseline_name
from ..record.study import StudyError

ROLES = ("chosen", "r16", "plain")


class _Bad(Exception):
    """One field that is not what ``se-nas compare`` writes: (where, what was expected, the value)."""


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _num(d: dict, key: str, where: str, required: bool = True, nullable: bool = False) -> float | None:
    if key not in d or (nullable and d[key] is None):
        if required and key not in d:
            raise _Bad(f"{where}{key} is missing (a number)")
        return None
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Bad(f"{where}{key} must be a number, got {_show(v)}")
    return float(v)


def _int(d: dict, key: str, where: str, default: int | None = None) -> int | None:
    v = d.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"{where}{key} must be an integer, got {_show(v)}")
    return v


def _str(d: dict, key: str, where: str, default: str | None = "") -> str:
    if key not in d:
        if default is None:
            raise _Bad(f"{where}{key} is missing (a string)")
        return default
    v = d[key]
    if not isinstance(v, str):
        raise _Bad(f"{where}{key} must be a string, got {_show(v)}")
    return v


def _obj(d: dict, key: str, where: str) -> dict:
    v = d.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _Bad(f"{where}{key} must be an object, got {_show(v)}")
    return v


@dataclass(frozen=True)
class Test:
    """A paired difference as compare.json stores it (``se_nas.record.results.Difference.to_dict``)."""

    diff_mean: float
    diff_se: float | None
    t: float | None
    p: float | None
    note: str

    @classmethod
    def read(cls, d: Any, where: str) -> "Test | None":
        if d is None:
            return None
        if not isinstance(d, dict):
            raise _Bad(f"{where} must be an object, got {_show(d)}")
        return cls(_num(d, "diff_mean", where + "."), _num(d, "diff_se", where + ".", False, True),
                   _num(d, "t", where + ".", False, True), _num(d, "p", where + ".", False, True),
                   _str(d, "note", where + "."))


@dataclass(frozen=True)
class Arm:
    """One compared design: its role (chosen, r16, plain), its figures over the shared seeds."""

    role: str
    name: str
    arch_id: str
    label: str
    backbone: str
    trial: int | None
    accuracy_mean: float
    accuracy_err: float | None  # standard error (older files: the std)
    n: int
    gflops: float
    mparams: float
    latency_mean: float | None
    latency_std: float
    latency_predicted_ms: float | None

    @classmethod
    def read(cls, d: Any, where: str) -> "Arm":
        if not isinstance(d, dict):
            raise _Bad(f"{where} must be an object, got {_show(d)}")
        w = where + "."
        role = _str(d, "role", w, None)
        if role not in ROLES:
            raise _Bad(f"{w}role must be one of {', '.join(ROLES)}, got {_show(role)}")
        acc = d.get("accuracy", [])
        if not isinstance(acc, list):
            raise _Bad(f"{w}accuracy must be a list of numbers, got {_show(acc)}")
        arch = _obj(d, "arch", w)
        backbone = arch.get("backbone", "")
        if not isinstance(backbone, str):
            raise _Bad(f"{w}arch.backbone must be a string, got {_show(backbone)}")
        err = _num(d, "accuracy_sem", w, False, True)
        if "accuracy_sem" not in d:
            err = _num(d, "accuracy_std", w, False, True)
        return cls(role=role, name=_str(d, "name", w, role), arch_id=_str(d, "arch_id", w, None),
                   label=_str(d, "label", w), backbone=backbone, trial=_int(d, "trial", w),
                   accuracy_mean=_num(d, "accuracy_mean", w), accuracy_err=err,
                   n=_int(d, "n", w, len(acc)), gflops=_num(d, "gflops", w), mparams=_num(d, "mparams", w),
                   latency_mean=_num(d, "latency_mean", w, False, True),
                   latency_std=_num(d, "latency_std", w, False, True) or 0.0,
                   latency_predicted_ms=_num(d, "latency_predicted_ms", w, False, True))


@dataclass(frozen=True)
class Comparison:
    """compare.json, typed: the setup, the arms, the paired tests against r=16 and the plain backbone."""

    path: str
    seeds: tuple[int, ...]
    arms: tuple[Arm, ...]
    vs: dict[str, dict[str, tuple[Test | None, Test | None]]]  # "r16"/"plain" -> role -> (accuracy, latency)
    finding: str
    recipe_name: str
    recipe: dict[str, Any]  # dataset, image_size, stem, width, epochs (each checked for its type)
    deploy: dict[str, int]  # image_size, num_classes
    machine: str
    device: str
    threads: int | None
    same_as: str | None

    @property
    def baseline(self) -> str:
        """The reference SE this file compared against ("r=16 SE", "MobileNetV3's own SE")."""
        arch = next((a.backbone for a in self.arms if a.backbone), "")
        return baseline_name(arch) if arch else PAPER_SE

    def arm(self, role: str) -> Arm | None:
        return next((a for a in self.arms if a.role == role), None)


RECIPE_KEYS = {"dataset": str, "stem": str, "image_size": int, "width": (int, float), "epochs": int}
DEPLOY_KEYS = {"image_size": int, "num_classes": int}


def _typed(d: dict, keys: dict, where: str) -> dict:
    for k, t in keys.items():
        if k not in d:
            raise _Bad(f"{where}.{k} is missing")
        if isinstance(d[k], bool) or not isinstance(d[k], t):
            raise _Bad(f"{where}.{k} has the wrong type, got {_show(d[k])}")
    return {k: d[k] for k in keys}


def _tests(data: dict, ref: str) -> dict[str, tuple[Test | None, Test | None]]:
    out = {}
    for role, t in _obj(data, f"vs_{ref}", "").items():
        w = f"vs_{ref}.{role}"
        if role not in ROLES or not isinstance(t, dict):
            raise _Bad(f"{w} must be an object under a role ({', '.join(ROLES)}), got {_show(t)}")
        out[role] = (Test.read(t.get("accuracy"), w + ".accuracy"), Test.read(t.get("latency_ms"), w + ".latency_ms"))
    return out


def _parse(data: Any, path: str) -> Comparison:
    if not isinstance(data, dict):
        raise _Bad(f"the file must hold an object, got {_show(data)}")
    arms = data.get("arms")
    if not isinstance(arms, list):
        raise _Bad(f"arms must be a list, got {_show(arms)}")
    seeds = data.get("seeds", [])
    if not isinstance(seeds, list) or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise _Bad(f"seeds must be a list of integers, got {_show(seeds)}")
    recipe, deploy = _obj(data, "recipe", ""), _obj(data, "deploy", "")
    same = data.get("same_as")
    if same is not None and same not in ROLES:
        raise _Bad(f"same_as must be null or one of {', '.join(ROLES)}, got {_show(same)}")
    return Comparison(
        path=path, seeds=tuple(seeds), arms=tuple(Arm.read(a, f"arms[{i}]") for i, a in enumerate(arms)),
        vs={"r16": _tests(data, "r16"), "plain": _tests(data, "plain")}, finding=_str(data, "finding", ""),
        recipe_name=_str(data, "recipe_name", ""), recipe=_typed(recipe, RECIPE_KEYS, "recipe") if recipe else {},
        deploy=_typed(deploy, DEPLOY_KEYS, "deploy") if deploy else {}, machine=_str(data, "machine", ""),
        device=_str(data, "device", ""), threads=_int(data, "threads", ""), same_as=same)


def read_comparison(path: str | Path) -> Comparison | None:
    """The comparison ``se-nas compare`` wrote to ``path`` (compare.json), typed; None if it has not run.
    Raises ``StudyError`` (one line naming the file and the field) for anything else."""
    path = Path(path)
    if not path.exists():
        return None
    fix = "run `se-nas compare` again or delete it"
    try:
        text = path.read_text(encoding="utf-8")
        return _parse(json.loads(text), str(path))
    except (OSError, UnicodeDecodeError, RecursionError) as e:
        raise StudyError(f"{str(path)!r} could not be read as a comparison ({type(e).__name__}); {fix}") from None
    except json.JSONDecodeError as e:
        raise StudyError(f"{str(path)!r} is not a comparison written by `se-nas compare` (malformed JSON: "
                         f"{e}); {fix}") from None
    except _Bad as e:
        raise StudyError(f"{str(path)!r} is not a comparison written by `se-nas compare`: {e}; {fix}") from None
