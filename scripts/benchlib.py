"""What the scripts under ``scripts/`` share: the envelope every measurement reports, and the recipe and
design sets of the rank benchmarks.

The envelope: the machine (CPU model, cores, torch threads, versions), the 1-minute load average
before and after, and the process's CPU seconds (``time.process_time``: every thread of this
process) next to its wall seconds. On a shared machine CPU seconds are the figure that compares;
the load says how much to trust the wall seconds.

A script imports it as a sibling (``import benchlib``): Python puts the folder of the script it runs
first on ``sys.path``. Nothing here imports torch or se_nas at import time, so every script's
``--help`` stays fast.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")


# --- the envelope ----------------------------------------------------------------------------------
def cpu() -> float:
    """This process's CPU seconds so far (every thread): the clock to time one call by on a shared machine."""
    return time.process_time()


def load() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def load_averages() -> tuple[float, float, float]:
    """The 1-, 5- and 15-minute load averages."""
    return os.getloadavg()


def loads() -> str:
    """The 1-, 5- and 15-minute load averages as text."""
    return "%.2f %.2f %.2f" % load_averages()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> dict[str, Any]:
    """What ran the measurement: CPU model, cores, torch threads, Python, torch and Optuna versions
    (torch and Optuna only where they are imported already or importable)."""
    info: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        import torch

        info.update(torch=torch.__version__, threads=torch.get_num_threads())
    except ImportError:
        pass
    try:
        import optuna

        info["optuna"] = optuna.__version__
    except ImportError:
        pass
    return info


def machine_line() -> str:
    m = machine()
    return (f"machine: {m['cpu']}, {m['cores']} cores, {m.get('threads', '?')} torch threads, Python {m['python']}, "
            f"torch {m.get('torch', '-')}, optuna {m.get('optuna', '-')}; load average {loads()}")


class Envelope:
    """CPU and wall seconds since it was made, and the load average at the start and now. ``stored``
    (what an earlier, interrupted run recorded: ``now()``'s dict) carries on from there: its seconds
    add and its start load stays."""

    def __init__(self, stored: dict | None = None):
        stored = stored or {}
        self.wall0, self.cpu0 = stored.get("wall_s", 0.0), stored.get("cpu_s", 0.0)
        self.load_start = stored.get("load_start", load())
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def now(self) -> dict[str, float]:
        return {"wall_s": self.wall0 + time.perf_counter() - self.t0,
                "cpu_s": self.cpu0 + time.process_time() - self.c0,
                "load_start": self.load_start, "load_end": load()}


def timed(fn: Callable[[], T]) -> tuple[T, dict[str, float]]:
    """``fn()`` and its envelope: ``cpu_s``, ``wall_s``, ``load_start``, ``load_end``."""
    env = Envelope()
    out = fn()
    return out, env.now()


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def publish(res: dict, text: str, path: str | None) -> int:
    """Print a benchmark's ``text`` (its results as markdown) and, with ``path``, write ``res`` there as
    JSON; the script's exit code."""
    print(text)
    if path:
        Path(path).write_text(json.dumps(res, indent=2))
    return 0


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a results file that runs append to, one JSON line each; a line cut by an
    interruption is skipped (that job runs again)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


# --- recipes and design sets of the rank benchmarks -------------------------------------------------
def recipe_of(name: str, sets: list[str]):
    """Recipe ``name`` with ``KEY=VALUE`` overrides (``--set``), always on the CPU with one thread and no
    rungs: the exact training a search trial does, without early stopping. Bad input exits with one line."""
    from se_nas.design.recipe import Recipe, RecipeError, load_recipe

    d = load_recipe(name).to_dict()
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep:
            sys.exit(f"--set {item!r}: expected KEY=VALUE, e.g. epochs=15")
        import yaml

        d[key] = yaml.safe_load(text)
    d.update(device="cpu", threads=1, rungs=[])
    try:
        return Recipe.from_dict(d, where=f"--recipe {name} with --set {' '.join(sets)}")
    except RecipeError as e:
        sys.exit(str(e))


def proxy_recipe():
    """The default proxy (``digits``) as ``recipe_of`` gives it: what the supernet benchmarks train."""
    return recipe_of("digits", [])


def designs(space_name: str, n: int, seed: int) -> list:
    """plain, r=16, then random designs of the space (an Optuna ``RandomSampler`` under ``seed``, through
    the space's own ``sample``) until there are ``n``, deduplicated by ``Arch.id``."""
    import optuna

    from se_nas.design.space import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(space_name)
    picked = {a.id: a for a in (space.plain(), space.baseline())}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(100 * n):
        if len(picked) >= n:
            break
        a = space.sample(study.ask())
        picked.setdefault(a.id, a)
    return list(picked.values())


def held_out(default: list, n: int, set_seed: int = 1) -> list:
    """``n`` designs of the default space's random sample under ``set_seed`` (1: the held-out set; 2: the
    second held-out set) that no earlier set (the default set, seed 0, and the held-out sets of the seeds
    below ``set_seed``) holds: designs nothing was chosen on."""
    seen = {a.id for a in default}
    for earlier in range(1, set_seed):
        seen |= {a.id for a in held_out(default, n, earlier)}
    fresh = [a for a in designs("resnet50-per-stage", n + len(seen) + 2, set_seed) if a.id not in seen]
    return fresh[:n]
