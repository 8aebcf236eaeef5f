"""The Ray backend on a real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a
head and worker nodes, each its own raylet with its own resources): trials spread over the nodes and
record where they ran; losing a node mid-trial fails that trial with the node's name and retries it on
the others; a killed driver is continued by rerunning the command. See docs/cluster.md."""
import dataclasses
import functools
import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest
import yaml

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from se_nas.design.budget import Budget  # noqa: E402
from se_nas.design.recipe import load_recipe  # noqa: E402
from se_nas.search.stages import run_search  # noqa: E402
from se_nas.record.storage import open_study  # noqa: E402
from se_nas.record.study import Status, counted, records, remaining  # noqa: E402

S = optuna.trial.TrialState
pytestmark = [pytest.mark.cluster, pytest.mark.slow]  # each test starts or uses a multi-node Ray cluster


@pytest.fixture(scope="module")
def cluster():
    """A head with no CPUs (the driver's node: no trial runs there) and two one-CPU worker nodes,
    each with a custom resource naming it."""
    ray.shutdown()  # a local Ray left by another test module
    try:
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        for name in ("node_a", "node_b"):
            c.add_node(num_cpus=1, resources={name: 1})
        c.wait_for_nodes()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"Ray cannot start a multi-node cluster here: {e}")
    yield c
    ray.shutdown()
    c.shutdown()


def labels() -> dict[str, str]:
    """Node id -> the custom resource naming the node (only worker nodes have one)."""
    return {n["NodeID"]: name for n in ray.nodes() if n["Alive"]
            for name in n["Resources"] if name.startswith("node_")}


@pytest.fixture
def config(cluster, tiny_search):
    """``config(**kw)``: conftest's tiny search on the cluster, 4 trials of one CPU each."""
    return functools.partial(tiny_search, study="c", budget=Budget(max_gflops=1.9), n_trials=4, backend="ray", workers="auto",
                             ray_address=cluster.address, cpus_per_trial=1, early_stop="none")


def test_trials_spread_over_the_nodes_and_record_where_they_ran(config, cluster, tmp_path):
    study = run_search(config())
    recs, names = records(study), labels()
    assert len(recs) == 4 and all(r.status is Status.COMPLETE and r.backend == "ray" for r in recs)
    nodes = [t.user_attrs["node"] for t in study.trials]
    assert all(n["id"] in names for n in nodes)  # on worker nodes, never the CPU-less head
    assert len({names[n["id"]] for n in nodes}) == 2, nodes  # on both nodes
    # The data is loaded once per worker process: a process that ran several trials loaded it once.
    pids = [(n["id"], n["pid"]) for n in nodes]
    assert all(n["data_loads"] == 1 for n in nodes) and len(set(pids)) < len(pids), nodes


def test_losing_a_node_mid_trial_fails_and_retries_that_trial_on_the_others(config, cluster, tmp_path):
    victim = cluster.add_node(num_cpus=1, resources={"node_victim": 1})
    cluster.wait_for_nodes()
    cfg = config(study="lost", recipe=dataclasses.replace(load_recipe("tiny"), epochs=6))
    lost: dict = {}

    def remove_when_busy():  # a trial on the victim node has reported an epoch: remove the node
        study = open_study("lost", root=tmp_path, create=True)
        while not lost:
            running = [t for t in study.get_trials(states=(S.RUNNING,))
                       if t.user_attrs.get("node", {}).get("id") == victim.node_id]
            if running:
                cluster.remove_node(victim)
                lost.update(number=running[0].number, params=running[0].params, at=time.time())
            time.sleep(0.05)

    remover = threading.Thread(target=remove_when_busy, daemon=True)
    remover.start()
    study = run_search(cfg)
    assert lost, "no trial ran on the victim node"
    trials = {t.number: t for t in study.trials}
    dead = trials[lost["number"]]
    assert dead.state == S.FAIL and victim.node_id[:12] in dead.user_attrs["reason"], dead.user_attrs
    (retry,) = [t for t in trials.values() if t.user_attrs.get("retry_of") == dead.number]
    assert retry.state == S.COMPLETE and retry.params == lost["params"]
    assert retry.user_attrs["node"]["id"] != victim.node_id
    # Nothing finished is lost and the count is right: 4 counted trials, the failed one retried.
    assert counted(study) == (4, 0) and remaining(study, 4) == 0
    assert sum(1 for t in trials.values() if t.state == S.COMPLETE) == 4


def _cmd(cluster, tmp_path, recipe):
    return [sys.executable, "-m", "se_nas", "search", "--study", "k", "--space", "tiny", "--recipe", str(recipe),
            "--budget-gflops", "1.9", "--n-trials", "3", "--backend", "ray", "--ray-address", cluster.address,
            "--early-stop", "none", "--calibration-seeds", "0", "--confirm-top", "0", "--root", str(tmp_path)]


def test_a_killed_driver_is_continued_by_rerunning_the_command(cluster, tmp_path):
    recipe = tmp_path / "slow.yaml"
    recipe.write_text(yaml.safe_dump({**load_recipe("tiny").to_dict(), "epochs": 6}))  # a trial long enough to kill
    cmd = _cmd(cluster, tmp_path, recipe)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "err", "w"))
    storage = f"sqlite:///{tmp_path}/k/study.db"
    try:
        end = time.time() + 90
        while time.time() < end and proc.poll() is None:
            try:
                trials = optuna.load_study(study_name="k", storage=storage).get_trials()
            except (KeyError, Exception):  # noqa: BLE001 not created yet
                trials = []
            if any(t.state == S.RUNNING and "node" in t.user_attrs for t in trials):
                break
            time.sleep(0.1)
        assert proc.poll() is None, (tmp_path / "err").read_text()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    before = optuna.load_study(study_name="k", storage=storage).get_trials()
    killed = [t.number for t in before if t.state == S.RUNNING]
    finished = {t.number: t.values for t in before if t.state == S.COMPLETE}
    assert killed

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    study = optuna.load_study(study_name="k", storage=storage)
    trials = {t.number: t for t in study.get_trials()}
    for n in killed:
        assert trials[n].state == S.FAIL and "died" in trials[n].user_attrs["reason"]
        (retry,) = [t for t in trials.values() if t.user_attrs.get("retry_of") == n]
        assert retry.state == S.COMPLETE and retry.params == trials[n].params
    assert all(trials[n].values == v for n, v in finished.items())  # nothing finished is lost
    assert counted(study) == (3, 0) and remaining(study, 3) == 0


def test_a_trial_lost_again_and_again_is_retried_at_most_three_times():
    """A design lost again and again is retried under the one rule of both backends: at most
    MAX_RETRIES (3) deaths per design (se_nas.record.retries)."""
    from se_nas.record.retries import LOST, MAX_RETRIES, why_not_retried

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.enqueue_trial({"x": 1})
    retried = []
    for _ in range(5):
        trial = study.ask()
        trial.suggest_int("x", 0, 2)
        retried.append(not why_not_retried(trial, study.get_trials(deepcopy=False)))
        trial.set_user_attr(LOST, True)
        study.tell(trial, state=S.FAIL)
        if retried[-1]:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    # the fourth death of x=1 is not retried; the sampler's next proposal may be any x
    assert MAX_RETRIES == 3 and retried[:4] == [True, True, True, False]


