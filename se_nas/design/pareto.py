"""Pareto fronts and hypervolume: plain functions over arrays of objective values.

Reports, export (``--best``) and compare all need "which designs are not beaten on every objective"
and "how much of the objective space the search has covered so far". These functions know nothing
about studies or architectures: they take an ``(n, m)`` array of objective values and one direction
per column ("maximize" or "minimize"), like Optuna's ``optuna/study/_multi_objective.py``.

Internally every column is turned into a minimisation (maximised columns are negated), so a point
``a`` dominates ``b`` when ``a <= b`` in every column and ``a < b`` in at least one.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

DIRECTIONS = ("maximize", "minimize")


def _as_minimize(points, directions: Sequence[str], what: str = "points") -> np.ndarray:
    """``points`` as a float (n, m) array with maximised columns negated; validated."""
    pts = np.asarray(points, dtype=float)
    if pts.ndim == 1 and pts.size == 0:
        pts = pts.reshape(0, len(directions))
    if pts.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (one row per point), got shape {pts.shape}")
    if pts.shape[1] != len(directions):
        raise ValueError(
            f"{what} have {pts.shape[1]} objective column(s) but {len(directions)} direction(s) were given"
        )
    if not np.all(np.isfinite(pts)):
        raise ValueError(f"{what} must be finite; drop unfinished trials first (found NaN or inf)")
    signs = np.empty(len(directions))
    for i, d in enumerate(directions):
        d = getattr(d, "name", d)  # also accept optuna.study.StudyDirection
        d = str(d).lower()
        if d not in DIRECTIONS:
            raise ValueError(f"direction {i} must be one of {DIRECTIONS}, got {directions[i]!r}")
        signs[i] = -1.0 if d == "maximize" else 1.0
    return pts * signs


def dominates(a, b, directions: Sequence[str]) -> bool:
    """Whether point ``a`` dominates point ``b``: no worse in every objective, better in one."""
    pa, pb = _as_minimize([a, b], directions)
    return bool(np.all(pa <= pb) and np.any(pa < pb))


def _front_mask(p: np.ndarray) -> np.ndarray:
    """Non-dominated rows of minimisation points ``p``, by the number of objectives (as Optuna's
    ``_multi_objective.py``): a sort for one or two, pairwise comparisons beyond."""
    if len(p) == 0:
        return np.ones(0, dtype=bool)
    if p.shape[1] == 1:
        return p[:, 0] == p[:, 0].min()
    if p.shape[1] == 2:
        return _front_mask_2d(p)
    return _front_mask_nd(p)


def _front_mask_2d(p: np.ndarray) -> np.ndarray:
    """O(n log n) sweep. Sorted by x then y, a point is on the front when its y is the least among
    the points with its x and lower than every y of a smaller x."""
    order = np.lexsort((p[:, 1], p[:, 0]))
    x, y = p[order, 0], p[order, 1]
    first = np.searchsorted(x, x, side="left")  # where each point's group of equal x starts
    best_before = np.concatenate(([np.inf], np.minimum.accumulate(y)[:-1]))  # least y of earlier rows
    mask = np.empty(len(p), dtype=bool)
    mask[order] = (y == y[first]) & (y[first] < best_before[first])
    return mask


def _front_mask_nd(p: np.ndarray) -> np.ndarray:
    mask = np.ones(len(p), dtype=bool)
    for i in range(len(p)):
        # i is dominated if some point is <= everywhere and < somewhere; vectorised over all points
        if np.any(np.all(p <= p[i], axis=1) & np.any(p < p[i], axis=1)):
            mask[i] = False
    return mask


def pareto_front(points, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``points``.

    Duplicated points are all on the front (neither dominates the other), as in Optuna.
    """
    return _front_mask(_as_minimize(points, directions))


def nondominated_rank(points, directions: Sequence[str]) -> np.ndarray:
    """Non-dominated sorting: rank 0 is the Pareto front, rank 1 the front once rank 0 is removed, ..."""
    p = _as_minimize(points, directions)
    rank = np.full(len(p), -1, dtype=int)
    left = np.arange(len(p))
    r = 0
    while left.size:
        m = _front_mask(p[left])
        rank[left[m]] = r
        left = left[~m]
        r += 1
    return rank


def _hv_2d(p: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated by minimisation points ``p`` (all strictly better than ``ref``) up to ``ref``."""
    order = np.lexsort((p[:, 1], p[:, 0]))  # by x, then y
    area, best_y = 0.0, ref[1]
    for x, y in p[order]:
        if y < best_y:
            # every later point has a larger x, so in the band [y, best_y) this point reaches furthest
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return area


def _hv(p: np.ndarray, ref: np.ndarray) -> float:
    d = p.shape[1]
    if len(p) == 0:
        return 0.0
    if d == 1:
        return float(ref[0] - p[:, 0].min())
    if d == 2:
        return _hv_2d(p, ref)
    # Slice along the last objective: between consecutive last-coordinate values, the dominated
    # region's cross-section is the (d-1)-dimensional hypervolume of the points already passed.
    p = p[np.argsort(p[:, -1], kind="stable")]
    total = 0.0
    for i in range(len(p)):
        upper = p[i + 1, -1] if i + 1 < len(p) else ref[-1]
        height = upper - p[i, -1]
        if height > 0:
            sub = p[: i + 1, :-1]
            total += height * _hv(sub[_front_mask(sub)], ref[:-1])
    return total


def hypervolume(points, directions: Sequence[str], reference) -> float:
    """Exact hypervolume dominated by ``points`` and bounded by ``reference``.

    Points that do not strictly beat the reference in every objective add nothing (they are dropped).
    Exact for any number of objectives by slicing; meant for the sizes of a search (hundreds of
    points, 2 or 3 objectives).
    """
    p = _as_minimize(points, directions)
    ref = _as_minimize(np.asarray(reference, dtype=float).reshape(1, -1), directions, "reference")[0]
    p = p[np.all(p < ref, axis=1)]
    if len(p) == 0:
        return 0.0
    return float(_hv(p[_front_mask(p)], ref))


def hypervolume_history(points, directions: Sequence[str], reference, include=None) -> np.ndarray:
    """Hypervolume of the first 1, 2, ..., n points: how the search's coverage grew trial by trial.

    ``include`` (a boolean mask) says which rows count (e.g. completed, within-budget trials); the
    others keep their place in the sequence but never add volume. Rows excluded by ``include`` may
    hold NaN.
    """
    pts = np.asarray(points, dtype=float)
    n = len(pts)
    inc = np.ones(n, dtype=bool) if include is None else np.asarray(include, dtype=bool)
    if inc.shape != (n,):
        raise ValueError(f"include must be a boolean mask of length {n}, got shape {inc.shape}")
    out = np.zeros(n)
    front = np.empty((0, len(directions)))
    hv = 0.0
    for i in range(n):
        if inc[i]:
            cand = np.vstack([front, pts[i : i + 1]])
            m = pareto_front(cand, directions)
            # only a point that joins the front can change the volume
            if m[-1]:
                front = cand[m]
                hv = hypervolume(front, directions, reference)
        out[i] = hv
    return out
