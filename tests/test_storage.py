"""Where studies live and how trials of dead processes come back: storage URLs (SQLite, journal files,
PostgreSQL on a real throwaway server), the retry cap, ownerless trials, recovery while a search runs."""
import datetime
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from se_nas import cli, load_model
from se_nas.design.budget import Budget
from se_nas.products.compare import compare
from se_nas.search.optuna_backend import search_trials
from se_nas.search.stages import SearchConfig, prepare_study
from se_nas.record.retries import MAX_RETRIES
from se_nas.record.storage import HEARTBEAT_MISSES, StorageError, heartbeat_interval, make_storage, open_study
from se_nas.record.claims import recover_dead_trials
from se_nas.record.study import counted

S = optuna.trial.TrialState


# --- storage URLs ------------------------------------------------------------------------------------
def test_only_journal_prefix_is_a_journal(tmp_path):
    """A SQLite file may be called anything, ``.log`` included; only ``journal:PATH`` is a journal."""
    st = make_storage("s", f"sqlite:///{tmp_path}/study.log")
    assert isinstance(st, optuna.storages.RDBStorage)
    optuna.create_study(study_name="s", storage=st)
    assert (tmp_path / "study.log").read_bytes()[:16] == b"SQLite format 3\x00"
    journal = make_storage("s", f"journal:{tmp_path}/study.db")
    assert isinstance(journal, optuna.storages.JournalStorage)
    optuna.create_study(study_name="s", storage=journal)
    assert not (tmp_path / "study.db").read_bytes().startswith(b"SQLite")


@pytest.mark.parametrize("url, words", [
    ("trials/x/study.db", ["'trials/x/study.db'", "journal:PATH", "sqlite:///"]),
    ("nosuchdb://host/db", ["'nosuchdb://host/db'", "not a storage URL", "postgresql://"]),
    ("journal:", ["'journal:'", "journal:PATH"]),
    # pg8000 is not a dependency: the line names the package to install, and hides the password
    ("postgresql+pg8000://me:secret@localhost/db", ["postgresql+pg8000", "pip install pg8000"]),
])
def test_bad_storage_url_is_one_line(tmp_path, capsys, url, words):
    rc = cli.main(["report", "s", "--root", str(tmp_path), "--storage", url])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--storage" in err, err
    assert all(w in err for w in words), err
    assert "secret" not in err


# --- recovering trials of dead processes ---------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _study(tmp_path):
    return open_study("r", root=tmp_path, create=True)


def _running(study, owner: dict | None, started_ago_s: float = 0.0, x: int | None = None):
    """A RUNNING trial as a process leaves it when it dies: asked, maybe sampled, maybe owned."""
    if started_ago_s:
        start = datetime.datetime.now() - datetime.timedelta(seconds=started_ago_s)
        template = optuna.trial.FrozenTrial(
            number=-1, state=S.RUNNING, value=None, datetime_start=start, datetime_complete=None, params={},
            distributions={}, user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=-1)
        trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
        trial = optuna.Trial(study, trial_id)
    else:
        trial = study.ask()
    if x is not None:
        trial.suggest_int("x", 0, 9)
    for k, v in (owner or {}).items():
        trial.set_user_attr(k, v)
    return trial


def test_a_design_that_dies_every_time_is_retried_three_times(tmp_path):
    study = _study(tmp_path)
    owner = {"host": socket.gethostname(), "pid": _dead_pid()}
    first = current = _running(study, owner, x=1)
    xs = []
    for attempt in range(1, MAX_RETRIES + 2):
        assert recover_dead_trials(study) == [current.number]
        if attempt <= MAX_RETRIES:  # the retry waits; the next ask takes it, with the same design
            assert len(study.get_trials(states=(S.WAITING,))) == 1
            current = _running(study, owner, x=1)
            xs.append(current.params["x"])
    assert not study.get_trials(states=(S.WAITING,))
    trials = study.get_trials()
    assert len(trials) == MAX_RETRIES + 1 and all(t.state == S.FAIL for t in trials)
    assert xs == [first.params["x"]] * MAX_RETRIES
    assert [t.user_attrs.get("retry_of") for t in trials] == [None, 0, 1, 2]
    last = trials[-1].user_attrs["reason"]
    assert f"process {owner['pid']}" in last and "died" in last and "not retried again" in last and "4 times" in last
    assert all("not retried" not in t.user_attrs["reason"] for t in trials[:-1])
    assert counted(study) == (1, 0)  # the chain is one failed trial towards --n-trials, nothing runs


def test_an_ownerless_running_trial_is_dead_after_the_grace_period(tmp_path):
    study = _study(tmp_path)
    old = _running(study, None, started_ago_s=600)
    fresh = _running(study, None)  # just asked: its process records the owner in a moment
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = _running(study, {"host": socket.gethostname(), "pid": live.pid}, started_ago_s=600)
        other_host = _running(study, {"host": "elsewhere", "pid": _dead_pid()}, started_ago_s=600)
        assert recover_dead_trials(study) == [old.number]
        assert recover_dead_trials(study, grace_s=0) == [fresh.number]  # the grace is what spared it
    finally:
        live.kill()
        live.wait()
    by_number = {t.number: t for t in study.get_trials()}
    assert "before recording its host and pid" in by_number[old.number].user_attrs["reason"]
    for t in (alive, other_host):
        assert by_number[t.number].state == S.RUNNING
    retries = {t.user_attrs["retry_of"] for t in by_number.values() if t.state == S.WAITING}
    assert retries == {old.number, fresh.number}


def _search_config(tmp_path, **kw):
    return SearchConfig(**{"study": "w", "space": "tiny", "recipe": "tiny", "budget": Budget(), "n_trials": 3,
                           "root": tmp_path, "progress": False, "calibration_seeds": 0, "confirm_top": 0,
                           "early_stop": "none", "workers": 1, **kw})


def test_a_worker_retries_the_trial_of_a_process_that_died_beside_it(tmp_path):
    """A second process dies mid-trial while this one searches: this one retries its trial and the
    study ends with exactly n_trials counted, nothing left running."""
    config = _search_config(tmp_path)
    study = prepare_study(config)
    dead = []

    def neighbour_dies(frozen):
        if not dead:
            dead.append(_running(study, {"host": socket.gethostname(), "pid": _dead_pid()}).number)

    search_trials(study, config, on_done=neighbour_dies)
    trials = {t.number: t for t in study.get_trials()}
    assert dead and trials[dead[0]].state == S.FAIL and "died" in trials[dead[0]].user_attrs["reason"]
    assert [t for t in trials.values() if t.user_attrs.get("retry_of") == dead[0]][0].state == S.COMPLETE
    assert counted(study) == (3, 0)


@pytest.mark.slow
def test_a_disk_filling_mid_search_is_one_line_and_the_study_resumes(tmp_path, tmpfs):
    """A full disk gave Optuna's "exceeding max length" (or SQLite's "disk I/O error") with a traceback,
    and left the trial RUNNING. Now: one line saying "disk full" and naming study.db; once there is
    room again, the rerun fails the trial the full disk cut short (its process is gone), retries it,
    and ends with the trials asked for."""
    disk = tmpfs(tmp_path / "disk", size="1m")
    search = [sys.executable, "-m", "se_nas.cli", "search", "--space", "tiny", "--recipe", "tiny", "--budget-gflops",
              "1.815", "--calibration-seeds", "0", "--confirm-top", "0", "--study", "d", "--root", str(disk)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    assert subprocess.run(search + ["--n-trials", "1"], env=env, capture_output=True).returncode == 0
    room = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(b"\0" * (room - 48 * 1024))  # room for a trial to start, not to end
    run = subprocess.run(search + ["--n-trials", "3"], env=env, capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert run.stderr.splitlines()[-1] == \
        f"se-nas search: error: {str(disk / 'd' / 'study.db')!r}: disk full: free some space and rerun"
    (disk / "filler").unlink()
    run = subprocess.run(search + ["--n-trials", "3"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    study = open_study("d", root=disk)
    assert counted(study) == (3, 0) and not study.get_trials(states=(S.RUNNING,))
    # Where the disk filled decides whether a trial was cut short: asking happens under the study's
    # claim, so a full disk can stop the search before any trial starts. A cut one is failed, then retried.
    cut = [t for t in study.get_trials() if t.state == S.FAIL]
    assert len(cut) <= 1 and all("died" in t.user_attrs["reason"] for t in cut)


# --- PostgreSQL, on a real throwaway server -------------------------------------------------------------
def _pg_bin(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, or where Debian's packages put it (not on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    return str(versions[-1]) if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL cluster of its own on a free localhost port, for this module's tests; removed after.
    initdb and the server refuse to run as root, so as root they run as the ``postgres`` user (made by
    Debian's package) or ``nobody``."""
    import pwd

    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL server programs (initdb, pg_ctl): apt-get install postgresql (.ci/run does)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("no PostgreSQL driver: pip install -e '.[postgres]' (.ci/run does)")
    as_user = {}
    if os.geteuid() == 0:
        names = [n for n in ("postgres", "nobody") if _has_user(n)]
        if not names:
            pytest.skip("running as root and there is no unprivileged user (postgres, nobody) to run PostgreSQL")
        pw = pwd.getpwnam(names[0])
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    top = tempfile.mkdtemp(prefix="se-nas-pg-")
    data, port = os.path.join(top, "data"), _free_port()
    if as_user:
        os.chown(top, as_user["user"], as_user["group"])
    run = dict(capture_output=True, text=True, timeout=120, cwd=top, **as_user)
    try:
        made = subprocess.run([initdb, "-D", data, "-U", "senas", "-A", "trust", "--no-sync", "--no-locale",
                               "-E", "UTF8"], **run)
        assert made.returncode == 0, made.stderr
        options = f"-p {port} -k {top} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
        started = subprocess.run([pg_ctl, "-D", data, "-l", os.path.join(top, "server.log"), "-w", "-t", "60",
                                  "-o", options, "start"], **run)
        assert started.returncode == 0, started.stderr + _read(os.path.join(top, "server.log"))
        yield f"postgresql://senas@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"], **run)
        shutil.rmtree(top, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _read(path: str) -> str:
    return Path(path).read_text()[-2000:] if os.path.exists(path) else ""


def _can_be_another_machine() -> bool:
    """A process in its own UTS namespace has its own hostname: to the others it is another machine
    (its pid means nothing to them; only its heartbeat tells them it is alive). Needs root."""
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.postgres
def test_machines_on_one_postgresql_study_one_killed_mid_trial(postgres_url, tmp_path, capsys):
    """Two `se-nas search` commands on one study of a real PostgreSQL server: this machine's and one
    on "machine-b" (its own hostname), each with its own sampler seed and a 1 s heartbeat. machine-b
    is SIGKILLed mid-trial. This machine's heartbeat check fails that trial naming machine-b's process,
    retries it, and the study ends with exactly the trials asked for; then report, export and compare
    read the study from the server (nothing is written under --root)."""
    if not _can_be_another_machine():
        pytest.skip("needs `unshare --uts` (root) to give a second process its own hostname")
    n, root = 6, str(tmp_path / "trials")
    common = ["--storage", postgres_url, "--root", root]
    search = [sys.executable, "-m", "se_nas", "search", "--space", "tiny", "--recipe", "tiny", "--calibration-seeds",
              "0", "--confirm-top", "0", "--early-stop", "none", "--n-trials", str(n), "--study", "many", *common]
    env = {**os.environ, "SE_NAS_HEARTBEAT_S": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    other = subprocess.Popen(["unshare", "--uts", "sh", "-c", 'hostname machine-b && exec "$@"', "sh", *search],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    here = subprocess.Popen(search, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        victim, deadline = None, time.time() + 120
        while victim is None and time.time() < deadline and other.poll() is None:
            try:
                study = open_study("many", storage=postgres_url)
            except Exception:  # not created yet
                time.sleep(0.2)
                continue
            running = [t for t in study.get_trials(states=(S.RUNNING,))
                       if t.user_attrs.get("host") == "machine-b" and "arch" in t.user_attrs]
            if running:
                other.kill()  # SIGKILL: no handler runs, the heartbeat just stops
                victim = running[0]
            time.sleep(0.05)
        assert victim is not None, f"machine-b never ran a trial: {other.communicate()[1][-2000:]}"
        assert victim.user_attrs["pid"] == other.pid  # same pid namespace: the pid it recorded is the one killed
        out, _ = here.communicate(timeout=300)
        assert here.returncode == 0, out[-3000:]
        lost_line = [line for line in out.splitlines() if line.startswith(f"#{victim.number} ")]
        assert lost_line and "failed: process" in lost_line[0] and "machine-b stopped its heartbeat" in lost_line[0]
    finally:
        for p in (other, here):
            if p.poll() is None:
                p.kill()
            p.wait()
    study = open_study("many", storage=postgres_url)
    trials = {t.number: t for t in study.get_trials()}
    lost = trials[victim.number]
    assert lost.state == S.FAIL
    assert f"process {other.pid} on machine-b stopped its heartbeat" in lost.user_attrs["reason"]
    retry = [t for t in trials.values() if t.user_attrs.get("retry_of") == victim.number]
    assert len(retry) == 1 and retry[0].state == S.COMPLETE and retry[0].params == victim.params
    assert retry[0].user_attrs["host"] == socket.gethostname()
    assert counted(study) == (n, 0)
    assert not (tmp_path / "trials").exists()
    out_dir = str(tmp_path / "reports")
    assert cli.main(["report", "many", *common, "--out", out_dir]) == 0
    assert (tmp_path / "reports" / "many" / "report.html").exists()
    assert cli.main(["export", "many", "--best", *common, "-o", str(tmp_path / "best.senas"), "--quiet"]) == 0
    assert load_model(tmp_path / "best.senas").se_nas.meta["study"] == "many"
    # compare through the library: the same code as `se-nas compare --storage`, with a short latency run
    res = compare("many", storage=postgres_url, root=tmp_path / "trials", out=out_dir, seeds=1, latency_repeats=2,
                  log=lambda *a: None)
    assert res["study"] == "many" and (tmp_path / "reports" / "many" / "compare.json").exists()
    err = capsys.readouterr().err
    assert "error" not in err, err


@pytest.mark.postgres
@pytest.mark.slow
def test_the_postgresql_password_never_reaches_output(postgres_url, tmp_path, capsys):
    """Issue 24: the password was printed in the `next:` hints after a search and in "no study
    named" errors. The server trusts every connection, so any password connects."""
    url = postgres_url.replace("postgresql://senas@", "postgresql://senas:s3cret@")
    common = ["--storage", url, "--root", str(tmp_path / "trials")]
    assert cli.main(["search", "--space", "tiny", "--recipe", "tiny", "--n-trials", "1", "--calibration-seeds", "0",
                     "--confirm-top", "0", "--early-stop", "none", "--study", "pw", *common]) == 0
    out, err = capsys.readouterr()
    assert "next:" in out and "--storage postgresql://senas:***@127.0.0.1" in out
    assert "s3cret" not in out + err
    for command in (["report", "nosuch"], ["export", "nosuch", "--best", "-o", str(tmp_path / "m.senas")]):
        assert cli.main([*command, *common]) == 2
        out, err = capsys.readouterr()
        assert "no study named 'nosuch'" in err and "senas:***@" in err, err
        assert "s3cret" not in out + err
    # a driver's own error that quotes the URL is masked too, as the last guard before stderr
    wrong = url.rsplit("/", 1)[0] + "/nosuchdb"
    assert cli.main(["report", "pw", "--storage", wrong]) == 2
    out, err = capsys.readouterr()
    assert "nosuchdb" in err and "s3cret" not in out + err


def test_processes_on_a_shared_storage_get_their_own_sampler_seeds():
    """Two commands started at once on one shared study (same host, same trial count) must not
    propose the same sequence; a fresh search on its own study file keeps the seed it was given."""
    from se_nas.record.samplers import process_seed

    code = "from se_nas.record.samplers import process_seed; print(process_seed(7, 0, 0, shared=True))"
    seeds = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
             for _ in range(2)}
    assert len(seeds) == 2
    assert process_seed(7) == 7 and process_seed(7, shared=True) != 7


def test_the_heartbeat_setting_is_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("SE_NAS_HEARTBEAT_S", "soon")
    with pytest.raises(StorageError, match="SE_NAS_HEARTBEAT_S must be a whole number of seconds >= 1, got 'soon'"):
        make_storage("h", f"sqlite:///{tmp_path}/h.db", heartbeat=True)
    monkeypatch.setenv("SE_NAS_HEARTBEAT_S", "2")
    make_storage("h", f"sqlite:///{tmp_path}/h.db", heartbeat=True)
    assert heartbeat_interval() * HEARTBEAT_MISSES == 8


@pytest.mark.postgres
@pytest.mark.slow
def test_both_postgresql_url_forms(postgres_url, monkeypatch):
    """``postgresql+psycopg2://`` uses psycopg2 when it is installed, and a plain ``postgresql://``
    falls back to it when psycopg 3 is missing (SQLAlchemy's default for the plain form)."""
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (the postgres extra brings psycopg 3)")
    optuna.create_study(study_name="forms", storage=make_storage("forms", postgres_url))
    url2 = postgres_url.replace("postgresql://", "postgresql+psycopg2://")
    st = make_storage("forms", url2)
    assert st.engine.dialect.driver == "psycopg2" and optuna.load_study(study_name="forms", storage=st)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if only psycopg2 were installed
    st = make_storage("forms", postgres_url)
    assert st.engine.dialect.driver == "psycopg2" and optuna.load_study(study_name="forms", storage=st)


# --- claims, heartbeats and evidence of death ------------------------------------------------------------
_ASK = """
import sys, time
from se_nas.record.storage import open_study
from se_nas.search.optuna_backend import ask
study = open_study("race", root=sys.argv[1])
while time.time() < float(sys.argv[2]):
    pass
t = ask(study)
print(t.number, time.time())
"""


@pytest.mark.slow
def test_a_requeued_trial_is_taken_by_one_process_only(tmp_path):
    """SQLite ignores the row lock Optuna's ask relies on: asks go through the study's claim. While
    this process holds it, another process's ask waits; six processes asking at once for three
    re-queued trials each get a trial of their own."""
    from se_nas.record.claims import claim

    study = open_study("race", root=tmp_path, create=True)
    for x in range(3):
        study.enqueue_trial({"x": x})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with claim(study):
        waiter = subprocess.Popen([sys.executable, "-c", _ASK, str(tmp_path), "0"], env=env, stdout=subprocess.PIPE,
                                  text=True)
        time.sleep(3.0)
        released = time.time()
    number, asked_at = waiter.communicate(timeout=60)[0].split()
    assert float(asked_at) >= released and number == "0"
    start = str(time.time() + 3)
    procs = [subprocess.Popen([sys.executable, "-c", _ASK, str(tmp_path), start], env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(6)]
    numbers = sorted(int(p.communicate(timeout=60)[0].split()[0]) for p in procs)
    assert numbers == [1, 2, 3, 4, 5, 6]
    assert [t.state for t in study.get_trials()] == [S.RUNNING] * 7


@pytest.mark.slow
def test_a_live_process_here_is_never_declared_dead(tmp_path, monkeypatch):
    """Only evidence kills a trial: a live pid on this host keeps its trial, however long its heartbeat
    has been silent; a process on another host is dead once this process has seen its beat unchanged
    for HEARTBEAT_MISSES beats (by this process's own clock: the hosts' clocks need not agree)."""
    monkeypatch.setenv("SE_NAS_HEARTBEAT_S", "1")
    study = _study(tmp_path)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        here = _running(study, {"host": socket.gethostname(), "pid": live.pid, "beat": 1.0}, started_ago_s=3600)
        away = _running(study, {"host": "elsewhere", "pid": 12345, "beat": 1.0})
        beating = _running(study, {"host": "elsewhere", "pid": 12346, "beat": 1.0})
        silent = _running(study, {"host": "elsewhere", "pid": 12347})  # never beat (a Ray trial): no evidence
        assert recover_dead_trials(study) == []  # first sight of their beats
        for _ in range(6):
            time.sleep(1.0)
            beating.set_user_attr("beat", time.time())
            failed = recover_dead_trials(study)
            if failed:
                break
        assert failed == [away.number]
    finally:
        live.kill()
        live.wait()
    by_number = {t.number: t for t in study.get_trials()}
    assert all(by_number[t.number].state == S.RUNNING for t in (here, beating, silent))
    assert "process 12345 on elsewhere stopped its heartbeat (none for 4 s)" in by_number[away.number].user_attrs["reason"]


def test_a_trial_taken_by_another_process_is_dropped_in_one_line(tmp_path, capsys):
    """This process trains a trial that another process meanwhile failed as dead (e.g. after this one
    was paused past the heartbeat limit): its result is dropped with one line, no traceback."""
    from se_nas.search.optuna_backend import ask, run_one

    config = _search_config(tmp_path, n_trials=1)
    study = prepare_study(config)
    trial = ask(study)
    other = open_study("w", root=tmp_path)  # another process's view of the study
    other.tell(trial.number, state=S.FAIL)
    frozen = run_one(study, config, trial=trial)
    assert frozen.number == trial.number and frozen.state == S.FAIL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"#{trial.number}: another process failed this trial" in err
    assert "dropped" in err and "Traceback" not in err


def test_a_shared_study_file_gives_each_search_its_own_seed(tmp_path):
    """Several `se-nas search` commands on one default study file: each one after the first (while the
    first is alive) mixes the number of live searches into its sampler seed; a search alone on its
    study, whatever ran before, keeps its seed."""
    from se_nas.record.samplers import process_seed
    from se_nas.record.claims import join_search

    study = open_study("seeds", root=tmp_path, create=True)
    code = ("import sys, time; from se_nas.record.storage import open_study; from se_nas.record.claims import join_search; "
            "print(join_search(open_study('seeds', root=sys.argv[1])), flush=True); time.sleep(60)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    other = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "0"  # the first search on the study
        assert join_search(study) == 1  # this one shares it with a live one
        assert process_seed(7, others=1) != 7
    finally:
        other.kill()
        other.wait()
    assert join_search(study) == 0 and join_search(study) == 0  # alone again (and registering twice is once)
    assert process_seed(7, others=0) == 7


def test_only_public_optuna_api_and_tested_majors():
    """DESIGN.md 13: no private name of Optuna or Ray (``study._storage``, ``optuna.storages._heartbeat``,
    a searcher's ``_ot_study``, ``ray._private``, ...) anywhere in se_nas. The installed Optuna and Ray
    are within pyproject.toml's bounds, the majors this suite ran on."""
    import re
    import tomllib

    from packaging.requirements import Requirement

    private = re.compile(r"\._storage\b|\._study_id\b|\._trial_id\b|(optuna|ray)\.[\w.]*\b_[a-z]\w*"
                         r"|_get_stale_trial_ids|\._ot_\w+|\bfrom ray\._|\bimport ray\._")
    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "se_nas").rglob("*.py"))
    assert len(files) > 40  # every floor of the package, not its top folder alone
    uses = [f"{p.relative_to(root)}:{i}: {line.strip()}" for p in files
            for i, line in enumerate(p.read_text().splitlines(), 1) if private.search(line)]
    assert not uses, "private Optuna or Ray API in se_nas:\n" + "\n".join(uses)
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    for name in ("optuna", "ray"):
        req = next(Requirement(d) for d in deps if Requirement(d).name == name)
        version = __import__(name).__version__
        assert req.specifier.contains(version), \
            f"{name} {version} is installed, but this suite was run on {req.specifier} only (pyproject.toml)"
        assert any(s.operator == "<" for s in req.specifier), f"pyproject.toml does not bound {name}'s major: {req}"


def test_the_retry_cap_is_per_design_and_a_poison_design_is_answered_from_its_record(tmp_path):
    """A design whose process dies every time is tried MAX_RETRIES + 1 times in all, not per chain of
    retries: proposed fresh after that, it is neither retried when it dies nor trained again when
    asked, but answered from its record like a repeat (not counted towards --n-trials)."""
    from se_nas.search.optuna_backend import ask, run_one
    from se_nas.record.study import Status

    config = _search_config(tmp_path, n_trials=1)
    study = prepare_study(config)
    scratch = optuna.create_study()
    t = scratch.ask()
    arch = config.space.sample(t)
    dead = _dead_pid()

    def dies(fresh: bool):
        if fresh:
            study.enqueue_trial(t.params)
        trial = ask(study)
        assert config.space.sample(trial).id == arch.id  # the same design
        trial.set_user_attr("arch", arch.to_json())
        trial.set_user_attr("pid", dead)
        return recover_dead_trials(study)

    for i in range(MAX_RETRIES + 1):
        assert dies(fresh=i == 0)
    assert not study.get_trials(states=(S.WAITING,))
    assert dies(fresh=True)  # proposed again as a new trial: dies a fifth time, not retried either
    assert not study.get_trials(states=(S.WAITING,))
    assert "not retried again: this design was tried 5 times" in study.get_trials()[-1].user_attrs["reason"]
    study.enqueue_trial(t.params)
    frozen = run_one(study, config)
    assert frozen.user_attrs["status"] == Status.REPEAT.value and frozen.user_attrs["epochs"] == 0
    assert "died 5 times: not trained again" in frozen.user_attrs["reason"]
    assert counted(study) == (2, 0)  # the two chains' last trials; the answer from the record is not counted
