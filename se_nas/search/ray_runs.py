"""Calibration and confirmation trainings as Ray tasks (``--backend ray``, both strategies).

``se_nas.search.confirm.ensure_runs`` hands the (design, seed) runs it lacks to ``runner(config)``: each
becomes one Ray task reserving ``cpus_per_trial``/``gpus_per_trial``, training with
``se_nas.search.confirm.train_run`` on the worker (the recipe's data loaded there, once per worker process),
and the driver stores each run as it finishes. Only the driver writes the study; a crash leaves the
finished runs stored and a rerun trains only the rest. A task lost with its node is run again by Ray
(``MAX_RETRIES``).
"""
from __future__ import annotations

from ..record.retries import MAX_RETRIES  # a run lost with its node or its worker is retried this often, as trials


def _train(arch: str, recipe: dict, seed: int, threads: int):
    import torch

    from ..design.arch import Arch
    from .confirm import train_run
    from .ray_backend import _data
    from ..design.recipe import Recipe

    torch.set_num_threads(max(1, threads))
    rec = Recipe.from_dict(recipe)
    return train_run(Arch.from_json(arch), rec, seed, _data(rec))


def runner(config):
    """``ensure_runs``'s runner for ``config`` (a ``SearchConfig``): the runs as Ray tasks on the
    cluster of ``config.ray_address``, yielded as each finishes."""

    def run(todo, recipe):
        import ray

        from .ray_backend import connect

        connect(config.ray_address)
        task = ray.remote(_train).options(num_cpus=config.cpus_per_trial, num_gpus=config.gpus_per_trial,
                                          max_retries=MAX_RETRIES)
        pending = [task.remote(a.to_json(), recipe.to_dict(), seed, int(config.cpus_per_trial)) for a, seed in todo]
        while pending:
            [done], pending = ray.wait(pending, num_returns=1)
            yield ray.get(done)

    return run
