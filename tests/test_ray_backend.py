"""The Ray Tune backend, for real: a local Ray runtime runs concurrent trials into the same study
format as the Optuna backend, and a rerun continues the study."""
import pytest

ray = pytest.importorskip("ray")

from se_nas.budget import Budget  # noqa: E402
from se_nas.search import SearchConfig, run_search  # noqa: E402
from se_nas.study import records  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_search_runs_concurrent_trials_into_the_study(local_ray, tmp_path):
    cfg = SearchConfig(study="r", space="tiny", recipe="tiny", budget=Budget(max_gflops=1.9), n_trials=3,
                       backend="ray", cpus_per_trial=1, early_stop="none", root=tmp_path, progress=False)
    study = run_search(cfg)
    recs = records(study)
    assert len(recs) == 3
    assert {r.backend for r in recs} == {"ray"}
    assert all(r.status in ("complete", "over_budget") for r in recs), [(r.status, r.reason) for r in recs]
    trained = [r for r in recs if r.status == "complete"]
    assert trained and all(0.0 <= r.accuracy <= 1.0 and len(r.history) == r.epochs for r in trained)
    assert all(r.gflops <= 1.9 for r in trained)
    # Two CPUs, one per trial: some trials' (ask, tell) windows overlap on the driver.
    ts = sorted((t.datetime_start, t.datetime_complete) for t in study.trials)
    assert any(b_start < a_end for (_, a_end), (b_start, _) in zip(ts, ts[1:]))

    # Rerunning with a higher target continues the same study: the 3 trials are kept, 1 is added.
    study = run_search(SearchConfig(**{**cfg.__dict__, "n_trials": 4}))
    assert len(records(study)) == 4 and [r.number for r in records(study)][:3] == [r.number for r in recs]
