"""Early stopping of poor candidates in a multi-objective search: cost-aware rungs.

Optuna's pruners and ``Trial.report`` do not work in multi-objective studies, and a plain
"below the median" rule would wrongly stop a cheap candidate whose accuracy is low but which is still
on the accuracy/cost Pareto front. The rule here:

At a rung epoch ``e`` (``Recipe.rungs``) a candidate with validation accuracy ``a`` and deployment
cost ``(g, p)`` (GFLOPs, M params) is stopped only if **both** hold:

1. *Poor among its cost band*: there are at least ``min_peers`` earlier trials that reached epoch
   ``e`` and whose GFLOPs lie within a factor ``band`` of ``g``, and ``a`` is below the ``quantile``
   (default the median) of their accuracies at epoch ``e``;
2. *Dominated*: some of those peers had at least ``a`` at epoch ``e`` while costing no more
   (``gflops <= g * (1 + slack)`` and ``mparams <= p * (1 + slack)``, same for both).

Condition 2 is what keeps the rule sound for a Pareto search: a candidate that is more than
``slack`` (1%) cheaper than every peer that beats it may still end on the front, so it is never
stopped. Within ``slack`` costs count as equal: in a per-stage SE space most candidates cost within
a percent of each other (3.86-3.91 GFLOPs in the default space), and strict dominance would almost
never stop anything; ``slack=0`` gives strict dominance. Comparing at the same epoch
keeps the comparison fair (every peer was as far into training). Peers come from the study's trials'
``history`` attributes, so the rule works the same across worker processes and machines.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np


@dataclass(frozen=True)
class Peer:
    """An earlier trial: its deployment cost and validation accuracy after each epoch."""

    gflops: float
    mparams: float
    history: tuple[float, ...]


def should_stop(epoch: int, accuracy: float, gflops: float, peers: Iterable[Peer], *,
                mparams: float | None = None, band: float = 1.5, min_peers: int = 4,
                quantile: float = 0.5, slack: float = 0.01) -> bool:
    """True if a candidate at ``epoch`` with ``accuracy`` and cost (``gflops``, ``mparams``) is poor
    among its cost band and dominated there (see the module docstring). ``mparams=None`` compares
    on GFLOPs only."""
    if band < 1 or not 0 < quantile < 1 or min_peers < 1 or slack < 0:
        raise ValueError(f"need band >= 1, 0 < quantile < 1, min_peers >= 1, slack >= 0; got "
                         f"{band=}, {quantile=}, {min_peers=}, {slack=}")
    at_epoch = [(p, p.history[epoch - 1]) for p in peers
                if len(p.history) >= epoch and gflops / band <= p.gflops <= gflops * band]
    if len(at_epoch) < min_peers:
        return False
    if accuracy >= float(np.quantile([a for _, a in at_epoch], quantile)):
        return False
    return any(
        a >= accuracy and p.gflops <= gflops * (1 + slack)
        and (mparams is None or p.mparams <= mparams * (1 + slack))
        for p, a in at_epoch
    )


class RungStopper:
    """``on_epoch`` callback for ``se_nas.train.train``: applies ``should_stop`` at the rung epochs.

    ``peers`` is called at each rung (not once), so trials finished meanwhile by other workers count.
    ``stopped_at`` records the rung that stopped the candidate.
    """

    def __init__(self, rungs: Sequence[int], gflops: float, mparams: float,
                 peers: Callable[[], Iterable[Peer]], **rule):
        self.rungs = frozenset(int(r) for r in rungs)
        self.gflops = gflops
        self.mparams = mparams
        self.peers = peers
        self.rule = rule
        self.stopped_at: int | None = None

    def __call__(self, epoch: int, accuracy: float) -> bool:
        if epoch not in self.rungs:
            return False
        if should_stop(epoch, accuracy, self.gflops, list(self.peers()), mparams=self.mparams, **self.rule):
            self.stopped_at = epoch
            return True
        return False


def peers_from_study(study, exclude: int | None = None) -> list[Peer]:
    """Peers from every finished trial of ``study`` that was trained (complete or stopped early)."""
    import optuna

    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        a = t.user_attrs
        if t.number == exclude or a.get("status") not in ("complete", "stopped_early"):
            continue
        if a.get("history") and a.get("gflops") is not None:
            if a.get("mparams") is None:  # a peer of unknown size must not "dominate" on parameters
                continue
            out.append(Peer(float(a["gflops"]), float(a["mparams"]), tuple(a["history"])))
    return out
