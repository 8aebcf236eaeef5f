"""Budgets checked before training: the deployment model's GFLOPs and parameters.

A candidate is costed analytically (``se_nas.cost.count_cost``, microseconds, no model built) on the
*deployment* model a space declares (by default the paper's 224x224 input and 1000 classes), not on
the cheap proxy that is trained. Over budget means never trained. ``Budget.check`` gives Optuna's
constraint values (``<= 0`` is feasible) so the samplers learn the feasible region, and
``check_feasible`` refuses a budget that no architecture of the space can meet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


class BudgetError(ValueError):
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
    """Upper limits on the deployment model's GFLOPs and millions of parameters (None = no limit)."""

    max_gflops: float | None = None
    max_mparams: float | None = None

    def __post_init__(self) -> None:
        for name, flag in (("max_gflops", "--budget-gflops"), ("max_mparams", "--budget-mparams")):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise BudgetError(f"budget {flag} must be a positive finite number, got {v!r}")
            object.__setattr__(self, name, float(v))

    @property
    def limited(self) -> bool:
        return self.max_gflops is not None or self.max_mparams is not None

    @property
    def constraint_names(self) -> tuple[str, ...]:
        """Names of the values ``check`` returns, in order."""
        return tuple(n for n, v in (("gflops", self.max_gflops), ("mparams", self.max_mparams)) if v is not None)

    def check(self, cost) -> tuple[float, ...]:
        """Constraint values for Optuna: one per limit set, ``<= 0`` means within budget.

        Relative excess (``gflops / max - 1``) so both constraints are on the same scale for the
        samplers that add up violations (NSGA-II, TPE).
        """
        out = []
        if self.max_gflops is not None:
            out.append(cost.gflops / self.max_gflops - 1.0)
        if self.max_mparams is not None:
            out.append(cost.mparams / self.max_mparams - 1.0)
        return tuple(out)

    def fits(self, cost) -> bool:
        return all(c <= 0 for c in self.check(cost))

    def excess(self, cost) -> str:
        """Why a cost is over budget, e.g. ``4.27 GFLOPs > 4 GFLOPs limit`` ('' if within)."""
        parts = []
        if self.max_gflops is not None and cost.gflops > self.max_gflops:
            parts.append(f"{_above(cost.gflops, self.max_gflops)} GFLOPs > {self.max_gflops:g} GFLOPs limit")
        if self.max_mparams is not None and cost.mparams > self.max_mparams:
            parts.append(f"{_above(cost.mparams, self.max_mparams)}M params > {self.max_mparams:g}M params limit")
        return ", ".join(parts)

    def describe(self) -> str:
        """The budget as a phrase that stands on its own: ``budget <= 4 GFLOPs`` or ``no budget``."""
        parts = []
        if self.max_gflops is not None:
            parts.append(f"<= {self.max_gflops:g} GFLOPs")
        if self.max_mparams is not None:
            parts.append(f"<= {self.max_mparams:g}M params")
        return f"budget {' and '.join(parts)}" if parts else "no budget"

    def to_dict(self) -> dict[str, Any]:
        return {"max_gflops": self.max_gflops, "max_mparams": self.max_mparams}


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
    if not budget.limited:
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
    if not any(budget.fits(c) for c, _ in front):
        # each limit alone is met by some design (checked above), so both are set
        within_f = min(c.mparams for c, _ in front if c.gflops <= budget.max_gflops)
        within_p = min(c.gflops for c, _ in front if c.mparams <= budget.max_mparams)
        raise BudgetError(
            f"budget --budget-gflops {budget.max_gflops:g} with --budget-mparams {budget.max_mparams:g} is "
            f"infeasible for every candidate in space {space.name!r} ({where}): within "
            f"{budget.max_gflops:g} GFLOPs the fewest parameters are {within_f:.3f}M, and within "
            f"{budget.max_mparams:g}M parameters the fewest FLOPs are {within_p:.3f} GFLOPs")
