"""Optuna samplers by name: the table is the dispatch (``--sampler``).

The budget reaches the samplers as constraint values set on each trial (``record_outcome`` calls
``Trial.set_constraint``, Optuna 5's replacement for ``constraints_func``); TPE, NSGA-II and GP read
them to model the feasible region, random search ignores them.
"""
from __future__ import annotations

import warnings
from typing import Callable

from ..errors import UsageError


def _tpe(seed):
    import optuna

    # group=True: SE parameters only exist for enabled stages (a conditional space)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)


def _nsga2(seed):
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)


def _random(seed):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _gp(seed):
    import optuna

    # conditional SE parameters fall back to random sampling in GP: expected, not worth a warning each
    return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)


SAMPLERS: dict[str, Callable] = {"tpe": _tpe, "nsga2": _nsga2, "random": _random, "gp": _gp}


def make_sampler(name: str, seed: int | None):
    """The sampler ``name`` (a key of ``SAMPLERS``), seeded."""
    import optuna

    if name not in SAMPLERS:
        raise UsageError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return SAMPLERS[name](seed)


def process_seed(base: int, index: int = 0, started_with: int = 0, shared: bool = False, others: int = 0) -> int:
    """The sampler seed of one search process. A fresh single-process search on its own study file
    uses ``base`` itself; every other process (worker ``index`` > 0, a resumed run that found
    ``started_with`` trials, any process on a ``shared`` storage such as one PostgreSQL study that
    several machines or commands search at once, a search that found ``others`` live search
    processes on its study: several commands on one default study file) mixes in those, its host and
    its pid, so separate processes, machines and resumed runs do not propose the same sequence. Trial *training* seeds stay
    ``base + trial number`` whatever process runs a trial, so every trial is reproducible."""
    import os
    import socket
    import zlib

    if index == 0 and started_with == 0 and not shared and not others:
        return base
    mix = f"{base}/{index}/{started_with}/{socket.gethostname()}/{os.getpid()}" + (f"/{others}" if others else "")
    return zlib.crc32(mix.encode()) & 0x7FFFFFFF


def quiet_optuna() -> None:
    """Optuna's info log and its experimental-feature warnings would drown the per-trial lines."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
