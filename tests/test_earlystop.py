"""The noise-aware, cost-aware rung rule against hand-worked cases and synthetic histories."""
import random

import pytest

from se_nas.search.earlystop import Peer, RungStopper, peers_of, should_stop
from se_nas.record.results import Noise


def peers(*rows):
    return [Peer(g, p, (h,)) for g, p, h in rows]


# Four peers of about 4 GFLOPs, 25M params; accuracies at epoch 2: 0.5, 0.6, 0.7, 0.8 (median 0.65)
BAND = peers((4.0, 25.0, (0.3, 0.5)), (4.1, 26.0, (0.3, 0.6)), (3.9, 24.0, (0.4, 0.7)), (4.0, 25.0, (0.5, 0.8, 0.9)))
QUIET = 0.0  # noise measured as zero: the rule reduces to the plain cost-aware median rule


def test_stops_a_poor_dominated_candidate():
    assert should_stop(2, 0.55, 4.0, BAND, QUIET, mparams=25.0)


def test_keeps_a_candidate_at_or_above_the_median():
    assert not should_stop(2, 0.65, 4.0, BAND, QUIET, mparams=25.0)
    assert not should_stop(2, 0.66, 4.0, BAND, QUIET, mparams=25.0, quantile=0.5)


def test_quantile_changes_the_threshold():
    # 25% quantile of (0.5, 0.6, 0.7, 0.8) is 0.575 (linear interpolation)
    assert should_stop(2, 0.57, 4.0, BAND, QUIET, mparams=25.0, quantile=0.25)
    assert not should_stop(2, 0.58, 4.0, BAND, QUIET, mparams=25.0, quantile=0.25)


def test_never_stops_a_candidate_cheaper_than_every_better_peer():
    # 0.55 beats only the 0.5 peer; every peer beating it costs more GFLOPs or params than 3.8/23 (+1%)
    assert not should_stop(2, 0.55, 3.8, BAND, QUIET, mparams=23.0)
    # the same accuracy at the cost of the 0.7 peer (3.9 GFLOPs, 24M) is dominated by it
    assert should_stop(2, 0.55, 3.9, BAND, QUIET, mparams=24.0)


def test_needs_min_peers_that_reached_the_epoch_in_the_cost_band():
    assert not should_stop(3, 0.1, 4.0, BAND, QUIET, mparams=25.0)  # only one peer reached epoch 3
    assert not should_stop(2, 0.1, 4.0, BAND[:3], QUIET, mparams=25.0)
    assert should_stop(2, 0.1, 4.0, BAND[:3], QUIET, mparams=25.0, min_peers=3)
    far = peers((10.0, 25.0, (0.9, 0.9)),) * 10  # outside the 1.5x band of 4 GFLOPs: ignored
    assert not should_stop(2, 0.1, 4.0, far, QUIET, mparams=25.0)
    assert not should_stop(2, 0.1, 7.0, far, QUIET, mparams=25.0)  # in the band, but every peer costs more
    assert should_stop(2, 0.1, 10.0, far, QUIET, mparams=25.0)


def test_unmeasured_noise_stops_nothing():
    assert not should_stop(2, 0.0, 4.0, BAND, None, mparams=25.0)
    assert not should_stop(2, 0.0, 4.0, BAND, float("nan"), mparams=25.0)


def test_a_gap_within_the_noise_band_never_stops():
    # median 0.65; with noise 0.1 at this rung and z=2, only accuracies below 0.65 - 0.2 can be poor,
    # and a dominating peer must beat the candidate by more than 2 * 0.1 * sqrt(1 + 1/1) = 0.283
    assert not should_stop(2, 0.55, 4.0, BAND, 0.1, mparams=25.0)
    assert not should_stop(2, 0.45, 4.0, BAND, 0.1, mparams=25.0)  # 0.8 - 0.45 = 0.35 > 0.283 but 0.45 = median - 0.2
    assert should_stop(2, 0.44, 4.0, BAND, 0.1, mparams=25.0)
    # a peer known from more seeds has a better-known mean: a smaller gap suffices
    many = [Peer(4.0, 25.0, ((0.3, 0.8),) * 4)] + BAND[:3]
    assert not should_stop(2, 0.58, 4.0, many, 0.1, mparams=25.0, quantile=0.99)
    assert should_stop(2, 0.57, 4.0, many, 0.1, mparams=25.0, quantile=0.99)  # 0.8 - 0.57 > 2 * 0.1 * sqrt(1.25)


def test_synthetic_histories_seed_noise_alone_stops_almost_nothing():
    """Designs that are all equally good, seen through seed noise of 0.15 at the rung (as the digits
    proxy after epoch 2): the rule, told the measured noise, stops under 5% of candidates, where the
    noise-blind median rule stops about half."""
    rng = random.Random(0)
    sigma = 0.15
    stops_aware = stops_blind = 0
    trials = 400
    for _ in range(trials):
        band = [Peer(4.0, 25.0, ((0.0, rng.gauss(0.6, sigma)),)) for _ in range(8)]
        acc = rng.gauss(0.6, sigma)
        stops_aware += should_stop(2, acc, 4.0, band, sigma, mparams=25.0)
        stops_blind += should_stop(2, acc, 4.0, band, 0.0, mparams=25.0)
    assert stops_aware / trials < 0.05 and stops_blind / trials > 0.3


def test_bad_rule_settings():
    with pytest.raises(ValueError, match="quantile"):
        should_stop(1, 0.5, 4.0, BAND, QUIET, quantile=1.5)


def test_rung_stopper_only_acts_at_rungs_and_reads_the_study_each_time():
    calls = []

    def context():
        calls.append(1)
        return BAND, Noise(None, 0, 0, {2: 0.0})

    stop = RungStopper([2], 4.0, 25.0, context)
    assert not stop(1, 0.0) and calls == []  # not a rung: nothing read
    assert stop(2, 0.55) and stop.stopped_at == 2 and len(calls) == 1


def test_peers_are_designs_with_every_run():
    from se_nas.design.arch import PRESETS
    from se_nas.record.study import Status, TrialRecord

    a, b = PRESETS["resnet18"], PRESETS["se_resnet18"]
    recs = [TrialRecord(0, Status.COMPLETE, a, 0.9, 1.8, 11.7, 2, (0.5, 0.9)),
            TrialRecord(1, Status.STOPPED_EARLY, a, 0.3, 1.8, 11.7, 1, (0.3,)),
            TrialRecord(2, Status.COMPLETE, b, 0.8, 1.8, 11.8, 2, (0.4, 0.8)),
            TrialRecord(3, Status.OVER_BUDGET, b, None, 1.8, 11.8)]
    ps = {p.mparams: p for p in peers_of(recs)}
    assert ps[11.7].at(1) == (pytest.approx(0.4), 2) and ps[11.7].at(2) == (0.9, 1)
    assert ps[11.8].at(1) == (0.4, 1) and len(peers_of(recs, exclude=2)) == 1
