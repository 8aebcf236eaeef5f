"""The one-shot search on Ray (``--strategy oneshot --backend ray``), for real: a local Ray runtime's
actors evaluate supernet paths to the accuracies this process computes, no design over the budget
reaches one, a lost actor's design is evaluated by another, calibration runs are Ray tasks, and the
study is the one a user reads in ``se-nas report`` and continues on a rerun."""
import pytest
import torch

ray = pytest.importorskip("ray")

from se_nas.search import confirm, oneshot, pathpools  # noqa: E402
from se_nas.nn.pathscore import PathEvaluator  # noqa: E402
from se_nas.design.arch import Arch, StageSE  # noqa: E402
from se_nas.design.budget import Budget  # noqa: E402
from se_nas.design.cost import count_cost  # noqa: E402
from se_nas.design.recipe import load_recipe  # noqa: E402
from se_nas.search.stages import SearchConfig, run_search  # noqa: E402
from se_nas.design.space import load_space  # noqa: E402
from se_nas.record.study import SearchError, Status, counted, records  # noqa: E402

TINY = load_space("tiny")


def gflops(arch: Arch) -> float:
    return count_cost(arch, TINY.deploy.image_size, TINY.deploy.num_classes).gflops


# between the plain backbone and SE everywhere: the sampler proposes designs on both sides
BUDGET = Budget(max_gflops=(gflops(TINY.plain()) + gflops(Arch.uniform("resnet18", StageSE(4)))) / 2)


@pytest.fixture(scope="module")
def local_ray():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the actors' thread count (cpus_per_trial 1): the same arithmetic
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny_data():
    from se_nas.nn.data import load_data

    return load_data(load_recipe("tiny"))


def in_process(net, data):
    """The search process's own evaluator of ``net``'s paths (the reference for the actors)."""
    return PathEvaluator(net, oneshot.supernet_recipe(load_recipe("tiny"), 1, 0), data)


@pytest.mark.slow
def test_ray_ranks_within_budget_to_the_in_process_accuracies_and_a_rerun_continues(local_ray, tmp_path,
                                                                                    tiny_data, monkeypatch):
    from se_nas import cli
    from se_nas.products.report import build_report
    from se_nas.record.storage import open_study

    pools = []

    class Spy(pathpools.RayPaths):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self)

    monkeypatch.setattr(pathpools, "RayPaths", Spy)

    def not_here(*args, **kwargs):
        raise AssertionError("a calibration run trained in the search process, not as a Ray task")

    monkeypatch.setattr(confirm, "train_run", not_here)
    config = SearchConfig(study="os", space=TINY, recipe="tiny", budget=BUDGET, n_trials=8, sampler="nsga2",
                          backend="ray", root=tmp_path, progress=False, calibration_seeds=2, confirm_top=0,
                          strategy="oneshot", supernet_epochs=1)
    run_search(config)
    monkeypatch.undo()
    [pool] = pools
    assert pool.started == 2 and not pool.actors  # as many actors as the 2 CPUs hold, closed at the end
    study = open_study("os", root=tmp_path)
    # the calibration's runs were Ray tasks, stored by the driver: the runs this process trains
    recipe = load_recipe("tiny")
    runs = confirm.stored_runs(study, confirm.recipe_key(recipe))
    seeds = confirm.confirm_seeds(2)
    assert set(runs) == {(a.id, s) for a in (TINY.plain(), TINY.baseline()) for s in seeds}
    assert runs[(TINY.baseline().id, seeds[1])].history == confirm.train_run(TINY.baseline(), recipe, seeds[1],
                                                                             tiny_data).history
    recs = records(study)
    ranked = [r for r in recs if r.status is Status.COMPLETE]
    over = [r for r in recs if r.status is Status.OVER_BUDGET]
    assert over and ranked and len(recs) == counted(study)[0] == 8  # no repeat or running trial stored
    evaluated = [a.id for a in pool.evaluated]
    assert sorted(evaluated) == sorted(r.arch.id for r in ranked)  # each evaluated once, by an actor
    assert all(gflops(a) <= BUDGET.max_gflops for a in pool.evaluated)
    assert {r.arch.id for r in over}.isdisjoint(evaluated)

    # every accuracy is what this process computes for the same path of the same supernet
    net, _, _ = oneshot.train_supernet(TINY, load_recipe("tiny"), tiny_data, budget=BUDGET, epochs=1,
                                       checkpoint=oneshot.checkpoint_path(config, 1, "sandwich"))
    evaluate = in_process(net, tiny_data)
    assert [r.accuracy for r in ranked] == [evaluate(r.arch).score for r in ranked]
    # what `se-nas report` shows: the study's ranked designs, with those accuracies
    rep = build_report("os", root=tmp_path, out=tmp_path / "reports")
    assert {(d.id, d.mean) for d in rep.designs} == {(r.arch.id, r.accuracy) for r in ranked}

    # the command line continues the study on Ray: the supernet read back, 4 designs more
    first = [(r.number, r.arch.id, r.accuracy) for r in recs]
    assert cli.main(["search", "--strategy", "oneshot", "--backend", "ray", "--study", "os", "--space", "tiny",
                     "--recipe", "tiny", "--budget-gflops", repr(BUDGET.max_gflops), "--sampler", "nsga2",
                     "--calibration-seeds", "0", "--confirm-top", "0", "--supernet-epochs", "1",
                     "--n-trials", "12", "--root", str(tmp_path)]) == 0
    recs = records(study)
    assert [(r.number, r.arch.id, r.accuracy) for r in recs][:8] == first and counted(study)[0] == len(recs) == 12
    assert all(r.accuracy == evaluate(r.arch).score for r in recs[8:] if r.status is Status.COMPLETE)


@pytest.mark.slow
def test_a_lost_actors_design_is_evaluated_by_another(local_ray, tiny_data):
    net, _, _ = oneshot.train_supernet(TINY, load_recipe("tiny"), tiny_data, budget=BUDGET, epochs=1)
    recipe = oneshot.supernet_recipe(load_recipe("tiny"), 1, 0)
    designs = [TINY.plain(), TINY.baseline()]
    pool = pathpools.RayPaths(net, recipe, actors=2)
    try:
        for a in designs:
            pool.submit(a)
        ray.kill(pool.actors[0], no_restart=True)  # as its node dying: the design it holds is lost with it
        got = {a.id: acc for a, acc, _ in (pool.next(), pool.next())}
        assert pool.capacity == 1 and len(pool.lost) == 1
        evaluate = in_process(net, tiny_data)
        assert got == {a.id: evaluate(a) for a in designs}
        pool.submit(designs[0])
        ray.kill(pool.actors[0], no_restart=True)
        with pytest.raises(SearchError, match=r"^every Ray actor evaluating supernet paths was lost \(2, the last: "
                                              r".*\); rerun the same command to continue$"):
            pool.next()
    finally:
        pool.close()
