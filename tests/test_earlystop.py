"""The cost-aware rung rule against hand-worked cases."""
import pytest

from se_nas.earlystop import Peer, RungStopper, should_stop


def peers(*rows):
    return [Peer(g, p, h) for g, p, h in rows]


# Four peers of about 4 GFLOPs, 25M params; accuracies at epoch 2: 0.5, 0.6, 0.7, 0.8 (median 0.65)
BAND = peers((4.0, 25.0, (0.3, 0.5)), (4.1, 26.0, (0.3, 0.6)), (3.9, 24.0, (0.4, 0.7)), (4.0, 25.0, (0.5, 0.8, 0.9)))


def test_stops_a_poor_dominated_candidate():
    assert should_stop(2, 0.55, 4.0, BAND, mparams=25.0)


def test_keeps_a_candidate_at_or_above_the_median():
    assert not should_stop(2, 0.65, 4.0, BAND, mparams=25.0)
    assert not should_stop(2, 0.66, 4.0, BAND, mparams=25.0, quantile=0.5)


def test_quantile_changes_the_threshold():
    # 25% quantile of (0.5, 0.6, 0.7, 0.8) is 0.575 (linear interpolation)
    assert should_stop(2, 0.57, 4.0, BAND, mparams=25.0, quantile=0.25)
    assert not should_stop(2, 0.58, 4.0, BAND, mparams=25.0, quantile=0.25)


def test_never_stops_a_candidate_cheaper_than_every_better_peer():
    # 0.55 beats only the 0.5 peer; every peer beating it costs more GFLOPs or params than 3.8/23 (+1%)
    assert not should_stop(2, 0.55, 3.8, BAND, mparams=23.0)
    # the same accuracy at the cost of the 0.7 peer (3.9 GFLOPs, 24M) is dominated by it
    assert should_stop(2, 0.55, 3.9, BAND, mparams=24.0)


def test_needs_min_peers_that_reached_the_epoch_in_the_cost_band():
    assert not should_stop(3, 0.1, 4.0, BAND, mparams=25.0)  # only one peer reached epoch 3
    assert not should_stop(2, 0.1, 4.0, BAND[:3], mparams=25.0)
    assert should_stop(2, 0.1, 4.0, BAND[:3], mparams=25.0, min_peers=3)
    far = peers((10.0, 25.0, (0.9, 0.9)),) * 10  # cheaper-or-equal but outside the 1.5x band: ignored
    assert not should_stop(2, 0.1, 4.0, far, mparams=25.0)
    assert should_stop(2, 0.1, 7.0, far, mparams=25.0, band=1.5) is False  # 10 > 7*1.5? no: 10 < 10.5 but costs more
    assert should_stop(2, 0.1, 10.0, far, mparams=25.0)


def test_bad_rule_settings():
    with pytest.raises(ValueError, match="quantile"):
        should_stop(1, 0.5, 4.0, BAND, quantile=1.5)


def test_rung_stopper_only_acts_at_rungs_and_reads_peers_each_time():
    calls = []

    def source():
        calls.append(1)
        return BAND

    stop = RungStopper([2], 4.0, 25.0, source)
    assert not stop(1, 0.0) and calls == []  # not a rung: no peers read
    assert stop(2, 0.55) and stop.stopped_at == 2 and len(calls) == 1
