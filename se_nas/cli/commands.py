"""The subcommands, one table: each name has its arguments and its handler, a thin function over the
library. Handlers and argument builders import the library when they run, so listing the commands
(``se-nas --help``, ``--version``) loads none of it, and each command loads only what it uses."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MAX_SAMPLER_SEED = 2**32 - 1  # the samplers' random generators take 32-bit seeds
MAX_COST_IMAGE_SIZE = 4096  # as a model file's input (se_nas.products.modelfile.MAX_IMAGE_SIZE)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


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
def cmd_search(args):
    from ..design.budget import Budget
    from ..search.stages import SearchConfig, default_study_name, run_search
    from ..design.space import load_space

    budget = Budget(args.budget_gflops, args.budget_mparams, args.budget_latency_ms, args.latency)
    space = load_space(args.space)
    oneshot = args.strategy == "oneshot"
    if oneshot:
        from ..search.oneshot import DEFAULT_N_DESIGNS as default_n, DEFAULT_SAMPLER as default_sampler
    else:
        from ..search.stages import DEFAULT_N_TRIALS as default_n, DEFAULT_SAMPLER as default_sampler
    config = SearchConfig(
        # `--study ""` is a bad name (refused by SearchConfig), not the default
        study=args.study if args.study is not None
        else default_study_name(space, budget) + ("-oneshot" if oneshot else ""), space=space,
        recipe=args.recipe, budget=budget, n_trials=args.n_trials or default_n,
        sampler=args.sampler or default_sampler, workers=args.workers, storage=args.storage, backend=args.backend, ray_address=args.ray_address,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        early_stop=args.early_stop, seed=args.seed, root=args.root, calibration_seeds=args.calibration_seeds,
        confirm_top=args.confirm_top, confirm_max_seeds=args.confirm_max_seeds,
        max_seeds_per_design=args.max_seeds_per_design, objectives=args.objectives, progress=not args.quiet,
    )
    if oneshot:
        from ..search.oneshot import run_oneshot

        study = run_oneshot(config, supernet_epochs=args.supernet_epochs, sampling=args.supernet_sampling)
    else:
        study = run_search(config)
    if args.quiet:  # no bars or per-trial lines; the summary still
        from ..search.progress import summarize

        print(summarize(study, config.root, config.storage))
    return 0


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
    from ..search.stages import BACKENDS, DEFAULT_N_TRIALS, EARLY_STOPS
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
                   help="trial recipe: a built-in name (trials/NAME.yaml: digits, tiny, cifar10, imagenet) or a YAML file")
    p.add_argument("--study", default=None,
                   help="study name (default: space and budget, e.g. resnet50-per-stage-4gflops); "
                   "an existing study is continued")
    p.add_argument("--strategy", choices=("multi-trial", "oneshot"), default="multi-trial",
                   help="multi-trial: train every proposed design; oneshot: train one SE supernet, rank designs as "
                   "its paths, confirm the best standalone (docs/oneshot.md; study name gets -oneshot)")
    p.add_argument("--n-trials", type=_positive_int, default=None,
                   help=f"trials the study should have in total (a rerun continues towards it): trained, failed or "
                   f"over budget (nearly free); repeats of a known design answered from its record don't count "
                   f"(default {DEFAULT_N_TRIALS}; with --strategy oneshot, the designs to rank: 2000)")
    p.add_argument("--supernet-epochs", type=_positive_int, default=None, metavar="E",
                   help="--strategy oneshot: epochs of supernet training (default twice the recipe's)")
    p.add_argument("--supernet-sampling", choices=("uniform", "sandwich"), default="sandwich",
                   help="--strategy oneshot: the sandwich rule (widest, narrowest and a random path per step, within "
                   "the budget), or uniform: one path per step, each choice equally likely (compared in docs/oneshot.md)")
    p.add_argument("--sampler", choices=SAMPLERS,
                   help="Optuna sampler: TPE, NSGA-II, random or Gaussian process; all but random learn the budget "
                   "(default tpe; with --strategy oneshot nsga2: TPE re-proposes ranked designs thousands of times)")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="processes running trials at once on this machine, sharing the study storage")
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
                   "ASHA (--backend ray); none")
    p.add_argument("--calibration-seeds", type=int, default=3, metavar="K",
                   help="before the search, train the plain backbone and the reference SE (r=16, or the family's own) "
                   "under K seeds to measure the proxy's seed noise (0: skip; early stopping then stops nothing)")
    p.add_argument("--confirm-top", type=int, default=3, metavar="N",
                   help="after the search, retrain the chosen design and the next N-1 designs of the front, "
                   "the reference SE and the plain backbone under the same K seeds (0: no confirmation)")
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
def cmd_report(args):
    from ..products.report import make_report

    rep, paths = make_report(args.study, root=args.root, out=args.out, storage=args.storage)
    print(f"study {rep.study}: {len(rep.frame)} trials, {len(rep.designs)} designs trained to the end, "
          f"{rep.n_best} on the Pareto front of per-design means, normalised hypervolume {rep.hypervolume[-1]:.4f}")
    if rep.finding:
        print(f"finding: {rep.finding}")
    print(f"wrote {paths['report.html'].parent}/ ({', '.join(sorted(p.name for p in paths.values()))})")
    return 0


def _print_model_file(path, key):
    from ..products.modelfile import read_model

    print(f"wrote {path}{' (signed)' if key else ''}:")
    mf = read_model(path, key=key)
    for line in mf.describe():
        print(f"  {line}")
    return mf


def cmd_export(args):
    from ..products.export import export_study, model_file_path, read_key
    from ..record.storage import default_study

    name = args.study if args.study is not None else default_study(args.root, args.storage)
    key = read_key(args.sign_key_file) if args.sign_key_file else None
    path = export_study(name, args.output, root=args.root, trial=args.trial, max_gflops=args.max_gflops,
                        fmt=args.format, progress=not args.quiet, device=args.device, deploy=args.deploy, key=key,
                        storage=args.storage)
    mf = _print_model_file(model_file_path(path, args.format), key)
    if args.format != "senas":
        s = mf.preprocess.image_size
        print(f"wrote {path}: the same model as {args.format} (input 'images' N x 3 x {s} x {s} after the "
              "preprocessing above, output 'logits')")
    return 0


def cmd_train(args):
    from ..products.export import read_key, resolve_ref, save_trained, train_arch
    from ..design.recipe import load_recipe

    from dataclasses import replace

    from ..search.trial import pinned

    arch, source = resolve_ref(args.arch, args.root, args.storage)
    # torch's default (a thread per core, spin-waiting) is several times slower on a shared machine:
    # pinned as the search pins its trials, unless --threads or the recipe's threads: says otherwise
    recipe = load_recipe(args.recipe)
    recipe = pinned(recipe) if args.threads is None else replace(recipe, threads=args.threads)
    key = read_key(args.sign_key_file) if args.sign_key_file else None
    out = args.output or f"models/{arch.id}-{Path(str(args.recipe)).stem}.safetensors"
    from ..design.files import check_output_file

    check_output_file(out)  # a folder or a link at -o: refused before any training
    ckpt = Path(args.checkpoint_dir) / f"{Path(out).stem}.ckpt" if args.checkpoint_dir else Path(out).with_suffix(".ckpt")
    print(f"training {arch.id} {arch.label} under recipe {args.recipe} ({recipe.threads} torch "
          f"thread{'s' if recipe.threads != 1 else ''}); checkpoint {ckpt} (rerun to resume)")
    model, result, data = train_arch(arch, recipe, seed=args.seed, checkpoint=ckpt, progress=not args.quiet,
                                     device=args.device)
    save_trained(out, model, arch, recipe, data, result, key=key, **source)
    print(f"accuracy {result.accuracy:.4f} after {result.epochs} epochs ({result.seconds:.1f} s)")
    _print_model_file(out, key)
    return 0


def cmd_compare(args):
    from ..design.arch import resolve_arch
    from ..products.compare import compare, compare_md

    res = compare(args.study, root=args.root, storage=args.storage, out=args.out, seeds=args.seeds, recipe=args.recipe,
                  arch=resolve_arch(args.arch) if args.arch else None, device=args.device,
                  progress=not args.quiet, latency=args.latency)
    print(compare_md(res))
    print(f"wrote {Path(args.out) / res['study']}/compare.json and compare.md (shown by `se-nas report`)")
    return 0


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
def cmd_cost(args):
    from ..design.arch import resolve_arch
    from ..design.cost import count_cost

    arch = resolve_arch(args.arch)
    c = count_cost(arch, args.image_size, args.num_classes)
    latency = _latency(arch, args.latency, args.image_size) if args.latency else None
    print(f"{arch.id}  {arch.label}")
    print(f"input {args.image_size}x{args.image_size}, {args.num_classes} classes; 1 FLOP = 1 multiply-accumulate")
    print(f"{'stage':<8}{'SE':<22}{'params (M)':>12}{'GFLOPs':>10}{'SE params (M)':>15}{'SE GFLOPs':>11}")
    for s in c.stages:
        se = arch.stages[s.stage]
        print(f"{s.stage + 1:<8}{'-' if se is None else se.label:<22}{s.params / 1e6:>12.3f}"
              f"{s.flops / 1e9:>10.4f}{s.se_params / 1e6:>15.3f}{s.se_flops / 1e9:>11.4f}")
    rest_p = c.params - sum(s.params for s in c.stages)
    rest_f = c.flops - sum(s.flops for s in c.stages)
    print(f"{'stem+head':<30}{rest_p / 1e6:>12.3f}{rest_f / 1e9:>10.4f}")
    print(f"{'total':<30}{c.mparams:>12.3f}{c.gflops:>10.4f}{c.se_params / 1e6:>15.3f}{c.se_flops / 1e9:>11.4f}")
    if latency:
        table, lat = latency
        print(f"predicted latency on {table.describe()} ({table.path}):")
        print("  " + "  ".join(f"stage {i + 1} {ms:.2f}" for i, ms in enumerate(lat.stages))
              + f"  stem+head {lat.rest:.2f}  total {lat.ms:.2f} ms")
    return 0


def _latency(arch, path, image_size):
    import sys

    from ..design.latency import load_table, predict_latency

    table = load_table(path, on_mismatch=lambda m: print(f"se-nas cost: warning: {m}", file=sys.stderr))
    return table, predict_latency(arch, table, image_size)


def _cost_arguments(p):
    p.add_argument("arch", help="a JSON file or a preset name (see `se-nas presets`)")
    # bounded as a model file's input is: beyond it the table's columns would run together
    p.add_argument("--image-size", type=_bounded_int(1, MAX_COST_IMAGE_SIZE), default=224,
                   help="input side in pixels (default 224)")
    p.add_argument("--num-classes", type=_positive_int, default=1000, help="classifier outputs (default 1000)")
    p.add_argument("--latency", default=None, metavar="TABLE",
                   help="also the latency predicted from a table of `se-nas latency profile`")


# --- latency (se_nas.design.latency) ---------------------------------------------------------------------
def cmd_latency(args):
    import time

    from tqdm import tqdm

    from ..design.arch import resolve_arch
    from ..design.latency import MODEL
    from ..nn.profile import profile
    from ..design.space import load_space

    space = load_space(args.space)
    archs = [resolve_arch(a) for a in args.arch] if args.arch else None
    start, bar = time.perf_counter(), []

    def progress(done, total):
        if not bar:  # from the first measurement on: bad options are refused before the bar shows
            bar.append(tqdm(desc="latency profile", unit="entry", total=total, disable=args.quiet))
        bar[0].update(done - bar[0].n)

    try:
        table = profile(space, args.output, device=args.device, threads=args.threads, batch=args.batch,
                        image_size=args.image_size, dtype=args.dtype, channels_last=args.channels_last,
                        stem=args.stem, width=args.width, archs=archs, rounds=args.rounds, clock=args.clock,
                        num_classes=args.num_classes,
                        progress=progress)
    finally:
        for b in bar:
            b.close()
    print(f"wrote {args.output}: {len(table.entries) - 2} unit entries of {space.name}"
          f"{f' ({len(archs)} design' + ('s)' if len(archs) != 1 else ')') if archs else ''}, plain model {table.ms(MODEL):.2f} ms, in "
          f"{time.perf_counter() - start:.0f} s; {table.describe()}")
    return 0


def _latency_arguments(p):
    from ..design.backbones import STEMS
    from ..design.latency import DTYPES
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
    q.add_argument("-o", "--output", required=True, help="the table file (JSON); an existing one is resumed")
    q.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_presets(args):
    from ..design.arch import PRESETS
    from ..design.choices import pick
    from ..design.cost import count_cost

    if args.name:
        print(pick(PRESETS, args.name, "preset").to_json(indent=2))
        return 0
    for name, arch in PRESETS.items():
        c = count_cost(arch)
        print(f"{name:<24}{c.gflops:>8.2f} GFLOPs{c.mparams:>8.1f} M params   {arch.label}")
    return 0


def _presets_arguments(p):
    p.add_argument("name", nargs="?", help="print this preset as JSON")


def cmd_recipes(args):
    from ..design.recipe import RECIPE_DIR, builtin_recipes, load_recipe

    if args.name:
        recipe = load_recipe(args.name)  # a bad name or file is a RecipeError naming it
        builtin = RECIPE_DIR / f"{args.name}.yaml"
        if args.name in builtin_recipes():
            print(builtin.read_text(), end="")  # the file itself, comments included: a start to edit
        else:
            import yaml

            print(yaml.safe_dump(recipe.to_dict(), sort_keys=False), end="")
        return 0
    for name in builtin_recipes():
        r = load_recipe(name)
        print(f"{name:<10}{r.dataset:<13}{r.image_size:>4}px  {r.stem:<8} stem  width {r.width:<6g}"
              f"{r.epochs:>3} epochs  batch {r.batch_size:<5}{r.optimizer} lr {r.lr:g} {r.schedule}")
    print(f"(files in {RECIPE_DIR}; `se-nas recipes NAME > my.yaml` gives one to edit)")
    return 0


def _recipes_arguments(p):
    p.add_argument("name", nargs="?", help="a built-in recipe name or a YAML file: print it (validated)")


# --- the table ------------------------------------------------------------------------------------
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
        _search_arguments, cmd_search,
        "Search per-stage SE designs: each candidate is costed on the deployment model first (over "
        "budget = never trained), then a proxy is trained under the recipe. Objectives: validation "
        "accuracy (max), GFLOPs and parameters (min). Rerunning the same command continues the study. "
        "Example: se-nas search --budget-gflops 4"),
    "compare": Command("chosen design vs the reference SE (r=16, or the family's own) and the plain backbone "
                       "over K seeds",
                       _compare_arguments, cmd_compare),
    "report": Command("Pareto report of a study: offline HTML, PNG figures, CSV, Markdown",
                      _report_arguments, cmd_report),
    "export": Command("train the chosen design's proxy (or --deploy: the untrained deployment model) and "
                      "write a model file (+ ONNX/TorchScript)", _export_arguments, cmd_export),
    "train": Command("train any architecture fully under a recipe (resumable) and export it",
                     _train_arguments, cmd_train),
    "cost": Command("per-stage and total parameters and GFLOPs of an architecture (and latency from a table)",
                    _cost_arguments, cmd_cost),
    "latency": Command("profile a device: measured latency of every block a space can produce",
                       _latency_arguments, cmd_latency),
    "presets": Command("list presets, or print one preset's JSON to start editing from",
                       _presets_arguments, cmd_presets),
    "recipes": Command("list the built-in trial recipes, or print one as YAML to start editing from",
                       _recipes_arguments, cmd_recipes),
}
