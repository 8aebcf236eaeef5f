"""End-to-end searches on the tiny space with the tiny recipe: real training, real SQLite studies,
real processes (resume after SIGKILL, several workers), and the command's errors."""
import functools
import os
import re
import signal
import subprocess
import sys
import time

import optuna
import pytest

from se_nas import cli
from se_nas.design.budget import Budget
from se_nas.design.cost import count_cost
from se_nas.search.confirm import CONFIRM_SEED, read_confirmation, recipe_key, stored_runs
from se_nas.search.progress import summarize
from se_nas.design.recipe import load_recipe
from se_nas.record.results import design_front, designs_of
from se_nas.search.stages import SearchError, run_search
from se_nas.design.space import load_space
from se_nas.record.storage import open_study
from se_nas.record.study import Status, records, remaining

S = optuna.trial.TrialState
# Between the plain ResNet-18 (1.8141 GFLOPs) and the dearest tiny candidates (1.8156): a real split
BUDGET = 1.815


@pytest.fixture
def config(tiny_search):
    """``config(**kw)``: conftest's tiny search, 6 trials under a budget that splits the tiny space."""
    return functools.partial(tiny_search, budget=Budget(max_gflops=BUDGET), n_trials=6)


@pytest.mark.slow
def test_search_end_to_end_and_continue(config, tmp_path, capsys):
    study = run_search(config(progress=True))
    out = capsys.readouterr()
    recs = records(study)
    counted = [r for r in recs if r.status is not Status.REPEAT]
    assert len(counted) == 6 and all(r.status != "running" for r in recs)
    for r in recs:
        cost = count_cost(r.arch)
        assert r.gflops == pytest.approx(cost.gflops)
        if r.trained:
            assert cost.gflops <= BUDGET and 0.0 <= r.accuracy <= 1.0 and len(r.history) == r.epochs >= 1
        elif r.status is Status.REPEAT:  # answered from its design's record, never trained
            assert r.epochs == 0 and any(q.arch == r.arch and q.trained for q in recs if q.number < r.number)
        else:
            assert r.status == "over_budget" and cost.gflops > BUDGET
    # one line per trial, then the front and the next commands
    for r in recs:
        assert f"#{r.number} {r.arch.id}" in out.err + out.out
    assert "search front" in out.out and f"se-nas report t --root {tmp_path}" in out.out
    # the front is exactly the non-dominated designs (per-design means), by a direct pairwise check
    ds = designs_of(recs)
    def dominated(a):
        return any(b.mean >= a.mean and b.gflops <= a.gflops and b.mparams <= a.mparams
                   and (b.mean, b.gflops, b.mparams) != (a.mean, a.gflops, a.mparams) for b in ds)
    assert {d.id for d in design_front(ds)} == {d.id for d in ds if not dominated(d)}
    assert study.user_attrs["space"] == load_space("tiny").to_dict()

    # the same command with a larger n_trials continues: the first six are kept unchanged
    before = {t.number: (t.values, t.user_attrs.get("status")) for t in study.get_trials()}
    study = run_search(config(n_trials=8))
    after = {t.number: (t.values, t.user_attrs.get("status")) for t in study.get_trials()}
    assert all(after[n] == v for n, v in before.items())
    assert remaining(study, 8) == 0

    # a different recipe (or space, or budget) under the same study name is refused
    import dataclasses
    from se_nas.design.recipe import load_recipe

    with pytest.raises(SearchError, match="different recipe .*lr.*--study NEW_NAME"):
        run_search(config(recipe=dataclasses.replace(load_recipe("tiny"), lr=0.2), n_trials=9))
    with pytest.raises(SearchError, match="different budget"):
        run_search(config(budget=Budget(max_gflops=2.0), n_trials=9))
    assert "over budget (never trained)" in summarize(study)


@pytest.mark.slow
def test_two_workers_train_side_by_side_and_give_the_same_answer_twice(config, tmp_path):
    """Two worker processes train while this process asks and tells in trial order: the same seed
    and worker count give the same trials, designs and accuracies, whichever worker finished first."""
    runs = []
    for root in ("a", "b"):
        study = run_search(config(study="w", workers=2, n_trials=4, budget=Budget(), root=tmp_path / root))
        recs = [r for r in records(study) if r.status is not Status.REPEAT]
        assert len(recs) == 4 and all(r.status == "complete" or r.status == "stopped_early" for r in recs)
        assert len({t.user_attrs["worker_pid"] for t in study.get_trials() if "worker_pid" in t.user_attrs}) == 2
        assert len({t.user_attrs["pid"] for t in study.get_trials()}) == 1  # one process owns the study
        runs.append([(r.number, r.arch.id, r.accuracy, r.status) for r in records(study)])
    assert runs[0] == runs[1]


def _cmd(tmp_path, n):
    # the `se-nas` command, as `python -m se_nas` runs it (the console script calls the same main)
    return [sys.executable, "-m", "se_nas", "search", "--space", "tiny", "--recipe", "tiny",
            "--budget-gflops", str(BUDGET), "--n-trials", str(n), "--study", "k", "--root", str(tmp_path),
            "--early-stop", "none", "--calibration-seeds", "0", "--confirm-top", "0", "--workers", "1"]


def _wait_for(tmp_path, predicate, proc, limit=120):
    """Poll the study until ``predicate(trials)``. The file is read-only until the search has made at
    least one trial: opening it through Optuna writes its schema, which would race the search's own."""
    import sqlite3

    path = tmp_path / "k" / "study.db"
    storage = f"sqlite:///{path}"
    end = time.time() + limit
    while time.time() < end:
        assert proc.poll() is None, "the search ended before the state we wait for: " + _stderr(tmp_path)
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
                started = db.execute("SELECT COUNT(*) FROM trials").fetchone()[0] > 0
        except sqlite3.Error:  # no file or no schema yet
            started = False
        if started:
            trials = optuna.load_study(study_name="k", storage=storage).get_trials()
            if predicate(trials):
                return trials
        time.sleep(0.05)
    raise AssertionError("timed out: " + _stderr(tmp_path))


def _training(trials) -> bool:
    """Whether a trial trains now: one asked with its design, which fits the budget and has no record
    yet. A design over budget or a repeat is answered at once, and a signal sent then could land
    between two trials, where no trial is running to stop."""
    from se_nas.design.arch import Arch

    known = {t.user_attrs.get("arch") for t in trials if t.state == S.COMPLETE}
    return any(t.state == S.RUNNING and "arch" in t.user_attrs and t.user_attrs["arch"] not in known
               and count_cost(Arch.from_json(t.user_attrs["arch"])).gflops <= BUDGET for t in trials)


def _stderr(tmp_path) -> str:
    p = tmp_path / "search.stderr"
    return p.read_text()[-2000:] if p.exists() else ""


@pytest.mark.slow
def test_sigkill_mid_trial_then_rerun_loses_nothing(tmp_path):
    proc = subprocess.Popen(_cmd(tmp_path, 4), stdout=subprocess.DEVNULL, stderr=open(tmp_path / "search.stderr", "w"))
    try:
        def ready(trials):
            done = [t for t in trials if t.state == S.COMPLETE and t.user_attrs.get("status") == "complete"]
            return done and _training(trials)
        _wait_for(tmp_path, ready, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    storage = f"sqlite:///{tmp_path}/k/study.db"
    killed_state = optuna.load_study(study_name="k", storage=storage).get_trials()
    finished = {t.number: t.values for t in killed_state if t.state == S.COMPLETE}
    killed = [t for t in killed_state if t.state == S.RUNNING]
    assert finished and len(killed) == 1

    rerun = subprocess.run(_cmd(tmp_path, 4), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    trials = optuna.load_study(study_name="k", storage=storage).get_trials()
    by_number = {t.number: t for t in trials}
    assert all(by_number[n].values == v for n, v in finished.items())  # no finished trial lost
    dead = by_number[killed[0].number]
    assert dead.state == S.FAIL and "died" in dead.user_attrs["reason"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == dead.number]
    assert len(retry) == 1 and retry[0].state == S.COMPLETE and retry[0].params == killed[0].params
    counted = [t for t in trials if t.state in (S.COMPLETE, S.FAIL) and t.number != dead.number
               and t.user_attrs.get("status") != "repeat"]
    assert len(counted) == 4 and not [t for t in trials if t.state in (S.RUNNING, S.WAITING)]


@pytest.mark.slow
def test_ctrl_c_marks_the_trial_interrupted_and_resumable(tmp_path):
    proc = subprocess.Popen(_cmd(tmp_path, 50), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path, lambda ts: _training(ts) and any(t.state == S.COMPLETE for t in ts), proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "interrupted" in err
    study = optuna.load_study(study_name="k", storage=f"sqlite:///{tmp_path}/k/study.db")
    trials = study.get_trials()
    stopped = [t for t in trials if t.state == S.FAIL]
    assert len(stopped) == 1 and stopped[0].user_attrs["reason"] == "interrupted"
    waiting = [t for t in trials if t.state == S.WAITING]
    assert len(waiting) == 1 and waiting[0].user_attrs["retry_of"] == stopped[0].number
    assert not [t for t in trials if t.state == S.RUNNING]
    # reports show the retry as queued, not as a trial that is running now
    status = {r.number: r.status for r in records(study)}
    assert status[waiting[0].number] == "queued" and status[stopped[0].number] == "interrupted"
    assert "running" not in status.values()


def run_cli(args, capsys):
    rc = cli.main(args)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["--budget-gflops", "0"], ["--budget-gflops", "positive finite", "0"]),
    (["--budget-mparams", "-3"], ["--budget-mparams", "-3"]),
    (["--budget-gflops", "1", "--space", "tiny"], ["infeasible for every candidate", "'tiny'", "1.814"]),
    (["--budget-gflops", "4", "--space", "missing-space"], ["missing-space", "built-in", "tiny"]),
    (["--budget-gflops", "4", "--recipe", "missing-recipe"], ["missing-recipe", "digits"]),
])
def test_cli_errors(tmp_path, capsys, args, words):
    rc, err = run_cli(["search", *args, "--root", str(tmp_path)], capsys)
    assert rc == 2 and err.startswith("se-nas search: error:")
    for w in words:
        assert w in err
    assert not list(tmp_path.glob("*/study.db"))  # nothing created for bad input


def test_cli_bad_recipe_and_data_path(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: digits\nepochz: 3\n")
    rc, err = run_cli(["search", "--space", "tiny", "--recipe", str(bad), "--root", str(tmp_path)], capsys)
    assert rc == 2 and "epochz" in err and str(bad) in err
    nodata = tmp_path / "cifar.yaml"
    nodata.write_text(f"dataset: cifar10\ndata_dir: {tmp_path / 'no-such-folder'}\nimage_size: 32\n")
    rc, err = run_cli(["search", "--space", "tiny", "--recipe", str(nodata), "--root", str(tmp_path)], capsys)
    assert rc == 2 and "no-such-folder" in err
    assert not list(tmp_path.glob("*/study.db"))


def test_cli_bad_space_file(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text("backbone: resnet18\nchoices: {squeeze: [avg, median]}\n")
    rc, err = run_cli(["search", "--space", str(p), "--root", str(tmp_path)], capsys)
    assert rc == 2 and str(p) in err and "'median'" in err and "avgmax" in err


def test_asha_needs_ray(config, tmp_path):
    with pytest.raises(SearchError, match="asha.*ray"):
        config(early_stop="asha")


@pytest.mark.slow
def test_a_repeated_design_is_one_record_and_is_not_trained_again(one_design_space, config, tmp_path):
    """A space of one design: the sampler can only propose it again. The search trains it under two
    seeds (the second because, alone on the front, its uncertainty decides the front), answers every
    later proposal from the record without training, and stops when nothing new can be proposed."""
    study = run_search(config(study="one", space=one_design_space, budget=Budget(), n_trials=5,
                              max_seeds_per_design=2, early_stop="none"))
    recs = records(study)
    trained = [r for r in recs if r.trained]
    repeats = [r for r in recs if r.status is Status.REPEAT]
    assert len(trained) == 2 and trained[0].seed != trained[1].seed
    assert repeats and all(r.epochs == 0 and r.seconds < 5 for r in repeats)
    (d,) = designs_of(recs)  # one design, one record: the mean of its seeds, never their maximum
    accs = [r.accuracy for r in trained]
    assert d.n == 2 and d.mean == pytest.approx(sum(accs) / 2)
    assert d.std == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    assert d.sem() == pytest.approx(d.std / 2 ** 0.5)
    assert [x.id for x in design_front(designs_of(recs))] == [d.id]
    # the sampler was told the design's mean for every repeat (not a new, independent result)
    for r in repeats:
        assert r.accuracy == pytest.approx(d.mean)
        assert study.trials[r.number].values[0] == pytest.approx(d.mean)
    assert remaining(study, 5) == 3  # repeats don't count towards --n-trials


@pytest.mark.slow
def test_calibration_and_confirmation_stages(config, tmp_path, capsys):
    cfg = config(study="c", n_trials=4, calibration_seeds=2, confirm_top=2, confirm_min_seeds=2,
                 confirm_max_seeds=2, progress=True)
    study = run_search(cfg)
    captured = capsys.readouterr()
    out = captured.out
    # each stage has its bar, and the training in flight shows as a live line (epoch, step)
    for stage in ("calibrate:", "search:", "confirm:"):
        assert stage in captured.err
    assert re.search(r"#\d+ [0-9a-f]{10} epoch [12]/2 step \d+/\d+", captured.err)
    assert re.search(r"plain [0-9a-f]{10} s1000 epoch", captured.err)
    rk = recipe_key(load_recipe("tiny"))
    runs = stored_runs(study, rk)
    space = load_space("tiny")
    seeds = [CONFIRM_SEED, CONFIRM_SEED + 1]
    for a in (space.plain(), space.baseline()):  # the calibration's runs, reused by the confirmation
        assert all((a.id, s) in runs and runs[(a.id, s)].accuracy is not None for s in seeds)
    conf = read_confirmation(study)
    recs = records(study)
    # the chosen design was picked from the search's per-design means, before the confirmation ran
    best = max(designs_of(recs), key=lambda d: (d.mean, -d.gflops, -d.mparams))
    assert conf.chosen.id == best.id and conf.seeds == tuple(seeds) and conf.complete
    assert conf.chosen.accuracies == tuple(runs[(best.id, s)].accuracy for s in seeds)
    assert conf.r16.id == space.baseline().id and conf.plain.id == space.plain().id
    assert conf.sentence and f"finding: {conf.sentence}" in out
    # the confirmation reaches the report, compare and export --best
    from se_nas.products.compare import compare
    from se_nas.products.export import export_study, read_model
    from se_nas.products.report import build_report

    rep = build_report("c", root=tmp_path, out=tmp_path / "reports")
    assert rep.confirmation.chosen.id == conf.chosen.id and rep.finding == conf.sentence
    assert {m.name: m.accuracy for m in rep.markers} == {"r=16 SE baseline": conf.r16.mean,
                                                         "plain backbone": conf.plain.mean}
    runs_before = {k: v for k, v in study.user_attrs.items() if k.startswith("run:")}
    res = compare("c", root=tmp_path, out=tmp_path / "reports", latency_repeats=2, log=lambda *_: None)
    assert res["seeds"] == seeds and res["arms"][0]["arch_id"] == conf.chosen.id  # the confirmation's seeds
    assert res["arms"][0]["accuracy"] == list(conf.chosen.accuracies)
    assert {k: v for k, v in open_study("c", root=tmp_path).user_attrs.items() if k.startswith("run:")} == runs_before
    mf = read_model(export_study("c", tmp_path / "best.senas", root=tmp_path))
    assert mf.arch == conf.chosen.arch and mf.meta["design_seeds"] == 2 and mf.meta["seed"] == CONFIRM_SEED
    assert mf.meta["design_accuracy"] == pytest.approx(conf.chosen.mean)
    assert mf.meta["accuracy"] == conf.chosen.accuracies[0]  # retrained under seed 1000: that run exactly
    # a rerun trains nothing again: the stored runs are reused as they are
    before = dict(study.user_attrs)
    study = run_search(config(study="c", n_trials=4, calibration_seeds=2, confirm_top=2,
                              confirm_min_seeds=2, confirm_max_seeds=2))
    assert {k: v for k, v in study.user_attrs.items() if k.startswith("run:")} == \
        {k: v for k, v in before.items() if k.startswith("run:")}
    assert study.user_attrs["confirmation"] == before["confirmation"]
    # continuing the search with more trials makes the choice again, after them
    study = run_search(config(study="c", n_trials=5, calibration_seeds=2, confirm_top=2,
                              confirm_min_seeds=2, confirm_max_seeds=2))
    assert study.user_attrs["confirmation"]["after_trials"] == 5


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (exited, waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


@pytest.mark.slow
def test_sigterm_stops_every_worker_like_ctrl_c(config, tmp_path):
    """`kill PID` (also timeout's and systemd's signal) of a search with two worker processes: the
    parent stops its workers, whose trials in flight are failed as interrupted and enqueued, and
    exits 143 (128 + SIGTERM, the shell's convention); a rerun finishes the study."""
    # more trials than workers: a worker that starts late still finds one to run beside the other
    cmd = _cmd(tmp_path, 8) + ["--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pids = set()
    try:
        running = _wait_for(tmp_path, lambda ts: len([t for t in ts if t.state == S.RUNNING
                                                      and "worker_pid" in t.user_attrs]) == 2, proc)
        running = [t for t in running if t.state == S.RUNNING]  # two training, one asked ahead (2W - 1)
        pids = {t.user_attrs["worker_pid"] for t in running if "worker_pid" in t.user_attrs}
        assert len(pids) == 2 and proc.pid not in pids
        start = time.time()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        took = time.time() - start
        deadline = time.time() + 5  # the workers exited before the parent did; allow for the reaping
        while not all(_gone(p) for p in pids) and time.time() < deadline:
            time.sleep(0.1)
        orphans = [p for p in pids if not _gone(p)]
    finally:
        for p in [proc.pid] + [p for p in pids if not _gone(p)]:  # never leave a process training
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.returncode == 143 and "interrupted" in err, err
    assert took < 30 and not orphans, (took, orphans)
    storage = f"sqlite:///{tmp_path}/k/study.db"
    trials = optuna.load_study(study_name="k", storage=storage).get_trials()
    stopped = [t for t in trials if t.state == S.FAIL]
    # both were training when seen; under load one may finish in the moment before the signal lands
    seen = {t.number for t in running}
    assert stopped and {t.number for t in stopped} <= seen
    assert all(trials[n].state in (S.FAIL, S.COMPLETE) for n in seen)
    assert all(t.user_attrs["reason"] == "interrupted" for t in stopped)
    waiting = {t.user_attrs["retry_of"] for t in trials if t.state == S.WAITING}
    assert waiting == {t.number for t in stopped} and not [t for t in trials if t.state == S.RUNNING]
    assert {t.user_attrs["worker_pid"] for t in stopped if "worker_pid" in t.user_attrs} <= pids

    study = run_search(config(study="k", n_trials=8, early_stop="none"))  # the rerun, in this process
    assert remaining(study, 8) == 0 and not study.get_trials(states=(S.RUNNING, S.WAITING))
    retried = [t for t in study.get_trials() if t.user_attrs.get("retry_of") in waiting]
    # one retry per stopped trial (two, unless one finished in the moment before the signal, as above)
    assert len(retried) == len(waiting) and all(t.state == S.COMPLETE for t in retried)


def test_runs_another_process_stored_meanwhile_are_not_trained_again(tmp_path):
    """Two processes of one shared study (machines on one database) calibrate at once: a run the other
    stored while this one trained is read back, not trained a second time."""
    from se_nas.design.arch import Arch, StageSE
    from se_nas.search.confirm import RUN_PREFIX, ensure_runs, train_run
    from se_nas.nn.data import load_data

    study = open_study("shared", root=tmp_path, create=True)
    recipe = load_recipe("tiny")
    rk = recipe_key(recipe)
    arms = {"plain": Arch.uniform("resnet18", None), "r16": Arch.uniform("resnet18", StageSE())}
    lines = []

    def other_process_stores_the_rest(line):
        lines.append(line)
        if len(lines) == 1:  # this process finished its first run; the other finished the second one
            done = {a for a, _ in stored_runs(study, rk)}
            (role, arch), = [(r, a) for r, a in arms.items() if a.id not in done]
            run = train_run(arch, recipe, 1000, load_data(recipe))
            study.set_user_attr(f"{RUN_PREFIX}{rk}:{arch.id}:1000", run.to_attr())

    runs = ensure_runs(study, arms, [1000], recipe, log=other_process_stores_the_rest)
    assert set(runs) == {(a.id, 1000) for a in arms.values()}
    assert "stored by another process" in lines[1] and "stored by another process" not in lines[0]


@pytest.mark.parametrize("strategy", ["multi-trial", "oneshot"])
def test_python_and_the_command_line_search_with_the_same_defaults(tmp_path, monkeypatch, strategy):
    """A Strategy owns its sampler, count and study name: SearchConfig(strategy=...) from Python gets
    what `se-nas search --strategy ...` runs (the one-shot once ranked 30 designs with TPE from Python)."""
    import dataclasses

    from se_nas import cli
    from se_nas.search import stages
    from se_nas.search.strategies import STRATEGIES

    seen = []
    monkeypatch.setattr(stages, "run_search", seen.append)
    assert cli.main(["search", "--space", "tiny", "--recipe", "tiny", "--budget-gflops", "2",
                     "--strategy", strategy, "--root", str(tmp_path)]) == 0
    from se_nas.design.budget import Budget

    python = stages.SearchConfig(space="tiny", recipe="tiny", budget=Budget(2.0), strategy=strategy, root=str(tmp_path))
    [cli_config] = seen
    assert dataclasses.asdict(cli_config) == dataclasses.asdict(python)
    s = STRATEGIES[strategy]
    assert (python.n_trials, python.sampler) == (s.default_count, s.default_sampler)
    assert python.study == "tiny-2gflops" + s.study_suffix
    assert (python.n_trials, python.sampler) == ((2000, "nsga2") if strategy == "oneshot" else (30, "tpe"))


def test_a_study_says_which_strategy_searched_it(tmp_path):
    from se_nas.record.storage import open_study
    from se_nas.search.strategies import strategy_of

    study = open_study("s", root=tmp_path, create=True)
    assert strategy_of(study).name == "multi-trial"  # a study from before strategies were stored
    study.set_user_attr("strategy", "oneshot")
    assert strategy_of(study).name == "oneshot" and not strategy_of(study).trains_each_design
    study.set_user_attr("strategy", "evolution")
    with pytest.raises(SearchError, match="searched with strategy 'evolution', which this se-nas does not know"):
        strategy_of(study)


@pytest.mark.slow
def test_workers_stop_when_their_search_is_sigkilled(tmp_path):
    """SIGKILL (or the OOM killer) of a search with two worker processes: no handler runs in the
    parent, yet both workers stop within seconds (PR_SET_PDEATHSIG, and a watch on the parent pid),
    and the rerun fails the trials the dead search left running, enqueues them and finishes."""
    from se_nas.record.claims import recover_dead_trials

    cmd = _cmd(tmp_path, 8) + ["--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids = set()
    try:
        running = _wait_for(tmp_path, lambda ts: len([t for t in ts if t.state == S.RUNNING
                                                      and "worker_pid" in t.user_attrs]) == 2, proc)
        pids = {t.user_attrs["worker_pid"] for t in running if t.state == S.RUNNING and "worker_pid" in t.user_attrs}
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # under 2 s on an idle 2-core machine; without the watch they would train on for minutes
        deadline = time.time() + 20
        while not all(_gone(p) for p in pids) and time.time() < deadline:
            time.sleep(0.1)
        orphans = [p for p in pids if not _gone(p)]
    finally:
        for p in [p for p in pids if not _gone(p)]:  # never leave a process training
            os.kill(p, signal.SIGKILL)
    assert len(pids) == 2 and not orphans, orphans
    study = open_study("k", root=tmp_path)
    left = [t.number for t in study.get_trials() if t.state == S.RUNNING]
    assert left and sorted(recover_dead_trials(study)) == left  # the search's pid is gone: evidence enough
    assert {t.user_attrs.get("retry_of") for t in study.get_trials() if t.state == S.WAITING} == set(left)


@pytest.mark.slow
def test_workers_beyond_the_cores_are_clamped_in_one_line(tmp_path, capsys, config):
    from se_nas.search.optuna_backend import worker_count
    from se_nas.search.trial import cores

    assert worker_count(100000, 2) == (2, "--workers 100000: using 2 worker processes (2 cores this process may use)")
    assert worker_count(8, 16) == (8, None) and worker_count(2, 2) == (2, None)
    study = run_search(config(study="c", workers=100000, n_trials=1, early_stop="none",
                              budget=Budget(), progress=True))
    out = capsys.readouterr().out
    n = cores()
    assert f"--workers 100000: using {n} worker process{'es' if n != 1 else ''} ({n} core" in out
    assert len({t.user_attrs["pid"] for t in study.get_trials()}) == 1 == len(study.get_trials())


@pytest.mark.slow
def test_a_dead_worker_is_replaced_while_trials_remain(tmp_path):
    """One of two worker processes is SIGKILLed mid-trial (as the OOM killer does): its trial is
    retried, a new worker takes its place, and the search ends normally with every trial asked for."""
    cmd = _cmd(tmp_path, 6) + ["--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        running = _wait_for(tmp_path, lambda ts: any(t.state == S.RUNNING and "worker_pid" in t.user_attrs
                                                     for t in ts), proc)
        victim = next(t for t in running if t.state == S.RUNNING and "worker_pid" in t.user_attrs)
        os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert f"worker process {victim.user_attrs['worker_pid']} died (exit code -9)" in out and "takes its place" in out
    study = optuna.load_study(study_name="k", storage=f"sqlite:///{tmp_path}/k/study.db")
    trials = study.get_trials()
    assert trials[victim.number].state == S.FAIL and "died" in trials[victim.number].user_attrs["reason"]
    assert remaining(study, 6) == 0 and not study.get_trials(states=(S.RUNNING, S.WAITING))


@pytest.mark.slow
def test_a_trial_at_chance_failed_to_learn_and_is_never_a_result(tmp_path, capsys, config):
    """A learning rate that trains to chance (lr 1.5: 0.100 on 10 classes) is flagged failed-to-learn
    with its reason: the sampler is told its accuracy as before (the trial stays COMPLETE with the same
    values), but it is not a result: no front, no confirmation, not the chosen design."""
    import dataclasses

    from se_nas.search.progress import summarize
    from se_nas.design.recipe import load_recipe
    from se_nas.record.results import designs_of
    from se_nas.search.trial import at_chance

    assert at_chance(0.100, 10, 360) and at_chance(0.140, 10, 360) and not at_chance(0.160, 10, 360)
    assert at_chance(0.30, 10, 360) is None  # the lowest trial of the tiny search learned something
    recipe = dataclasses.replace(load_recipe("tiny"), lr=1.5)
    study = run_search(config(study="lr", recipe=recipe, n_trials=2, early_stop="none",
                              budget=Budget(), progress=True))
    out = capsys.readouterr().out
    trials = study.get_trials()
    flagged = [t for t in trials if t.user_attrs.get("status") == Status.FAILED_TO_LEARN.value]
    assert flagged, [(t.user_attrs.get("status"), t.user_attrs.get("accuracy")) for t in trials]
    t = flagged[0]
    assert t.state == S.COMPLETE and t.values[0] == t.user_attrs["accuracy"]  # what the sampler sees: as before
    assert t.user_attrs["reason"].startswith("trained to chance: accuracy 0.")
    recs = records(study)
    assert t.number not in {n for d in designs_of(recs) for n in d.trials}
    assert "failed to learn (chance accuracy)" in summarize(study) and "failed to learn: trained to chance" in out
