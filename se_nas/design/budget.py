"""Budgets checked before training: the deployment model's GFLOPs, parameters and latency.

A candidate is costed analytically (``se_nas.design.cost.count_cost``, microseconds, no model built) on the
*deployment* model a space declares (by default the paper's 224x224 input and 1000 classes), not on
the cheap proxy that is trained; its latency is predicted from a table measured on the target device
(``se_nas.design.latency``, ``se-nas latency profile``). Over budget means never trained. ``Budget.check``
gives Optuna's constraint values (``<= 0`` is feasible) so the samplers learn the feasible region, and
``check_feasible`` refuses a budget that no architecture of the space can meet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import SeNasError


class BudgetError(SeNasError):
    """A budget that is not a positive finite number, or that no candidate can meet."""


@dataclass(frozen=True)
class Deploy:
    """The model whose cost the budget is measured on."""

    image_size: int = 224
    num_classes: int = 1000

    def __post_init__(self) -> None:
        for name in ("image_size", "num_classes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise BudgetError(f"deploy {name} must be a positive integer, got {name}={v!r}")

    def to_dict(self) -> dict[str, int]:
        return {"image_size": self.image_size, "num_classes": self.num_classes}


@dataclass(frozen=True)
class Budget:
    """Upper limits on the deployment model's GFLOPs, millions of parameters and predicted latency in
    milliseconds (None = no limit). ``latency`` is the table file the latency limit reads."""

    max_gflops: float | None = None
    max_mparams: float | None = None
    max_latency_ms: float | None = None
    latency: str | None = None
    latency_hash: str | None = field(default=None, compare=False)  # recorded by to_dict, read back as stored

    LIMITS = (("max_gflops", "--budget-gflops", "gflops"), ("max_mparams", "--budget-mparams", "mparams"),
              ("max_latency_ms", "--budget-latency-ms", "latency_ms"))

    def __post_init__(self) -> None:
        for name, flag, _ in self.LIMITS:
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise BudgetError(f"budget {flag} must be a positive finite number, got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.max_latency_ms is not None and not self.latency:
            raise BudgetError(f"budget --budget-latency-ms {self.max_latency_ms:g} needs the device's latency table: "
                              "--latency TABLE (written by `se-nas latency profile`)")

    @property
    def limited(self) -> bool:
        return any(getattr(self, name) is not None for name, _, _ in self.LIMITS)

    @property
    def constraint_names(self) -> tuple[str, ...]:
        """Names of the values ``check`` returns, in order."""
        return tuple(key for name, _, key in self.LIMITS if getattr(self, name) is not None)

    def latency_ms(self, arch) -> float | None:
        """``arch``'s latency predicted from the budget's table (None without a table)."""
        from .latency import predictor

        return predictor(self.latency).ms(arch) if self.latency else None

    def borderline(self, arch) -> str:
        """A note when ``arch``'s predicted latency lies within the table's uncertainty ``u`` of the
        latency limit, on either side ('' otherwise, and for a table whose uncertainty is unknown). A
        flag for the reader only: what fits and what the sampler is told do not change."""
        if self.max_latency_ms is None or not self.latency:
            return ""
        from .latency import predictor

        p = predictor(self.latency)
        ms = p.ms(arch)
        u = p.table.u_ms(ms)
        if u is None or abs(ms - self.max_latency_ms) > u:
            return ""
        return (f"{BORDERLINE}: predicted {ms:.2f} ms is within ± {u:.2f} ms (the table's uncertainty, "
                f"{p.table.uncertainty_pct:.1f}%) of the {self.max_latency_ms:g} ms latency limit")

    def _values(self, cost, arch) -> dict[str, float]:
        """The limited quantities of a design: its ``cost`` (a ``Cost`` or a trial outcome) and, for the
        latency limit, ``arch`` (default: ``cost.arch``)."""
        out = {}
        if self.max_gflops is not None:
            out["max_gflops"] = cost.gflops
        if self.max_mparams is not None:
            out["max_mparams"] = cost.mparams
        if self.max_latency_ms is not None:
            arch = arch if arch is not None else getattr(cost, "arch", None)
            if arch is None:
                raise BudgetError("the latency budget needs the design: check(cost, arch)")
            out["max_latency_ms"] = self.latency_ms(arch)
        return out

    def check(self, cost, arch=None) -> tuple[float, ...]:
        """Constraint values for Optuna: one per limit set, ``<= 0`` means within budget.

        Relative excess (``gflops / max - 1``) so both constraints are on the same scale for the
        samplers that add up violations (NSGA-II, TPE).
        """
        return tuple(v / getattr(self, name) - 1.0 for name, v in self._values(cost, arch).items())

    def fits(self, cost, arch=None) -> bool:
        return all(c <= 0 for c in self.check(cost, arch))

    def excess(self, cost, arch=None) -> str:
        """Why a cost is over budget, e.g. ``4.27 GFLOPs > 4 GFLOPs limit`` ('' if within)."""
        unit = {"max_gflops": " GFLOPs", "max_mparams": "M params", "max_latency_ms": " ms latency"}
        return ", ".join(f"{_above(v, getattr(self, name))}{unit[name]} > {getattr(self, name):g}{unit[name]} limit"
                         for name, v in self._values(cost, arch).items() if v > getattr(self, name))

    def describe(self) -> str:
        """The budget as a phrase that stands on its own: ``budget <= 4 GFLOPs`` or ``no budget``."""
        parts = []
        if self.max_gflops is not None:
            parts.append(f"<= {self.max_gflops:g} GFLOPs")
        if self.max_mparams is not None:
            parts.append(f"<= {self.max_mparams:g}M params")
        if self.max_latency_ms is not None:
            parts.append(f"<= {self.max_latency_ms:g} ms latency ({self.latency})")
        text = f"budget {' and '.join(parts)}" if parts else "no budget"
        return text if self.max_latency_ms is not None or not self.latency else \
            f"{text} (latency predicted from {self.latency})"

    def to_dict(self) -> dict[str, Any]:
        """As stored with a study. A budget with a latency table (a limit, or only the predicted latency
        recorded on every trial) records the table and its header hash (which device and settings it
        measured), so a resumed search can refuse another table."""
        d: dict[str, Any] = {"max_gflops": self.max_gflops, "max_mparams": self.max_mparams}
        if self.max_latency_ms is not None:
            d["max_latency_ms"] = self.max_latency_ms
        if self.latency:
            from .latency import predictor

            d.update(latency=self.latency, latency_hash=predictor(self.latency).table.hash)
        return d


BORDERLINE = "borderline"  # the word that starts a trial's borderline note (Budget.borderline)


def table_uncertainty(stored: dict[str, Any]) -> str:
    """The uncertainty of a study's latency table (``stored``: its budget as stored), for the report:
    '' without a table, or the table no longer readable as the same profile."""
    from .latency import LatencyError, predictor

    if not stored.get("latency"):
        return ""
    try:
        table = predictor(stored["latency"]).table
    except (LatencyError, OSError):
        return ""
    if table.hash != stored.get("latency_hash"):
        return ""
    u = table.uncertainty_pct
    return ("uncertainty unknown (a table from before se-nas measured one)" if u is None else
            f"± {u:.1f}% (its check of {len(table.check['designs'])} whole designs)")


def _above(value: float, limit: float) -> str:
    """``value`` with two decimals, or as many more as it takes to show that it exceeds ``limit``."""
    for digits in range(2, 10):
        text = f"{value:.{digits}f}"
        if float(text) > limit:
            return text
    return repr(value)


def check_feasible(space, budget: Budget, deploy: Deploy) -> None:
    """Raise BudgetError if no architecture of ``space`` can meet ``budget`` on ``deploy``.

    Exact: reads the space's whole FLOPs/parameters frontier (``SearchSpace.cost_frontier``), so a
    pair of limits that each alone some design meets, but no design meets together, is refused too.
    """
    if budget.latency:
        _check_latency_feasible(space, budget, deploy)
    if budget.max_gflops is None and budget.max_mparams is None:
        return
    from .cost import count_cost

    size, classes = deploy.image_size, deploy.num_classes
    front = [(count_cost(a, size, classes), a) for _, _, a in space.cost_frontier(size, classes)]
    (cf, by_flops), (cp, by_params) = front[0], front[-1]
    where = f"{size}x{size}, {classes} classes"
    if budget.max_gflops is not None and cf.gflops > budget.max_gflops:
        raise BudgetError(
            f"budget --budget-gflops {budget.max_gflops:g} is infeasible for every candidate in space "
            f"{space.name!r}: the cheapest is {cf.gflops:.3f} GFLOPs ({by_flops.label}, {where})")
    if budget.max_mparams is not None and cp.mparams > budget.max_mparams:
        raise BudgetError(
            f"budget --budget-mparams {budget.max_mparams:g} is infeasible for every candidate in space "
            f"{space.name!r}: the smallest is {cp.mparams:.3f}M params ({by_params.label}, {where})")
    if not any(all(c <= 0 for c in Budget(budget.max_gflops, budget.max_mparams).check(c)) for c, _ in front):
        # each limit alone is met by some design (checked above), so both are set
        within_f = min(c.mparams for c, _ in front if c.gflops <= budget.max_gflops)
        within_p = min(c.gflops for c, _ in front if c.mparams <= budget.max_mparams)
        raise BudgetError(
            f"budget --budget-gflops {budget.max_gflops:g} with --budget-mparams {budget.max_mparams:g} is "
            f"infeasible for every candidate in space {space.name!r} ({where}): within "
            f"{budget.max_gflops:g} GFLOPs the fewest parameters are {within_f:.3f}M, and within "
            f"{budget.max_mparams:g}M parameters the fewest FLOPs are {within_p:.3f} GFLOPs")


def fastest(space, table) -> tuple[float, Any]:
    """The least predicted latency of any design of ``space`` and that design: exact, since a design's
    latency is the rest plus one term per stage (its own choice's units), minimised stage by stage
    (a shared space: per shared design, each stage's faster of off and on)."""
    from dataclasses import replace as _replace

    from .latency import predictor

    p = predictor(table)
    plain = space.plain()
    n = len(space.stages)
    p.check(plain)
    if space.shared:  # per shared design, each stage off or on, whichever is faster and allowed
        designs = [o for o in space.stage_options(0) if o is not None] or [None]
        archs = []
        for d in designs:
            allowed = [[o for o, ok in ((None, False in st["enabled"]), (d, True in st["enabled"])) if ok]
                       for st in space.stages]
            archs.append(_replace(plain, stages=tuple(min(a, key=lambda o, i=i: p.stage_ms(i, o))
                                                      for i, a in enumerate(allowed))))
        best = min(archs, key=p.ms)
        return p.ms(best), best
    picks = tuple(min(space.stage_options(i), key=lambda o, i=i: p.stage_ms(i, o)) for i in range(n))
    arch = _replace(plain, stages=picks)
    return p.ms(arch), arch


def _check_latency_feasible(space, budget: Budget, deploy: Deploy) -> None:
    """The table prices the deployment model (its input, classes, the ImageNet stem at full width) and
    covers every option of every stage (``fastest`` reads them all); the limit, if any, can be met."""
    from .latency import predictor

    form = predictor(budget.latency).form
    have = (form.image_size, form.num_classes, form.stem, form.width)
    classes = f" --num-classes {deploy.num_classes}" if deploy.num_classes != 1000 else ""
    if have != (deploy.image_size, deploy.num_classes, "imagenet", 1.0):
        raise BudgetError(
            f"latency table {budget.latency!r} was profiled on the {form.image_size}x{form.image_size}, "
            f"{form.num_classes}-class model (stem {form.stem}, width {form.width:g}), but space {space.name!r} "
            f"deploys {deploy.image_size}x{deploy.image_size}, {deploy.num_classes} classes (stem imagenet, width 1); "
            f"profile it with: se-nas latency profile --space {space.source or space.name} --image-size "
            f"{deploy.image_size}{classes} -o TABLE")
    ms, arch = fastest(space, budget.latency)
    if budget.max_latency_ms is not None and ms > budget.max_latency_ms:
        raise BudgetError(
            f"budget --budget-latency-ms {budget.max_latency_ms:g} is infeasible for every candidate in space "
            f"{space.name!r}: the fastest is {ms:.2f} ms ({arch.label}, predicted from {budget.latency})")


def predicted_latencies(stored: dict[str, Any], records, archs=()) -> dict[str, float]:
    """Predicted latency (ms) by design id for a study whose stored budget is ``stored``: as its trials
    recorded it (``records``), and for ``archs`` no trial recorded (calibration and confirmation
    designs, an exported one) from the study's table while that file is readable and still the
    profile the study used (its header hash). Empty for a study without a latency table."""
    import warnings

    from .latency import LatencyError, predictor

    if not stored.get("latency"):
        return {}
    out = {r.arch.id: r.latency_ms for r in records if r.arch is not None and r.latency_ms is not None}
    missing = [a for a in archs if a.id not in out]
    if missing:
        try:
            with warnings.catch_warnings():  # another machine's table: the study chose it, as recorded
                warnings.simplefilter("ignore")
                p = predictor(stored["latency"])
        except (OSError, LatencyError):
            return out
        if p.table.hash == stored.get("latency_hash"):
            for a in missing:
                try:
                    out[a.id] = p.ms(a)
                except LatencyError:  # a design the table does not cover: shown without a latency
                    pass
    return out
