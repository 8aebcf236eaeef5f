"""The Ray Tune backend, for real: a local Ray runtime runs concurrent trials into the same study
format as the Optuna backend, answers repeated designs from the record, calibrates and confirms by Ray
tasks stored by the driver, prints nothing but se-nas's own lines, and a rerun continues the study."""
import functools
import os
import re

import pytest

ray = pytest.importorskip("ray")

from se_nas.design.budget import Budget  # noqa: E402
from se_nas.search.confirm import CONFIRM_SEED, read_confirmation, recipe_key, stored_runs  # noqa: E402
from se_nas.search.optuna_backend import REPEAT_STREAK  # noqa: E402
from se_nas.search.progress import summarize, trial_line  # noqa: E402
from se_nas.design.recipe import load_recipe  # noqa: E402
from se_nas.record.results import design_front, designs_of  # noqa: E402
from se_nas.search.stages import run_search  # noqa: E402
from se_nas.design.space import load_space  # noqa: E402
from se_nas.record.study import Status, counted, records, remaining  # noqa: E402


@pytest.fixture
def config(tiny_search):
    """``config(**kw)``: conftest's tiny search on a local Ray, 3 trials of one CPU each."""
    return functools.partial(tiny_search, study="r", budget=Budget(max_gflops=1.9), n_trials=3, backend="ray", workers="auto",
                             cpus_per_trial=1, early_stop="none")


# tqdm's bar on stderr, as it redraws itself: "100%|██████████| 3/3 [00:19<00:00,  6.41s/trial]"
# tqdm's bar: an optional stage name, the bar, and the live line of the training in flight in [...]
BAR = re.compile(r"(?:(?:calibrate|search|confirm): *)?\d+%\|[^|]*\| *\d+/\d+ \[.*\]")
STAGE_LINE = re.compile(r"\[(calibrate|confirm) \d+/\d+\] .+")


@pytest.mark.slow
def test_ray_search_calibrates_confirms_and_prints_only_its_own_lines(config, tmp_path, capfd):
    """Calibration and confirmation run as Ray tasks, stored by the driver into the same study; the
    terminal shows only se-nas's header, trial and stage lines, bar and summary: no Ray notice, no experiment box."""
    ray.shutdown()  # the search starts Ray itself, as `se-nas search --backend ray` does; the next tests reuse it
    study = run_search(config(study="c", progress=True, calibration_seeds=2, confirm_top=2,
                              confirm_min_seeds=2, confirm_max_seeds=2))
    out, err = capfd.readouterr()

    recs = records(study)
    assert len(recs) >= 3 and {r.backend for r in recs} == {"ray"}
    runs = stored_runs(study, recipe_key(load_recipe("tiny")))
    space, seeds = load_space("tiny"), [CONFIRM_SEED, CONFIRM_SEED + 1]
    for a in (space.plain(), space.baseline()):  # the calibration's runs, reused by the confirmation
        assert all(runs[(a.id, s)].accuracy is not None for s in seeds)
    plan = study.user_attrs["confirmation"]
    assert plan["seeds"] == seeds
    conf = read_confirmation(study)
    best = max(designs_of(recs), key=lambda d: (d.mean, -d.gflops, -d.mparams))
    assert conf.chosen.id == best.id and conf.complete and conf.sentence
    assert conf.chosen.accuracies == tuple(runs[(best.id, s)].accuracy for s in seeds)
    assert f"finding: {conf.sentence}" in out

    ours = {trial_line(t) for t in study.trials} | set(summarize(study, tmp_path).splitlines()) | {""}
    stray = [line for line in out.splitlines() if line not in ours and not STAGE_LINE.fullmatch(line)
             and not line.startswith("search 'c': space tiny ") and not line.startswith("--workers auto: ")
             and not line.startswith("warning: this machine is already busy (load average ")]  # ours too
    stray += [s for s in re.split(r"[\r\n]", err) if s.strip() and not BAR.fullmatch(s.strip())]
    assert not stray, stray


@pytest.fixture(scope="module")
def local_ray():
    if not ray.is_initialized():
        # a Ray of its own, not a cluster another test (test_cluster.py) runs on this machine meanwhile
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_search_runs_concurrent_trials_into_the_study(config, local_ray, tmp_path):
    study = run_search(config())
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

    # Rerunning with a higher target continues the same study: the 3 trials are kept, 1 is added (a
    # repeat the sampler proposes on the way is answered from the record and does not count)
    study = run_search(config(n_trials=4))
    again = records(study)
    assert counted(study)[0] == 4 and [r.number for r in again][:3] == [r.number for r in recs]


@pytest.mark.slow
def test_a_repeated_design_is_answered_on_the_driver_and_the_search_ends(one_design_space, config, local_ray, tmp_path):
    """A space of one design on two CPUs: Ray trains it under two seeds at once; every later proposal
    is answered from the record when asked (never trained), with the mean of the seeds told before it,
    and the search ends once a streak of repeats finds nothing new."""
    study = run_search(config(study="one", space=one_design_space, budget=Budget(), n_trials=5,
                              max_seeds_per_design=2))
    recs = records(study)
    trained = [r for r in recs if r.trained]
    repeats = [r for r in recs if r.status is Status.REPEAT]
    assert len(trained) == 2 and trained[0].seed != trained[1].seed
    assert len(repeats) >= REPEAT_STREAK and len(recs) == 2 + len(repeats)
    assert all(r.backend == "ray" and r.epochs == 0 and not r.history for r in repeats)
    (d,) = designs_of(recs)
    assert d.n == 2 and d.mean == pytest.approx(sum(r.accuracy for r in trained) / 2)
    assert [x.id for x in design_front(designs_of(recs))] == [d.id]
    for r in repeats:  # told the design's mean over the seeds told before it was asked, not a new result
        mean = d.mean if "over 2 seeds" in r.reason else trained[0].accuracy
        assert r.accuracy == pytest.approx(mean) and study.trials[r.number].values[0] == pytest.approx(mean)
    assert remaining(study, 5) == 3  # repeats don't count towards --n-trials


@pytest.mark.slow
def test_two_ray_searches_with_the_same_seed_and_workers_give_the_same_trials(config, local_ray, tmp_path):
    """Two Ray searches with the same seed and ``workers=2`` (two Ray trials at once), rung early stopping
    on: the same trials, number by number (design, seed, accuracy, status), whichever finished first."""
    def trials(root):
        study = run_search(config(study="same", n_trials=5, workers=2, early_stop="rungs", root=root))
        return [(r.number, r.arch.id, r.seed, r.accuracy, r.status, r.epochs) for r in records(study)]

    first = trials(tmp_path / "a")
    assert len(first) >= 5 and first == trials(tmp_path / "b")
    # --workers auto: the cluster's CPUs over each trial's one (at most the trials left), said in one line
    from se_nas.search.ray_backend import concurrent_trials

    cpus = int(ray.cluster_resources()["CPU"])
    n, line = concurrent_trials(config(), 5)
    assert n == min(cpus, 5) and line.startswith(f"--workers auto: {n} concurrent Ray trial"), line
    assert f"(the cluster's {cpus} CPUs / 1 per trial" in line
    assert concurrent_trials(config(), 1)[0] == 1


def test_workers_for_ray_is_at_most_the_trials_left(config):
    from se_nas.search.ray_backend import concurrent_trials

    assert concurrent_trials(config(workers=3), 8) == (3, None)
    assert concurrent_trials(config(workers=100000), 4) == (4, "--workers 100000: 4 concurrent Ray trials (4 trials left to start)")


@pytest.mark.slow
def test_a_trial_whose_worker_process_is_killed_is_retried_and_completes(config, local_ray, tmp_path):
    """A Ray worker killed on a live node (as the OOM killer does) fails its trial with a reason
    naming the process, and the trial runs again (``retry_of``), as the Optuna backend retries a
    killed process; the study ends with the trials asked for."""
    import dataclasses
    import os
    import signal
    import threading
    import time

    import optuna

    from se_nas.record.storage import open_study

    S = optuna.trial.TrialState
    cfg = config(study="kill", n_trials=2, recipe=dataclasses.replace(load_recipe("tiny"), epochs=6))
    killed: dict = {}

    def kill_first_worker():  # a trial has reported where it runs: kill its worker process, once
        study = open_study("kill", root=tmp_path, create=True)
        end = time.time() + 120
        while not killed and time.time() < end:
            running = [t for t in study.get_trials(states=(S.RUNNING,)) if "node" in t.user_attrs]
            if running:
                os.kill(running[0].user_attrs["node"]["pid"], signal.SIGKILL)
                killed.update(number=running[0].number, params=running[0].params)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_worker, daemon=True)
    killer.start()
    study = run_search(cfg)
    killer.join()
    assert killed, "no trial was seen running"
    trials = {t.number: t for t in study.trials}
    dead = trials[killed["number"]]
    assert dead.state == S.FAIL and "worker process" in dead.user_attrs["reason"], dead.user_attrs
    assert "died" in dead.user_attrs["reason"]
    (retry,) = [t for t in trials.values() if t.user_attrs.get("retry_of") == dead.number]
    assert retry.state == S.COMPLETE and retry.params == killed["params"], retry.user_attrs
    assert counted(study)[0] == 2 and remaining(study, 2) == 0


def test_a_trial_that_raises_is_not_retried_and_names_its_error():
    """An exception in a Ray trial (its last report names it) is a failure of the design or a bug:
    recorded with the exception, not retried; a dead worker is retried, at most MAX_RETRIES times per
    design (the one retry rule, se_nas.record.retries)."""
    import optuna

    from se_nas.record.retries import LOST, MAX_RETRIES, requeue
    from se_nas.search.ray_backend import _failure

    study = optuna.create_study()
    study.enqueue_trial({"x": 1})
    node = '{"id": "n", "ip": "1.2.3.4", "pid": 7, "data_loads": 1}'
    trial = study.ask()
    trial.suggest_int("x", 0, 2)
    assert _failure(study, trial, {"error": "TypeError: bad", "node": node}, 0) == \
        ("TypeError: bad (see Ray's log)", False)
    reasons = []
    for _ in range(MAX_RETRIES + 1):
        reason, retry = _failure(study, trial, {}, 0)  # no report, so no node to ask Ray about
        reasons.append((reason, retry))
        trial.set_user_attr(LOST, True)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if retry:
            requeue(study, {"x": 1}, trial.number)
        trial = study.ask()
        trial.suggest_int("x", 0, 2)
    assert [r for _, r in reasons] == [True] * MAX_RETRIES + [False]
    assert reasons[0][0] == "its Ray worker died before its first report (see Ray's log)"
    assert "not retried again" in reasons[-1][0]


def _session(sid: int) -> dict[int, str]:
    """pid -> name of the processes in session ``sid`` (Linux /proc)."""
    from pathlib import Path

    found = {}
    for p in Path("/proc").iterdir():
        try:
            name, rest = (p / "stat").read_text().rsplit(")", 1)
        except (OSError, ValueError):
            continue
        if int(rest.split()[3]) == sid:
            found[int(p.name)] = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:80]
    return found


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux /proc")
def test_no_ray_process_outlives_a_sigkilled_search(tmp_path):
    """A search on a local Ray it started, SIGKILLed mid-trial: within 15 s nothing it started is
    left (Ray's own fate sharing leaves ray::DashboardAgent and ray::RuntimeEnvAgent for a minute)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "se_nas", "search", "--study", "k", "--space", "tiny", "--recipe", "tiny",
           "--budget-gflops", "1.9", "--n-trials", "6", "--backend", "ray", "--early-stop", "none",
           "--calibration-seeds", "0", "--confirm-top", "0", "--root", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "err", "w"),
                            start_new_session=True)  # its session holds every process it starts
    try:
        end = time.time() + 120
        while time.time() < end and proc.poll() is None:
            if any("ray::ImplicitFunc" in c for c in _session(proc.pid).values()):
                break
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "err").read_text()[-2000:]
        started = _session(proc.pid)
        assert any("DashboardAgent" in c for c in started.values()), started
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        end = time.time() + 15
        while _session(proc.pid) and time.time() < end:
            time.sleep(0.5)
        assert _session(proc.pid) == {}
    finally:
        for pid in _session(proc.pid):  # what a failed run left: ours, by pid
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux /proc")
def test_the_watchdog_takes_only_processes_run_from_rays_folder_and_their_descendants(tmp_path):
    """The watchdog's list: this process's children running from Ray's folder and all their
    descendants; any other child of the search (here a plain ``sleep``) is never its to end."""
    import shutil
    import subprocess
    import sys
    import time

    from se_nas.search.ray_watchdog import ray_processes

    fake_ray = tmp_path / "ray"
    fake_ray.mkdir()
    script = fake_ray / "daemon.py"  # a "Ray daemon" that starts a child of its own
    script.write_text("import subprocess, sys, time\n"
                      "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\ntime.sleep(60)\n")
    other = subprocess.Popen([shutil.which("sleep"), "60"])
    daemon = subprocess.Popen([sys.executable, str(script)])
    try:
        end = time.time() + 20
        while len(found := ray_processes(os.getpid(), str(fake_ray))) < 2 and time.time() < end:
            time.sleep(0.1)
        assert daemon.pid in found and other.pid not in found and len(found) == 2, found
    finally:
        for p in (other, daemon):
            p.kill()
        for pid in found:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


def _drive(config, order, root):
    """Drive a ``StudySearch`` on a real study as Ray would, without Ray: ask while it gives trials, and
    end the Ray trials in flight in ``order`` ("first": the oldest first, "last": the newest first),
    each with an accuracy fixed by its design and seed. Returns the study and the rung context (number
    of peers, noise) each trained trial was given when asked."""
    import hashlib
    import json

    from se_nas.design.arch import Arch
    from se_nas.design.cost import count_cost
    from se_nas.record.study import TrialOutcome
    from se_nas.search.ray_backend import StudySearch
    from se_nas.search.stages import prepare_study

    cfg = config(root=root)
    study = prepare_study(cfg)
    search = StudySearch(cfg, study, on_done=lambda frozen: None)
    running: list[tuple[str, dict]] = []
    seen, n = {}, 0
    while True:
        while True:
            n += 1
            got = search.suggest(f"t{n}")
            if not isinstance(got, dict):
                break
            running.append((f"t{n}", got))
            s = search.seen(f"t{n}")
            seen[len(seen)] = (len(s.peers), s.noise.sigma)
        if got == search.FINISHED:
            return study, seen
        assert got is None and running, "the searcher waits with nothing in flight"
        tid, got = running.pop(0 if order == "first" else -1)
        arch = Arch.from_json(got["arch"])
        acc = int(hashlib.sha1(f"{arch.id}/{got['seed']}".encode()).hexdigest()[:6], 16) / 2 ** 24
        cost = count_cost(arch, cfg.deploy.image_size, cfg.deploy.num_classes)
        out = TrialOutcome(arch, Status.COMPLETE, cost.gflops, cost.mparams, acc, 2, (acc / 2, acc), 1.0, "",
                           got["seed"], "ray")
        search.on_trial_complete(tid, {"outcome": json.dumps(out.to_attrs())})


def test_the_ray_searcher_asks_and_tells_in_trial_order_whatever_ends_first(config, tmp_path):
    """With W = 2 concurrent Ray trials, trial k is asked only once trial k - 2 is told, trials are told
    in the order asked, and each trial's rungs judge by the study when it was asked: ending the Ray
    trials oldest-first or newest-first gives the same study, trial by trial (design, seed,
    accuracy, status, what each was told), as the Optuna backend's rule does."""
    import optuna

    cfg = functools.partial(config, study="det", n_trials=14, workers=2, early_stop="rungs", sampler="tpe")
    runs = [_drive(cfg, order, tmp_path / order) for order in ("first", "last")]

    def trials(study):
        return [(t.number, t.state, t.params, t.values, t.user_attrs.get("status"), t.user_attrs.get("seed"),
                 t.user_attrs.get("accuracy")) for t in study.trials]

    (a, seen_a), (b, seen_b) = runs
    assert trials(a) == trials(b) and seen_a == seen_b
    assert counted(a)[0] == 14 and all(t.state != optuna.trial.TrialState.RUNNING for t in a.trials)
    assert len({t.user_attrs["arch"] for t in a.trials}) > 10  # TPE past its random start: it read the results


def test_an_ended_ray_trial_waits_for_the_one_asked_before_it(config, tmp_path):
    """The second Ray trial ends first: it is not told (the study still shows it running), and no third
    trial is asked, until the first ends; then the first is told, the third asked, the second told."""
    import json

    import optuna

    from se_nas.design.arch import Arch
    from se_nas.record.study import TrialOutcome
    from se_nas.search.ray_backend import StudySearch
    from se_nas.search.stages import prepare_study

    S = optuna.trial.TrialState
    cfg = config(study="order", n_trials=4, workers=2, root=tmp_path)
    study = prepare_study(cfg)
    search = StudySearch(cfg, study, on_done=lambda frozen: None)
    first, second = search.suggest("a"), search.suggest("b")
    assert isinstance(first, dict) and isinstance(second, dict) and search.suggest("c") is None

    def result(got, acc):
        out = TrialOutcome(Arch.from_json(got["arch"]), Status.COMPLETE, 0.1, 0.1, acc, 2, (acc, acc), 1.0, "",
                           got["seed"], "ray")
        return {"outcome": json.dumps(out.to_attrs())}

    search.on_trial_complete("b", result(second, 0.5))
    assert [t.state for t in study.trials] == [S.RUNNING, S.RUNNING] and search.suggest("c") is None
    search.on_trial_complete("a", result(first, 0.4))
    assert [t.state for t in study.trials] == [S.COMPLETE, S.RUNNING]  # the second waits for the third's ask
    assert isinstance(search.suggest("c"), dict)
    assert [t.state for t in study.trials] == [S.COMPLETE, S.COMPLETE, S.RUNNING]
