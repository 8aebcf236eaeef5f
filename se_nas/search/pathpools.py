"""Where the one-shot search evaluates its supernet paths: a pool ``rank`` keeps busy (``capacity``,
``submit``, ``next``), in this process (``InProcess``) or on Ray actors (``RayPaths``, ``--backend
ray``); either way only the search's own process writes the study (``se_nas.search.oneshot``).
"""
from __future__ import annotations

import time

from ..design.arch import Arch
from ..errors import SearchError
from ..nn.pathscore import PathEvaluator, PathScore, as_score


class InProcess:
    """Path evaluations in this process, one at a time: the pool ``rank`` reads (``capacity``,
    ``submit``, ``next``) around an ``evaluate(arch) -> PathScore`` callable (or a bare accuracy). The Ray pool
    (``RayPaths``) has the same three members."""

    capacity = 1

    def __init__(self, evaluate):
        self.evaluate, self.queue = evaluate, []

    def submit(self, arch: Arch) -> None:
        self.queue.append(arch)

    def next(self) -> tuple[Arch, PathScore, float]:
        arch, start = self.queue.pop(0), time.perf_counter()
        return arch, as_score(self.evaluate(arch)), time.perf_counter() - start


class PathActor:
    """One Ray actor's path evaluator (``ray.remote`` is applied in ``RayPaths``, so this module
    imports without Ray): the supernet from the object store, the recipe's data loaded on the worker,
    the same calibration batches as in the driver; deterministic, so it gives the accuracy this process
    would (at the same torch thread count: ``cpus_per_trial`` threads, one by default, as the driver's)."""

    def __init__(self, supernet, recipe: dict, threads: int):
        import torch

        from .ray_backend import _data
        from ..design.recipe import Recipe

        torch.set_num_threads(max(1, threads))
        rec = Recipe.from_dict(recipe)
        self.evaluator = PathEvaluator(supernet, rec, _data(rec))

    def evaluate(self, arch: str) -> tuple[tuple, float]:
        start = time.perf_counter()
        return tuple(self.evaluator(Arch.from_json(arch))), time.perf_counter() - start


def pool_size(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many evaluators the Ray cluster's resources hold at the given reservation each."""
    import ray

    have = ray.cluster_resources()
    n = int(have.get("CPU", 0) // cpus_per_trial)
    if gpus_per_trial:
        n = min(n, int(have.get("GPU", 0) // gpus_per_trial))
    if n < 1:
        raise SearchError(f"the Ray cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs: no room "
                          f"for one path evaluator at --cpus-per-trial {cpus_per_trial:g} --gpus-per-trial "
                          f"{gpus_per_trial:g}")
    return n


class RayPaths:
    """Path evaluations on Ray (``--backend ray``): the supernet goes once into Ray's object store, and
    a pool of ``PathActor``s, as many as the cluster's resources allow at ``cpus_per_trial`` and
    ``gpus_per_trial`` each, evaluates the designs ``rank`` sends (``capacity`` in flight, ``submit``,
    ``next``); only this process touches the study. ``evaluated`` lists the designs the actors
    evaluated, in the order their results came back.

    A lost actor (its node died, its process was killed) takes no result with it: its design goes to
    the next free actor and the pool shrinks by one; when none is left, the search stops with one
    line, and a rerun continues from the study."""

    def __init__(self, supernet, recipe, *, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
                 actors: int | None = None, most: int | None = None):
        import ray

        n = actors or min(pool_size(cpus_per_trial, gpus_per_trial), most or 1 << 30)
        weights = ray.put(supernet.cpu())  # once; every actor reads it from the object store
        actor = ray.remote(PathActor).options(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial)
        self.actors = [actor.remote(weights, recipe.to_dict(), int(cpus_per_trial)) for _ in range(n)]
        self.started = n
        self.idle = list(self.actors)
        self.running: dict = {}  # ObjectRef of an evaluation -> (actor, design)
        self.queue: list[Arch] = []  # designs waiting for an actor (a lost actor's first)
        self.evaluated: list[Arch] = []
        self.lost: list[str] = []  # why each lost actor was lost

    @property
    def capacity(self) -> int:
        return len(self.actors)

    def submit(self, arch: Arch) -> None:
        self.queue.append(arch)
        self._dispatch()

    def _dispatch(self) -> None:
        while self.queue and self.idle:
            actor, arch = self.idle.pop(), self.queue.pop(0)
            self.running[actor.evaluate.remote(arch.to_json())] = (actor, arch)

    def next(self) -> tuple[Arch, PathScore, float]:
        """The next design whose evaluation ends, its score and the seconds it took on its actor."""
        import ray
        from ray.exceptions import RayActorError

        while self.running:
            [ref], _ = ray.wait(list(self.running), num_returns=1)
            actor, arch = self.running.pop(ref)
            try:
                got, seconds = ray.get(ref)
            except RayActorError as e:  # the actor is gone: its design goes to another one
                self.actors.remove(actor)
                self.lost.append(str(e).strip().splitlines()[0])
                self.queue.insert(0, arch)
                self._dispatch()
                continue
            self.idle.append(actor)
            self._dispatch()
            self.evaluated.append(arch)
            return arch, PathScore(*got), seconds
        raise SearchError(f"every Ray actor evaluating supernet paths was lost ({len(self.lost)}, the last: "
                          f"{self.lost[-1] if self.lost else 'none started'}); rerun the same command to continue")

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors, self.idle, self.running = [], [], {}


def path_pool(config, net, recipe, data, todo: int):
    """Where paths are evaluated: in this process (``--backend optuna``), or on a pool of Ray actors
    (``--backend ray``, ``RayPaths``), at most one per design ``todo``."""
    if config.backend == "ray":
        from .ray_backend import connect

        connect(config.ray_address)
        return RayPaths(net, recipe, cpus_per_trial=config.cpus_per_trial, gpus_per_trial=config.gpus_per_trial,
                        most=todo)
    return InProcess(PathEvaluator(net, recipe, data))
