"""What a proposal of a known design costs (se_nas.search.trial.repeat_outcome), on hand-made records."""
import pytest

from se_nas.design.arch import PRESETS
from se_nas.record.results import Noise
from se_nas.record.study import Status, TrialRecord
from se_nas.search.trial import repeat_outcome

A, B = PRESETS["resnet50"], PRESETS["se_resnet50"]
NOISE = Noise(0.01, 10, 3)


def rec(n, arch, status, acc=None, seed=None, cost=(3.86, 25.6)):
    return TrialRecord(n, status, arch, acc, *cost, 5, (acc,) if acc is not None else (), seed=n if seed is None else seed)


def test_a_new_design_is_trained():
    assert repeat_outcome(A, [rec(0, B, Status.COMPLETE, 0.9)], NOISE, seed=7) is None


def test_a_design_alone_on_the_front_gets_another_seed_until_max_seeds():
    recs = [rec(0, A, Status.COMPLETE, 0.90)]
    assert repeat_outcome(A, recs, NOISE, seed=7, max_seeds=2) is None  # its uncertainty decides the front
    recs.append(rec(1, A, Status.COMPLETE, 0.92))
    out = repeat_outcome(A, recs, NOISE, seed=7, max_seeds=2)
    assert out.status is Status.REPEAT and out.accuracy == pytest.approx(0.91) and out.epochs == 0
    assert "trials 0, 1" in out.reason and "mean over 2 seeds" in out.reason and out.seed == 7


def test_a_design_beaten_beyond_its_noise_is_answered_from_its_record():
    recs = [rec(0, A, Status.COMPLETE, 0.50), rec(1, B, Status.COMPLETE, 0.95, cost=(3.80, 25.0))]
    out = repeat_outcome(A, recs, NOISE, seed=9)
    assert out.status is Status.REPEAT and out.accuracy == 0.50
    # within the noise of its rival, it is worth another seed
    close = [rec(0, A, Status.COMPLETE, 0.94), rec(1, B, Status.COMPLETE, 0.95, cost=(3.80, 25.0))]
    assert repeat_outcome(A, close, NOISE, seed=9) is None


def test_seeds_in_flight_count_and_the_asking_trial_does_not():
    recs = [rec(0, A, Status.COMPLETE, 0.9), rec(1, A, Status.RUNNING), rec(2, A, Status.RUNNING)]
    assert repeat_outcome(A, recs, NOISE, seed=5, max_seeds=3, exclude=2) is None  # 1 done + 1 elsewhere < 3
    assert repeat_outcome(A, recs, NOISE, seed=5, max_seeds=3).status is Status.REPEAT  # 1 + 2 in flight


def test_a_design_stopped_early_keeps_its_rungs_verdict():
    out = repeat_outcome(A, [rec(4, A, Status.STOPPED_EARLY, 0.3)], NOISE, seed=1)
    assert out.status is Status.REPEAT and out.accuracy == 0.3 and "trial 4 (stopped early)" in out.reason


def test_failed_or_over_budget_designs_are_run_again():
    for status in (Status.FAILED, Status.OVER_BUDGET):
        assert repeat_outcome(A, [rec(0, A, status)], NOISE, seed=1) is None
