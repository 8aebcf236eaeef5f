"""The subcommands, one table: each name has its arguments (built here) and its handler, a thin
function over the library (``handlers``). Argument builders and handlers import the library when
they run, and the handlers module is imported only when a command runs, so listing the commands
(``se-nas --help``, ``--version``) loads none of it, and each command loads only what it uses."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

MAX_SAMPLER_SEED = 2**32 - 1  # the samplers' random generators take 32-bit seeds
MAX_COST_IMAGE_SIZE = 4096  # as a model file's input (se_nas.products.preprocess.MAX_IMAGE_SIZE)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _workers(text: str) -> int | str:
    """``--workers``: a positive integer, or auto."""
    if text == "auto":
        return text
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {text!r}") from None


def _bounded_int(low: int, high: int):
    """An argparse type: an integer in ``low..high``."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in {low}..{high}, got {text!r}") from None
        if not low <= v <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in {low}..{high}, got {v}")
        return v

    return parse


def _storage_argument(p) -> None:
    """The same study location options on every command that reads or writes a study."""
    import os

    from ..record.storage import DEFAULT_ROOT  # standard library only: cheap at parse time

    p.add_argument("--storage", default=os.environ.get("SE_NAS_STORAGE") or None, metavar="URL",
                   help="Optuna storage URL of the study (default: sqlite:///ROOT/STUDY/study.db, or $SE_NAS_STORAGE "
                   "when set): postgresql://USER@HOST/DB for many machines, journal:PATH for a journal file on NFS")
    p.add_argument("--root", default=str(DEFAULT_ROOT), help=f"folder holding the studies, ROOT/STUDY/ (default {DEFAULT_ROOT})")


# --- search (se_nas.search.stages) ----------------------------------------------------------------------
def _number(kind, positive: bool):
    import argparse
    import math

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v) or v < 0 or (positive and v == 0):
            raise argparse.ArgumentTypeError(f"expected a {'positive' if positive else 'non-negative'} number, got {text}")
        return v

    return parse


def _search_arguments(p):
    from ..record.samplers import SAMPLERS
    from ..search.stages import EARLY_STOPS
    from ..search.strategies import BACKENDS
    from ..search.strategies import STRATEGIES
    from ..design.space import DEFAULT_SPACE
    from ..record.study import OBJECTIVE_TABLE, OBJECTIVES

    p.add_argument("--budget-gflops", type=float, default=None, metavar="G",
                   help="largest GFLOPs of the deployment model (1 FLOP = 1 multiply-accumulate)")
    p.add_argument("--budget-mparams", type=float, default=None, metavar="M",
                   help="largest parameter count of the deployment model, in millions")
    p.add_argument("--budget-latency-ms", type=float, default=None, metavar="MS",
                   help="largest latency of the deployment model predicted from --latency TABLE, in milliseconds")
    p.add_argument("--latency", default=None, metavar="TABLE",
                   help="the device's table (`se-nas latency profile` of the space's deployment model): the "
                   "latency budget reads it, and every trial records its predicted latency")
    p.add_argument("--objectives", default=",".join(OBJECTIVES), metavar="NAMES",
                   help=f"what the study optimises, fixed when it is created: accuracy and any of "
                   f"{', '.join(list(OBJECTIVE_TABLE)[1:])} (latency needs --latency TABLE; default %(default)s)")
    p.add_argument("--space", default=DEFAULT_SPACE,
                   help="search space: a built-in name (search_spaces/NAME.yaml) or a YAML file")
    p.add_argument("--recipe", default="digits",
                   help="trial recipe: a built-in name (trials/NAME.yaml: digits, digits-wide, tiny, cifar10, "
                   "cifar10-full, imagenet) or a YAML file")
    p.add_argument("--study", default=None,
                   help="study name (default: space and budget, e.g. resnet50-per-stage-4gflops); "
                   "an existing study is continued")
    multi, oneshot = STRATEGIES["multi-trial"], STRATEGIES["oneshot"]
    p.add_argument("--strategy", choices=tuple(STRATEGIES), default="multi-trial",
                   help="multi-trial: train every proposed design; oneshot: train one SE supernet, rank designs as "
                   "its paths, confirm the best standalone (docs/oneshot.md; study name gets -oneshot)")
    p.add_argument("--n-trials", type=_positive_int, default=None,
                   help=f"trials the study should have in total (a rerun continues towards it): trained, failed or "
                   f"over budget (nearly free); repeats of a known design answered from its record don't count "
                   f"(default {multi.default_count}; with --strategy oneshot, the {oneshot.counts}: "
                   f"{oneshot.default_count})")
    p.add_argument("--supernet-epochs", type=_positive_int, default=None, metavar="E",
                   help="--strategy oneshot: epochs of supernet training (default twice the recipe's)")
    p.add_argument("--supernet-sampling", choices=("uniform", "sandwich"), default="sandwich",
                   help="--strategy oneshot: the sandwich rule (widest, narrowest and a random path per step, within "
                   "the budget), or uniform: one path per step, each choice equally likely (compared in docs/oneshot.md)")
    p.add_argument("--sampler", choices=SAMPLERS,
                   help="Optuna sampler: TPE, NSGA-II, random or Gaussian process; all but random learn the budget "
                   f"(default {multi.default_sampler}; with --strategy oneshot {oneshot.default_sampler}: TPE "
                   "re-proposes ranked designs thousands of times)")
    p.add_argument("--workers", type=_workers, default="auto",
                   help="trainings at once on this machine, one process and one core each (default auto: the cores "
                   "this process may use); with --backend ray, Ray trials at once (auto: what the cluster's CPUs/GPUs "
                   "hold). The answer depends on --seed and this count only, never on timing (except --early-stop asha)")
    p.add_argument("--backend", choices=BACKENDS, default="optuna",
                   help="optuna: trials run in this process (or --workers); ray: trials run as Ray Tune tasks")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to join with --backend ray: 'auto' or HOST:PORT (default: start a local Ray)")
    p.add_argument("--cpus-per-trial", type=_number(float, True), default=1.0,
                   help="CPU cores each Ray trial reserves (--backend ray)")
    p.add_argument("--gpus-per-trial", type=_number(float, False), default=0.0,
                   help="GPUs each Ray trial reserves, fractions allowed (e.g. 0.5: two trials per GPU)")
    p.add_argument("--early-stop", choices=EARLY_STOPS, default="rungs",
                   help="rungs: stop a candidate at the recipe's rung epochs only if designs of similar cost, one "
                   "of them no more expensive, beat it by more than twice the measured seed noise; asha: Ray's "
                   "ASHA (--backend ray; its decisions depend on timing); none")
    p.add_argument("--calibration-seeds", type=int, default=3, metavar="K",
                   help="before the search, train the plain backbone and the reference SE (r=16, or the family's own) "
                   "under K seeds to measure the proxy's seed noise (0: skip; early stopping then stops nothing)")
    p.add_argument("--confirm-top", type=int, default=3, metavar="N",
                   help="after the search, retrain the chosen design and the next N-1 designs of the front, "
                   "the reference SE and the plain backbone under the same K seeds (0: no confirmation)")
    p.add_argument("--confirm-recipe", default=None, metavar="RECIPE",
                   help="train the confirmation under this recipe (a built-in name or a YAML file; default: "
                   "--recipe): search on a cheap proxy, confirm on a wider or longer one, e.g. --recipe digits "
                   "--confirm-recipe digits-wide; the finding then gives both fidelities' rank agreement, and "
                   "the confirmation's best design is the answer")
    p.add_argument("--confirm-max-seeds", type=int, default=5, metavar="K",
                   help="most seeds per confirmed design; K is chosen from the measured noise, at least 3")
    p.add_argument("--max-seeds-per-design", type=int, default=2, metavar="S",
                   help="a design proposed again gets another seed (up to S) only while it decides the front; "
                   "otherwise it is answered from its record without training")
    p.add_argument("--seed", type=_bounded_int(0, MAX_SAMPLER_SEED), default=0,
                   help="seeds the sampler; trial N trains with seed SEED+N")
    _storage_argument(p)
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars or per-trial lines; the summary and errors are still printed")


# --- report / export / train / compare (se_nas.products.report, se_nas.products.export, se_nas.products.compare) -------------
def _report_arguments(p):
    p.add_argument("study", nargs="?", help="study name (default: the only study under --root; with several, name one)")
    _storage_argument(p)
    p.add_argument("--out", default="reports", help="reports go to OUT/STUDY/ (default reports)")


def _export_arguments(p):
    from ..products.export import FORMATS

    p.add_argument("study", nargs="?", help="study name (default: the only study under --root; with several, name one)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, default=None, help="export trial N")
    which.add_argument("--best", action="store_true",
                       help="the study's chosen design (the default): its confirmed choice (or, where another "
                       "confirmed design dominates it, the most accurate design of the confirmed front), else the best "
                       "per-design mean accuracy within --max-gflops")
    p.add_argument("--max-gflops", type=float, default=None, help="GFLOPs limit for --best (default: the study's budget)")
    p.add_argument("-o", "--output", required=True,
                   help="file to write: the model file (e.g. best.senas), or with --format onnx/torchscript the "
                   ".onnx/.pt file, the model file then going beside it as .safetensors")
    p.add_argument("--format", choices=FORMATS, default="senas",
                   help="senas: the model file; onnx/torchscript: also a deployment file at -o")
    p.add_argument("--deploy", action="store_true",
                   help="write the study's deployment-size model (e.g. 224x224, 1000 classes) of the chosen design, "
                   "UNTRAINED, instead of the trained proxy; `se-nas train STUDY:N --recipe imagenet` trains one")
    p.add_argument("--sign-key-file", default=None, metavar="FILE",
                   help="sign the model file (HMAC-SHA256) with the key in FILE; load_model(path, key=...) checks it")
    _storage_argument(p)
    p.add_argument("--device", default=None, help="training device (default: the recipe's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _train_arguments(p):
    p.add_argument("arch", help="STUDY:N (trial N of a study), a JSON file or a preset name")
    p.add_argument("--recipe", default="digits", help="built-in recipe name or YAML file (default digits)")
    p.add_argument("-o", "--output", default=None, help="model file (default models/ARCHID-RECIPE.safetensors)")
    p.add_argument("--checkpoint-dir", default=None, help="where the resumable checkpoint goes (default: beside -o)")
    p.add_argument("--sign-key-file", default=None, metavar="FILE",
                   help="sign the model file (HMAC-SHA256) with the key in FILE; load_model(path, key=...) checks it")
    p.add_argument("--seed", type=int, default=None, help="initialisation seed (default: the recipe's)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch threads on the CPU (default: the recipe's threads:, else 1, as the search's trials)")
    _storage_argument(p)
    p.add_argument("--device", default=None, help="training device (default: the recipe's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _compare_arguments(p):
    p.add_argument("study", nargs="?", help="study name (default: the only study under --root; with several, name one)")
    p.add_argument("--seeds", type=_positive_int, default=None,
                   help="seeds per design (default: the search's confirmation seeds, so nothing is trained again; else 3)")
    p.add_argument("--recipe", default=None, help="recipe for all three (default: the study's)")
    p.add_argument("--arch", default=None, help="compare this architecture instead of the chosen design")
    p.add_argument("--latency", default=None, metavar="TABLE",
                   help="also the latency predicted from a table profiled for the recipe's proxy (its stem, width, "
                   "input size and classes), beside the measured one")
    _storage_argument(p)
    p.add_argument("--out", default="reports", help="results go to OUT/STUDY/ (default reports)")
    p.add_argument("--device", default=None, help="training device (default: the recipe's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# --- cost / presets / recipes: designs and recipes as files to start editing from -----------------
def _cost_arguments(p):
    p.add_argument("arch", help="a JSON file or a preset name (see `se-nas presets`)")
    # bounded as a model file's input is: beyond it the table's columns would run together
    p.add_argument("--image-size", type=_bounded_int(1, MAX_COST_IMAGE_SIZE), default=224,
                   help="input side in pixels (default 224)")
    p.add_argument("--num-classes", type=_positive_int, default=1000, help="classifier outputs (default 1000)")
    p.add_argument("--latency", default=None, metavar="TABLE",
                   help="also the latency predicted from a table of `se-nas latency profile`")


# --- latency (se_nas.design.latency) ---------------------------------------------------------------------
def _latency_arguments(p):
    from ..design.backbones import STEMS
    from ..design.latency import CHECK_RANDOM, DEFAULT_RUNTIME, DTYPES, RUNTIMES
    from ..design.space import DEFAULT_SPACE

    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = sub.add_parser("profile", help="measure every distinct unit of a space on a device and write a table",
                       formatter_class=p.formatter_class,
                       description="Measure, on one device, every distinct residual unit (plain and each SE choice "
                       "in each slot at each shape) a space can produce, and the whole plain model; write the "
                       "table (JSON) that `se-nas cost --latency` and the latency budget read. A rerun resumes.")
    q.add_argument("--space", default=DEFAULT_SPACE, help="search space: a built-in name or a YAML file")
    q.add_argument("--arch", action="append", default=None, metavar="ARCH",
                   help="profile only what this design needs (a JSON file or preset; repeatable)")
    q.add_argument("--device", default="cpu", help="cpu or cuda[:N] (timed with CUDA events)")
    q.add_argument("--threads", type=_positive_int, default=1, help="torch threads on the CPU")
    q.add_argument("--batch", type=_positive_int, default=1, help="batch size")
    q.add_argument("--image-size", type=_positive_int, default=None,
                   help="input side in pixels (default: the space's deployment model's)")
    q.add_argument("--dtype", choices=DTYPES, default="float32", help="parameter and input type")
    q.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    q.add_argument("--num-classes", type=_positive_int, default=None,
                   help="classifier outputs (default: the space's deployment model's)")
    q.add_argument("--stem", choices=STEMS, default="imagenet", help="stem of the profiled model")
    q.add_argument("--width", type=_number(float, True), default=1.0, help="width multiplier")
    q.add_argument("--rounds", type=_positive_int, default=15, help="interleaved timed calls of every entry")
    q.add_argument("--clock", choices=("wall", "process"), default="wall",
                   help="CPU timer: wall time, or this process's CPU time, which other jobs on a shared machine "
                   "do not inflate (with --threads 1 it is an idle machine's wall time)")
    q.add_argument("--runtime", choices=RUNTIMES, default=DEFAULT_RUNTIME,
                   help="what runs the model: eager torch, or ONNX Runtime on the CPU (pip install "
                   "'se-nas[onnxruntime]'); the table is of that runtime (default %(default)s)")
    q.add_argument("--check", type=_bounded_int(0, 1000), default=CHECK_RANDOM, metavar="N",
                   help="then time whole designs (the plain one, r=16 everywhere and N random ones, seeded) against "
                   "their predictions: the table's uncertainty (default %(default)s; 0: no check)")
    q.add_argument("-o", "--output", required=True, help="the table file (JSON); an existing one is resumed")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    c = sub.add_parser("check", help="time a table's check designs again: does it still hold on this machine?",
                       formatter_class=p.formatter_class,
                       description="Time the whole designs of a table's check again, now, and compare with the "
                       "table's predictions: within the timings' noise, or drifted (exit 1, with the command that "
                       "profiles the table afresh).")
    c.add_argument("table", help="a table of `se-nas latency profile`")
    c.add_argument("--rounds", type=_positive_int, default=None, help="timed calls of each design (default: the "
                   "profile's)")


def _presets_arguments(p):
    p.add_argument("name", nargs="?", help="print this preset as JSON")


def _recipes_arguments(p):
    p.add_argument("name", nargs="?", help="a built-in recipe name or a YAML file: print it (validated)")


# --- the table ------------------------------------------------------------------------------------
def _run(name: str) -> Callable[[argparse.Namespace], int]:
    """The handler ``handlers.<name>``, imported when the command runs: building the parser (and
    ``se-nas --help``) never loads the handlers."""
    def run(args: argparse.Namespace) -> int:
        from . import handlers

        return getattr(handlers, name)(args)

    run.__name__ = run.__qualname__ = name
    return run


@dataclass(frozen=True)
class Command:
    help: str  # one line in `se-nas --help`
    arguments: Callable[[argparse.ArgumentParser], None]  # adds the command's arguments
    run: Callable[[argparse.Namespace], int]
    description: str | None = None  # the top of `se-nas NAME --help` (default: help)


# In the order of the flow: search, compare, report, export or train; then the tools for designs.
COMMANDS: dict[str, Command] = {
    "search": Command(
        "search SE designs under a FLOPs/params/latency budget (multi-objective, resumable)",
        _search_arguments, _run("cmd_search"),
        "Search per-stage SE designs: each candidate is costed on the deployment model first (over "
        "budget = never trained), then a proxy is trained under the recipe. Objectives: validation "
        "accuracy (max), GFLOPs and parameters (min). Rerunning the same command continues the study. "
        "Example: se-nas search --budget-gflops 4. Two fidelities (search on the default proxy, confirm "
        "on a wider, longer training): se-nas search --budget-gflops 4 --confirm-recipe digits-wide"),
    "compare": Command("chosen design vs the reference SE (r=16, or the family's own) and the plain backbone "
                       "over K seeds",
                       _compare_arguments, _run("cmd_compare")),
    "report": Command("Pareto report of a study: offline HTML, PNG figures, CSV, Markdown",
                      _report_arguments, _run("cmd_report")),
    "export": Command("train the chosen design's proxy (or --deploy: the untrained deployment model) and "
                      "write a model file (+ ONNX/TorchScript)", _export_arguments, _run("cmd_export")),
    "train": Command("train any architecture fully under a recipe (resumable) and export it",
                     _train_arguments, _run("cmd_train")),
    "cost": Command("per-stage and total parameters and GFLOPs of an architecture (and latency from a table)",
                    _cost_arguments, _run("cmd_cost")),
    "latency": Command("profile a device: measured latency of every block a space can produce",
                       _latency_arguments, _run("cmd_latency")),
    "presets": Command("list presets, or print one preset's JSON to start editing from",
                       _presets_arguments, _run("cmd_presets")),
    "recipes": Command("list the built-in trial recipes, or print one as YAML to start editing from",
                       _recipes_arguments, _run("cmd_recipes")),
}
