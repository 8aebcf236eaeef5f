"""Early stopping of poor candidates in a multi-objective search: cost-aware rungs that respect noise.

Optuna's pruners and ``Trial.report`` do not work in multi-objective studies, and a plain
"below the median" rule would wrongly stop a cheap candidate whose accuracy is low but which is still
on the accuracy/cost Pareto front. Worse, at an early rung the accuracy of a small proxy is dominated
by seed noise: one design of the default search scored 0.13, 0.50, 0.54 and 0.62 after epoch 2 under
four seeds. A rule that ignores that noise stops designs by luck.

At a rung epoch ``e`` (``Recipe.rungs``) a candidate with validation accuracy ``a`` and deployment
cost ``(g, p)`` (GFLOPs, M params) is stopped only if **all** hold:

1. *Noise is known at this rung*: the seed-to-seed standard deviation ``s_e`` of the accuracy after
   epoch ``e`` has been measured (``se_nas.record.results.Noise.per_epoch``, from designs trained under
   several seeds: the calibration runs and repeated designs). Unmeasured noise stops nothing.
2. *Poor among its cost band beyond the noise*: at least ``min_peers`` other designs reached epoch
   ``e`` with GFLOPs within a factor ``band`` of ``g``, and ``a`` is more than ``z * s_e`` below the
   ``quantile`` (default the median) of their per-design mean accuracies at epoch ``e``;
3. *Dominated beyond the noise*: one of those designs costs no more (``gflops <= g * (1 + slack)``
   and ``mparams <= p * (1 + slack)``) and its mean at epoch ``e`` over ``n`` seeds beats ``a`` by
   more than ``z * s_e * sqrt(1 + 1/n)``, the noise of a difference between one run and an ``n``-run mean.

Condition 3 keeps the rule sound for a Pareto search (a candidate cheaper than every design that
beats it may still end on the front); conditions 1-3 together keep it from acting on noise: with
``z = 2`` a design whose true accuracy equals its dominating peer's is stopped with probability
about 2%. Peers and noise come from the study, so the rule works the same across worker processes
and machines.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np


@dataclass(frozen=True)
class Peer:
    """An earlier design: its deployment cost and the per-epoch validation accuracy of each run."""

    gflops: float
    mparams: float
    histories: tuple[tuple[float, ...], ...]

    def at(self, epoch: int) -> tuple[float, int] | None:
        """(mean accuracy after ``epoch`` over the runs that reached it, how many), or None."""
        vals = [h[epoch - 1] for h in self.histories if len(h) >= epoch]
        return (statistics.fmean(vals), len(vals)) if vals else None


def should_stop(epoch: int, accuracy: float, gflops: float, peers: Iterable[Peer], noise: float | None, *,
                mparams: float | None = None, band: float = 1.5, min_peers: int = 4,
                quantile: float = 0.5, slack: float = 0.01, z: float = 2.0) -> bool:
    """True if a candidate at ``epoch`` with ``accuracy`` and cost (``gflops``, ``mparams``) is poor
    among its cost band and dominated there, both by more than ``z`` times the seed noise ``noise``
    (the standard deviation of accuracy after ``epoch``; None: unmeasured, never stop). See the
    module docstring. ``mparams=None`` compares on GFLOPs only."""
    if band < 1 or not 0 < quantile < 1 or min_peers < 1 or slack < 0 or z < 0:
        raise ValueError(f"need band >= 1, 0 < quantile < 1, min_peers >= 1, slack >= 0, z >= 0; got "
                         f"{band=}, {quantile=}, {min_peers=}, {slack=}, {z=}")
    if noise is None or not math.isfinite(noise):
        return False
    at_epoch = []
    for p in peers:
        hit = p.at(epoch)
        if hit is not None and gflops / band <= p.gflops <= gflops * band:
            at_epoch.append((p, *hit))
    if len(at_epoch) < min_peers:
        return False
    if accuracy >= float(np.quantile([m for _, m, _ in at_epoch], quantile)) - z * noise:
        return False
    return any(
        m - accuracy > z * noise * math.sqrt(1 + 1 / n) and p.gflops <= gflops * (1 + slack)
        and (mparams is None or p.mparams <= mparams * (1 + slack))
        for p, m, n in at_epoch
    )


class RungStopper:
    """``on_epoch`` callback for ``se_nas.nn.train.train``: applies ``should_stop`` at the rung epochs.

    ``context()`` returns ``(peers, noise)`` (``noise`` a ``se_nas.record.results.Noise``) and is called
    at each rung, not once, so trials finished meanwhile by other workers count. ``stopped_at``
    records the rung that stopped the candidate.
    """

    def __init__(self, rungs: Sequence[int], gflops: float, mparams: float,
                 context: Callable[[], tuple[Iterable[Peer], object]], **rule):
        self.rungs = frozenset(int(r) for r in rungs)
        self.gflops = gflops
        self.mparams = mparams
        self.context = context
        self.rule = rule
        self.stopped_at: int | None = None

    def __call__(self, epoch: int, accuracy: float) -> bool:
        if epoch not in self.rungs:
            return False
        peers, noise = self.context()
        if should_stop(epoch, accuracy, self.gflops, list(peers), noise.per_epoch.get(epoch),
                       mparams=self.mparams, **self.rule):
            self.stopped_at = epoch
            return True
        return False


@dataclass(frozen=True)
class Seen:
    """A ``RungStopper`` context fixed when the trial was asked: the peers and the noise the study held
    then. A parallel search judges every rung by this, so a decision never depends on which other
    trials happened to finish first (``se_nas.search.optuna_backend.search_trials``)."""

    peers: tuple[Peer, ...]
    noise: object

    def __call__(self) -> tuple[tuple[Peer, ...], object]:
        return self.peers, self.noise


def peers_of(records, exclude: int | None = None) -> list[Peer]:
    """One peer per design from a study's trained trials (complete or stopped early)."""
    by: dict[str, tuple[float, float, list]] = {}
    for r in records:
        if r.number == exclude or not r.trained or r.arch is None or not r.history:
            continue
        if r.gflops is None or r.mparams is None:  # a peer of unknown size must not "dominate"
            continue
        by.setdefault(r.arch.id, (float(r.gflops), float(r.mparams), []))[2].append(tuple(r.history))
    return [Peer(g, p, tuple(h)) for g, p, h in by.values()]
