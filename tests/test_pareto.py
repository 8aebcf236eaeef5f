"""Pareto front, non-dominated sorting and hypervolume against brute force and hand examples."""
import itertools

import numpy as np
import pytest

from se_nas.design.pareto import dominates, hypervolume, hypervolume_history, nondominated_rank, pareto_front

ACC_FLOPS = ("maximize", "minimize")


def brute_front(points, directions):
    """Pairwise definition, in plain Python: i is on the front unless some j is >= everywhere
    (in the better direction) and strictly better somewhere."""
    sign = [1 if d == "minimize" else -1 for d in directions]
    out = []
    for a in points:
        dominated = False
        for b in points:
            no_worse = all(s * bj <= s * aj for s, aj, bj in zip(sign, a, b))
            better = any(s * bj < s * aj for s, aj, bj in zip(sign, a, b))
            dominated |= no_worse and better
        out.append(not dominated)
    return np.array(out)


def brute_hv(points, directions, reference):
    """Exact hypervolume by inclusion on the grid of all coordinates: each grid cell is either
    dominated or not, so summing the volumes of dominated cells is exact for any dimension."""
    sign = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    p = np.asarray(points, float) * sign
    ref = np.asarray(reference, float) * sign
    p = p[np.all(p < ref, axis=1)]
    if len(p) == 0:
        return 0.0
    axes = [np.unique(np.append(p[:, k], ref[k])) for k in range(p.shape[1])]
    total = 0.0
    for idx in itertools.product(*[range(len(a) - 1) for a in axes]):
        lo = np.array([axes[k][i] for k, i in enumerate(idx)])
        hi = np.array([axes[k][i + 1] for k, i in enumerate(idx)])
        if np.any(np.all(p <= lo, axis=1)):  # the cell's lower corner is dominated, so all of it is
            total += float(np.prod(hi - lo))
    return total


def test_hand_example_2d():
    # accuracy up, GFLOPs down. (0.9, 2) and (0.8, 1) trade off; (0.7, 3) is beaten by both;
    # (0.9, 2) duplicated stays on the front twice.
    pts = [(0.9, 2.0), (0.8, 1.0), (0.7, 3.0), (0.9, 2.0), (0.8, 1.5)]
    assert pareto_front(pts, ACC_FLOPS).tolist() == [True, True, False, True, False]
    assert nondominated_rank(pts, ACC_FLOPS).tolist() == [0, 0, 2, 0, 1]
    # reference (accuracy 0, 4 GFLOPs): rectangles 0.9*2 + 0.8*1 (the band 1..2 only reaches 0.8)
    assert hypervolume(pts, ACC_FLOPS, (0.0, 4.0)) == pytest.approx(0.9 * 2 + 0.8 * 1)
    assert dominates((0.9, 1.0), (0.9, 2.0), ACC_FLOPS)
    assert not dominates((0.9, 2.0), (0.9, 2.0), ACC_FLOPS)


def test_hand_example_3d():
    # minimise, reference (3, 3, 3): the points dominate the boxes [2,3]x[2,3]x[1,3] (volume 2) and
    # [1,3]x[2,3]x[2,3] (volume 2), which overlap in [2,3]^3 (volume 1): union 3
    mins = ("minimize",) * 3
    pts = [(2.0, 2.0, 1.0), (1.0, 2.0, 2.0)]
    assert hypervolume(pts, mins, (3.0, 3.0, 3.0)) == pytest.approx(3.0)
    # a point outside the reference box adds nothing
    assert hypervolume(pts + [(3.5, 0.0, 0.0)], mins, (3.0, 3.0, 3.0)) == pytest.approx(3.0)


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_front_and_rank_match_brute_force(m):
    rng = np.random.default_rng(m)
    dirs = tuple(rng.choice(["maximize", "minimize"], m))
    for trial in range(20):
        # few distinct values so that ties and duplicates are common
        pts = rng.integers(0, 5, size=(rng.integers(1, 25), m)).astype(float)
        mask = pareto_front(pts, dirs)
        assert mask.tolist() == brute_front(pts.tolist(), dirs).tolist()
        rank = nondominated_rank(pts, dirs)
        # rank k is the front of what is left after removing ranks < k
        for k in range(rank.max() + 1):
            left = rank >= k
            assert (rank[left] == k).tolist() == brute_front(pts[left].tolist(), dirs).tolist()


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_hypervolume_matches_brute_force(m):
    rng = np.random.default_rng(10 + m)
    dirs = tuple(rng.choice(["maximize", "minimize"], m))
    for trial in range(15):
        n = int(rng.integers(1, 12 if m < 4 else 7))
        pts = rng.uniform(0, 1, size=(n, m))
        if trial % 3 == 0:
            pts = np.round(pts * 4) / 4  # ties
        ref = np.array([0.0 if d == "maximize" else 1.0 for d in dirs])
        assert hypervolume(pts, dirs, ref) == pytest.approx(brute_hv(pts, dirs, ref), abs=1e-12)


def test_history_is_prefix_hypervolume_and_respects_include():
    rng = np.random.default_rng(3)
    dirs = ("maximize", "minimize", "minimize")
    pts = rng.uniform(0, 1, size=(30, 3))
    include = rng.random(30) < 0.7
    pts[~include] = np.nan  # excluded rows may be unfinished
    ref = (0.0, 1.0, 1.0)
    hist = hypervolume_history(pts, dirs, ref, include)
    for i in range(30):
        keep = include[: i + 1]
        want = brute_hv(pts[: i + 1][keep], dirs, ref) if keep.any() else 0.0
        assert hist[i] == pytest.approx(want, abs=1e-12)
    assert np.all(np.diff(hist) >= -1e-15)  # coverage never shrinks


@pytest.mark.parametrize(
    "points, directions, match",
    [
        ([(1.0, 2.0)], ("maximize",), "2 objective column"),
        ([(1.0, float("nan"))], ACC_FLOPS, "finite"),
        ([(1.0, 2.0)], ("maximize", "smaller"), "direction 1"),
        ([1.0, 2.0], ACC_FLOPS, "2-D"),
    ],
)
def test_bad_input_is_named(points, directions, match):
    with pytest.raises(ValueError, match=match):
        pareto_front(points, directions)


def test_empty_input():
    assert pareto_front(np.empty((0, 2)), ACC_FLOPS).tolist() == []
    assert hypervolume(np.empty((0, 2)), ACC_FLOPS, (0, 1)) == 0.0


def test_two_objective_sweep_equals_general_case():
    """The 2-D dispatch (a sort) and the pairwise general case agree, ties and duplicates included."""
    from se_nas.design.pareto import _front_mask_2d, _front_mask_nd

    rng = np.random.default_rng(7)
    for trial in range(30):
        pts = rng.integers(0, 6 if trial % 2 else 1000, size=(int(rng.integers(1, 300)), 2)).astype(float)
        assert _front_mask_2d(pts).tolist() == _front_mask_nd(pts).tolist()
