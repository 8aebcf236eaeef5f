"""The search: a multi-objective Optuna study over a search space, under a budget.

Objectives (``se_nas.study``): validation accuracy of the trained proxy (maximise), GFLOPs and
parameters of the deployment model (minimise) -- a Pareto search, not a weighted sum. Each proposal
is costed before training (``se_nas.trial.run_trial``); over-budget proposals finish at once with
constraint values > 0 (``Trial.set_constraint``) that the samplers read, so TPE, NSGA-II and GP learn the
feasible region (random search just keeps proposing).

The Optuna backend (default) is embedded: the study is a SQLite file ``<root>/<study>/study.db`` (or
any Optuna storage URL). Rerunning the same command continues it: finished trials are kept, trials
left running by a dead process (same host, pid gone; or a stale heartbeat on a shared RDB) are
failed and their parameters enqueued again. ``workers`` processes share the storage. Ctrl-C fails
the trial in flight as "interrupted", enqueues it for the next run, and leaves the study resumable.
The Ray backend (``se_nas.ray_backend``) reuses the pieces here: ``make_sampler``, ``prepare_study``,
``owner_attrs``, ``remaining``, ``summarize``.
"""
from __future__ import annotations

import math
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .budget import Budget, Deploy, check_feasible
from .cost import count_cost
from .earlystop import RungStopper, peers_from_study
from .space import DEFAULT_SPACE, SearchSpace, load_space
from .study import DEFAULT_ROOT, DIRECTIONS, STATUSES, open_study, records, study_dir
from .trial import configure_threads, record_outcome, run_trial

SAMPLERS = ("tpe", "nsga2", "random", "gp")
BACKENDS = ("optuna", "ray")
EARLY_STOPS = ("rungs", "asha", "none")


class SearchError(ValueError):
    """A search that can't start as asked (bad option, or a study created with other settings)."""


@dataclass
class SearchConfig:
    """Everything a search needs; ``space`` and ``recipe`` may be given as names or paths."""

    study: str
    space: SearchSpace | str = DEFAULT_SPACE
    recipe: Any = "digits"  # se_nas.recipe.Recipe or a name/path for load_recipe
    budget: Budget = field(default_factory=Budget)
    deploy: Deploy | None = None  # None: the space's deployment model
    n_trials: int = 30
    sampler: str = "tpe"
    workers: int = 1
    storage: str | None = None
    backend: str = "optuna"
    ray_address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    early_stop: str = "rungs"
    seed: int = 0
    root: str | Path = DEFAULT_ROOT
    progress: bool = True

    def __post_init__(self) -> None:
        from .recipe import Recipe, load_recipe

        if not isinstance(self.space, SearchSpace):
            self.space = load_space(self.space)
        if not isinstance(self.recipe, Recipe):
            self.recipe = load_recipe(self.recipe)
        if self.deploy is None:
            self.deploy = self.space.deploy
        for name, allowed in (("sampler", SAMPLERS), ("backend", BACKENDS), ("early_stop", EARLY_STOPS)):
            if getattr(self, name) not in allowed:
                raise SearchError(f"unknown {name} {getattr(self, name)!r}; allowed: {', '.join(allowed)}")
        if self.early_stop == "asha" and self.backend != "ray":
            raise SearchError("early_stop 'asha' needs backend 'ray' (Ray's ASHA scheduler); "
                              "the Optuna backend allows: rungs, none")
        for name in ("n_trials", "workers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SearchError(f"{name} must be a positive integer, got {name}={v!r}")
        if not (isinstance(self.cpus_per_trial, (int, float)) and self.cpus_per_trial > 0):
            raise SearchError(f"cpus_per_trial must be a positive number, got {self.cpus_per_trial!r}")
        if not (isinstance(self.gpus_per_trial, (int, float)) and self.gpus_per_trial >= 0):
            raise SearchError(f"gpus_per_trial must be a number >= 0, got {self.gpus_per_trial!r}")
        if not self.study or "/" in self.study or self.study.startswith("."):
            raise SearchError(f"study name must be a plain name (no '/', not starting with '.'), got {self.study!r}")


def default_study_name(space: SearchSpace, budget: Budget) -> str:
    """``resnet50-per-stage-4gflops``: the space plus the budget, so a new budget gets a new study."""
    parts = [space.name]
    if budget.max_gflops is not None:
        parts.append(f"{budget.max_gflops:g}gflops")
    if budget.max_mparams is not None:
        parts.append(f"{budget.max_mparams:g}mparams")
    return "-".join(parts)


# --- samplers --------------------------------------------------------------------------------------
def make_sampler(name: str, seed: int | None, constrained: bool | None = None):
    """TPE (multivariate, grouped for the conditional SE parameters), NSGA-II, random or GP, seeded.

    The budget reaches the samplers as constraint values set on each trial (``record_outcome`` calls
    ``Trial.set_constraint``, Optuna 5's replacement for ``constraints_func``); TPE, NSGA-II and GP
    read them to model the feasible region, random search ignores them. So ``constrained`` (kept
    for callers of the ``constraints_func`` era) changes nothing: an unconstrained study simply has
    no constraint values."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            # group=True: SE parameters only exist for enabled stages (a conditional space)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "gp":
            # conditional SE parameters fall back to random sampling in GP: expected, not worth a warning each
            return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    raise SearchError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")


def quiet_optuna() -> None:
    """Optuna's info log and its experimental-feature warnings would drown the per-trial lines."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


# --- the study -------------------------------------------------------------------------------------
def make_storage(config: SearchConfig):
    """The Optuna storage: the default SQLite file, an RDB URL, or a journal file (``journal:PATH``
    or a path ending in ``.log``, for NFS). RDB storages get a heartbeat so trials of a dead process
    on another machine are failed and retried."""
    import optuna

    url = config.storage
    if url is None:
        d = study_dir(config.study, config.root)
        d.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(d / 'study.db').as_posix()}"
    if url.startswith("journal:") or url.endswith(".log"):
        from optuna.storages.journal import JournalFileBackend

        path = url[len("journal:"):] if url.startswith("journal:") else url
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        raise SearchError(f"--storage must be an Optuna storage URL (sqlite:///..., postgresql://..., "
                          f"mysql://...) or journal:PATH, got {url!r}")
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
                    heartbeat_interval=60, grace_period=240,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
                )
            break
        except Exception as e:
            # Two processes opening a new database at once can race on creating Optuna's schema: the
            # loser sees "table already exists" or a duplicate version row. Once it exists, retry works.
            if attempt == 2 or "://" not in url:
                # a bad URL or an unreachable server: say which
                raise SearchError(f"cannot open storage {url!r}: {e}") from None
            time.sleep(0.5 * (attempt + 1))
    if url.startswith("sqlite"):
        _fast_sqlite(storage.engine)
    return storage


def _fast_sqlite(engine) -> None:
    """WAL journal with synchronous=NORMAL: each user-attribute write is a commit, and the default
    (rollback journal, fsync per commit) made the study writes ~0.5 s per trial. WAL survives a
    killed process (only a power loss can drop the last commits) and lets worker processes read
    while one writes."""
    from sqlalchemy import event

    def pragmas(dbapi_connection, _record):
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    event.listen(engine, "connect", pragmas)
    engine.dispose()  # connections opened before the listener existed don't have the pragmas


def owner_attrs() -> dict[str, Any]:
    """Who runs a trial: lets a rerun on the same host tell a dead owner from a live one."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dead_trials(study) -> list[int]:
    """Fail the RUNNING trials whose owner process on this host is gone; enqueue their parameters
    again so the next ask retries them. Returns the numbers of the trials failed."""
    import optuna

    host, failed = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner_host, pid = t.user_attrs.get("host"), t.user_attrs.get("pid")
        if owner_host != host or not isinstance(pid, int) or pid == os.getpid() or _alive(pid):
            continue
        storage = study._storage  # no public API fails another process's trial; Optuna's own
        try:
            storage.set_trial_user_attr(t._trial_id, "reason", f"process {pid} on {host} died")
            storage.set_trial_user_attr(t._trial_id, "status", "failed")
            if not storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another rerun (or the heartbeat) failed it first and enqueued the retry
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        failed.append(t.number)
    return failed


def _check_settings(study, config: SearchConfig) -> None:
    """Store the settings with a new study; refuse to continue one created with other settings."""
    # early_stop too: trials judged under another stopping rule must not share one front.
    want = {"space": config.space.to_dict(), "recipe": config.recipe.to_dict(),
            "deploy": config.deploy.to_dict(), "budget": config.budget.to_dict(),
            "early_stop": config.early_stop}
    have = study.user_attrs
    for key, value in want.items():  # compare everything before writing anything
        if key in have and have[key] != value:
            diff = _first_difference(have[key], value)
            raise SearchError(
                f"study {config.study!r} was created with a different {key} ({diff}); continue it with the "
                f"same settings, or start a new study with --study NEW_NAME")
    for key, value in want.items():
        if key not in have:
            study.set_user_attr(key, value)


def _first_difference(old: Any, new: Any, path: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if old.get(k) != new.get(k):
                return _first_difference(old.get(k), new.get(k), f"{path}.{k}" if path else k)
    return f"{path or 'value'}: {old!r} in the study, {new!r} now"


def prepare_study(config: SearchConfig, sampler=None):
    """Check the budget can be met, open (or create) the study, check its settings, recover trials of
    dead processes. Returns the ``optuna.Study`` (with ``config.sampler`` unless ``sampler`` is given)."""
    check_feasible(config.space, config.budget, config.deploy)
    if sampler is None:
        sampler = make_sampler(config.sampler, config.seed)
    study = open_study(config.study, storage=make_storage(config), root=config.root, sampler=sampler,
                       create=True)
    _check_settings(study, config)
    recover_dead_trials(study)
    return study


def retried(study) -> set[int]:
    """Numbers of failed trials that were enqueued again (they don't count towards ``n_trials``)."""
    out = set()
    for t in study.get_trials(deepcopy=False):
        # Optuna's heartbeat retries keep failed_trial at the first failure and list every link of a
        # chain of retries in retry_history; ours mark the trial they retry with retry_of.
        chain = [t.user_attrs.get("retry_of"), t.system_attrs.get("failed_trial"),
                 *t.system_attrs.get("retry_history", [])]
        out.update(n for n in chain if isinstance(n, int))
    return out


def remaining(study, n_trials: int) -> int:
    """Trials still to start for the study to reach ``n_trials`` finished ones (a rerun continues)."""
    import optuna

    S = optuna.trial.TrialState
    again = retried(study)
    done = sum(1 for t in study.get_trials(deepcopy=False, states=(S.COMPLETE, S.FAIL)) if t.number not in again)
    running = len(study.get_trials(deepcopy=False, states=(S.RUNNING,)))
    return n_trials - done - running


# --- the Optuna backend ----------------------------------------------------------------------------
def _heartbeat(study, trial):
    try:
        from optuna.storages._heartbeat import get_heartbeat_thread
    except ImportError:  # a future Optuna without it: the pid check still covers one machine
        import contextlib

        return contextlib.nullcontext()
    return get_heartbeat_thread(trial._trial_id, study._storage)


def run_one(study, config: SearchConfig, data=None, device=None):
    """Ask for one candidate, run it, record it; returns the finished FrozenTrial.

    On Ctrl-C the trial is failed as "interrupted" and enqueued again, then the interrupt goes on.
    """
    import optuna

    from optuna.storages import fail_stale_trials

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        fail_stale_trials(study)  # no-op unless the storage has a heartbeat
        trial = study.ask()
    for k, v in owner_attrs().items():
        trial.set_user_attr(k, v)
    try:
        with _heartbeat(study, trial):
            arch = config.space.sample(trial)
            trial.set_user_attr("arch", arch.to_json())
            stopper = None
            if config.early_stop == "rungs" and config.recipe.rungs:
                cost = count_cost(arch, config.deploy.image_size, config.deploy.num_classes)
                stopper = RungStopper(config.recipe.rungs, cost.gflops, cost.mparams,
                                      peers=lambda: peers_from_study(study, exclude=trial.number))
            outcome = run_trial(arch, config.recipe, config.budget, config.deploy,
                                seed=config.seed + trial.number, data=data, should_stop=stopper,
                                device=device)
            return record_outcome(study, trial, outcome, budget=config.budget)
    except KeyboardInterrupt:
        trial.set_user_attr("status", "failed")
        trial.set_user_attr("reason", "interrupted")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        raise
    except BaseException as e:  # a bug, not a training failure: record it, then let it surface
        trial.set_user_attr("status", "failed")
        trial.set_user_attr("reason", f"{type(e).__name__}: {e}")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise


def _worker(config: SearchConfig, index: int, on_done: Callable | None = None, data=None) -> None:
    """One search process: its own sampler (seed + index), the shared storage, the loaded data."""
    from .data import load_data

    quiet_optuna()
    configure_threads(config.workers)
    sampler = make_sampler(config.sampler, config.seed + index)
    study = open_study(config.study, storage=make_storage(config), root=config.root, sampler=sampler)
    if data is None:
        data = load_data(config.recipe)
    while remaining(study, config.n_trials) > 0:
        frozen = run_one(study, config, data=data)
        if on_done is not None:
            on_done(frozen)


def _spawned_worker(config: SearchConfig, index: int) -> None:
    try:
        _worker(config, index)
    except KeyboardInterrupt:
        pass  # the trial in flight is already failed and enqueued; the parent reports


def run_search(config: SearchConfig):
    """Run (or continue) the search until the study has ``config.n_trials`` finished trials."""
    if config.backend == "ray":
        from .ray_backend import run_ray_search

        return run_ray_search(config)
    from .data import load_data

    quiet_optuna()
    data = load_data(config.recipe)  # a missing or malformed dataset fails here, before any study exists
    study = prepare_study(config)
    progress = Progress(study, config)
    try:
        if config.workers == 1:
            _worker(config, 0, on_done=progress.trial_done, data=data)
        else:
            _run_processes(config, progress)
    finally:
        progress.close()
    if config.progress:
        print(summarize(study, config))
    return study


def _run_processes(config: SearchConfig, progress: "Progress") -> None:
    """``workers`` spawned processes on the same storage; this one reports their trials as they end."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_spawned_worker, args=(config, i), daemon=False) for i in range(config.workers)]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            progress.poll()
            time.sleep(1.0)
        progress.poll()
    finally:
        for p in procs:
            p.join()
    bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if bad:
        raise SearchError(f"{len(bad)} of {config.workers} worker processes exited with an error "
                          f"(exit codes {bad}); the study keeps every finished trial, rerun to continue")


# --- progress and summary --------------------------------------------------------------------------
def trial_line(t) -> str:
    """``#12 3fa9c01b2e acc 0.964 3.87 GFLOPs 28.1M complete 21.3s`` for a finished trial."""
    a = t.user_attrs
    status = a.get("status", "failed")
    arch_id = _arch_id(a.get("arch"))
    cost = (f"{a['gflops']:.2f} GFLOPs {a['mparams']:.1f}M" if a.get("gflops") is not None else "")
    acc = f"acc {a['accuracy']:.3f}" if status in ("complete", "stopped_early") and a.get("accuracy") is not None \
        else "acc   -  "
    what = {"complete": "complete", "stopped_early": a.get("reason") or "stopped early",
            "over_budget": a.get("reason") or "over budget, not trained"}.get(
        status, f"failed: {a.get('reason') or t.system_attrs.get('fail_reason', '')}")
    secs = f" {a['seconds']:.1f}s" if a.get("seconds") else ""
    return f"#{t.number} {arch_id} {acc} {cost} {what}{secs}".replace("  ", " ")


def _arch_id(text: str | None) -> str:
    from .arch import Arch

    return Arch.from_json(text).id if text else "-" * 10


class Progress:
    """A tqdm bar over the study's trials and one line per finished trial."""

    def __init__(self, study, config: SearchConfig):
        self.study, self.config, self.seen = study, config, set()
        self.bar = None
        import optuna

        S = optuna.trial.TrialState
        for t in study.get_trials(deepcopy=False, states=(S.COMPLETE, S.FAIL)):
            self.seen.add(t.number)
        if not config.progress:
            return
        from tqdm import tqdm

        done = config.n_trials - max(0, remaining(study, config.n_trials))
        print(f"search {config.study!r}: {config.space.name} ({config.space.size():,} architectures), "
              f"budget {config.budget.describe()} on {config.deploy.image_size}x{config.deploy.image_size}/"
              f"{config.deploy.num_classes} classes, recipe {config.recipe.dataset}, sampler {config.sampler}, "
              f"{config.workers} worker(s); {done} of {config.n_trials} trials already finished", flush=True)
        self.bar = tqdm(total=config.n_trials, initial=done, unit="trial", file=sys.stderr, dynamic_ncols=True)

    def trial_done(self, t) -> None:
        if t.number in self.seen:
            return
        self.seen.add(t.number)
        if self.bar is not None:
            self.bar.write(trial_line(t))
            self.bar.update(1)

    def poll(self) -> None:
        import optuna

        S = optuna.trial.TrialState
        for t in self.study.get_trials(deepcopy=False, states=(S.COMPLETE, S.FAIL)):
            self.trial_done(t)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def front_records(study) -> list:
    """Trained-to-the-end, within-budget trials on the Pareto front (accuracy, GFLOPs, params)."""
    from .pareto import pareto_front

    recs = [r for r in records(study) if r.status == "complete" and r.accuracy is not None]
    if not recs:
        return []
    mask = pareto_front([[r.accuracy, r.gflops, r.mparams] for r in recs], DIRECTIONS)
    return sorted((r for r, m in zip(recs, mask) if m), key=lambda r: (r.gflops, r.mparams))


def counts(study) -> dict[str, int]:
    """Proposals by outcome: feasible ones were trained (or failed training), infeasible ones not."""
    c = dict.fromkeys(STATUSES, 0)
    for r in records(study):
        c[r.status] = c.get(r.status, 0) + 1
    c["feasible"] = c["complete"] + c["stopped_early"] + c["failed"]
    c["infeasible"] = c["over_budget"]
    return c


def summarize(study, config: SearchConfig | None = None) -> str:
    """Counts, the Pareto front and the commands to look at the result, as printed after a search."""
    c = counts(study)
    name = study.study_name
    lines = [
        f"\nstudy {name!r}: {c['feasible'] + c['infeasible']} proposals, {c['feasible']} within budget "
        f"({c['complete']} trained to the end, {c['stopped_early']} stopped early, {c['failed']} failed), "
        f"{c['infeasible']} over budget (never trained)"
    ]
    front = front_records(study)
    if front:
        lines.append(f"Pareto front (accuracy up, GFLOPs and params down), {len(front)} architectures:")
        lines.append(f"  {'trial':>5}  {'id':<10}  {'accuracy':>8}  {'GFLOPs':>7}  {'params':>7}  architecture")
        for r in front:
            lines.append(f"  {r.number:>5}  {r.arch.id:<10}  {r.accuracy:>8.4f}  {r.gflops:>7.3f}  "
                         f"{r.mparams:>6.2f}M  {r.arch.label}")
    else:
        lines.append("no trial has been trained to the end yet: no Pareto front")
    opts = "" if config is None or Path(config.root) == DEFAULT_ROOT else f" --root {config.root}"
    lines += ["next:", f"  se-nas report {name}{opts}", f"  se-nas export {name} --best -o best.senas{opts}",
              f"  se-nas compare {name}{opts}"]
    return "\n".join(lines)
