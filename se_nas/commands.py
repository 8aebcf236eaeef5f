"""Subcommands beyond ``cost`` and ``presets``: each registers its parser with ``se_nas.cli``."""
from . import cli as _cli
from .cli import _positive_int


# --- search (se_nas.search) ----------------------------------------------------------------------
def cmd_search(args):
    from .budget import Budget
    from .search import SearchConfig, default_study_name, run_search
    from .space import load_space

    budget = Budget(args.budget_gflops, args.budget_mparams)
    space = load_space(args.space)
    config = SearchConfig(
        study=args.study or default_study_name(space, budget), space=space, recipe=args.recipe,
        budget=budget, n_trials=args.n_trials, sampler=args.sampler, workers=args.workers,
        storage=args.storage, backend=args.backend, ray_address=args.ray_address,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        early_stop=args.early_stop, seed=args.seed, root=args.root, calibration_seeds=args.calibration_seeds,
        confirm_top=args.confirm_top, confirm_max_seeds=args.confirm_max_seeds,
        max_seeds_per_design=args.max_seeds_per_design,
    )
    run_search(config)
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


def _register_search(sub):
    import argparse

    from .samplers import SAMPLERS
    from .search import BACKENDS, DEFAULT_N_TRIALS, EARLY_STOPS
    from .space import DEFAULT_SPACE

    p = sub.add_parser(
        "search", help="search SE designs under a FLOPs/params budget (multi-objective, resumable)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Search per-stage SE designs: each candidate is costed on the deployment model "
        "first (over budget = never trained), then a proxy is trained under the recipe. Objectives: "
        "validation accuracy (max), GFLOPs and parameters (min). Rerunning the same command continues "
        "the study. Example: se-nas search --budget-gflops 4",
    )
    p.add_argument("--budget-gflops", type=float, default=None, metavar="G",
                   help="largest GFLOPs of the deployment model (1 FLOP = 1 multiply-accumulate)")
    p.add_argument("--budget-mparams", type=float, default=None, metavar="M",
                   help="largest parameter count of the deployment model, in millions")
    p.add_argument("--space", default=DEFAULT_SPACE,
                   help="search space: a built-in name (search_spaces/NAME.yaml) or a YAML file")
    p.add_argument("--recipe", default="digits",
                   help="trial recipe: a built-in name (trials/NAME.yaml: digits, tiny, cifar10, imagenet) or a YAML file")
    p.add_argument("--study", default=None,
                   help="study name (default: space and budget, e.g. resnet50-per-stage-4gflops); "
                   "an existing study is continued")
    p.add_argument("--n-trials", type=_positive_int, default=DEFAULT_N_TRIALS,
                   help="finished trials the study should have in total (a rerun continues towards it); "
                   "over-budget proposals count, and are nearly free")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe",
                   help="Optuna sampler: TPE, NSGA-II, random or Gaussian process; all but random learn the budget")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="processes running trials at once on this machine, sharing the study storage")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default sqlite:///ROOT/STUDY/study.db); postgresql://... for "
                   "many machines, journal:PATH for a journal file on NFS")
    p.add_argument("--backend", choices=BACKENDS, default="optuna",
                   help="optuna: trials run in this process (or --workers); ray: trials run as Ray Tune tasks")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to join with --backend ray: 'auto' or HOST:PORT (default: start a local Ray)")
    p.add_argument("--cpus-per-trial", type=_number(float, True), default=1.0,
                   help="CPU cores each Ray trial reserves (--backend ray)")
    p.add_argument("--gpus-per-trial", type=_number(float, False), default=0.0,
                   help="GPUs each Ray trial reserves, fractions allowed (e.g. 0.5: two trials per GPU)")
    p.add_argument("--early-stop", choices=EARLY_STOPS, default="rungs",
                   help="rungs: stop a candidate at the recipe's rung epochs if it is poor among trials of "
                   "similar cost and beaten by one no more expensive; asha: Ray's ASHA (--backend ray); none")
    p.add_argument("--calibration-seeds", type=int, default=3, metavar="K",
                   help="before the search, train the plain backbone and r=16 under K seeds to measure the "
                   "proxy's seed noise (0: skip; early stopping then stops nothing)")
    p.add_argument("--confirm-top", type=int, default=3, metavar="N",
                   help="after the search, retrain the chosen design and the next N-1 designs of the front, "
                   "r=16 and the plain backbone under the same K seeds (0: no confirmation)")
    p.add_argument("--confirm-max-seeds", type=int, default=5, metavar="K",
                   help="most seeds per confirmed design; K is chosen from the measured noise, at least 3")
    p.add_argument("--max-seeds-per-design", type=int, default=3, metavar="S",
                   help="a design proposed again gets another seed (up to S) only while it decides the front; "
                   "otherwise it is answered from its record without training")
    p.add_argument("--seed", type=int, default=0, help="seeds the sampler; trial N trains with seed SEED+N")
    p.add_argument("--root", default="trials", help="folder holding the studies (ROOT/STUDY/study.db)")
    p.set_defaults(func=cmd_search)



_cli._REGISTER.append(_register_search)


# --- report / export / train / compare (se_nas.report, se_nas.export, se_nas.compare) -------------
def cmd_report(args):
    from .report import make_report

    rep, paths = make_report(args.study, root=args.root, out=args.out)
    print(f"study {rep.study}: {len(rep.frame)} trials, {rep.n_best} on the Pareto front, "
          f"normalised hypervolume {rep.hypervolume[-1]:.4f}")
    print(f"wrote {paths['report.html'].parent}/ ({', '.join(sorted(p.name for p in paths.values()))})")
    return 0


def _print_model_file(path, key):
    from .modelfile import read_model

    print(f"wrote {path}{' (signed)' if key else ''}:")
    mf = read_model(path, key=key)
    for line in mf.describe():
        print(f"  {line}")
    return mf


def cmd_export(args):
    from .export import export_study, model_file_path, read_key
    from .storage import latest_study

    name = args.study or latest_study(args.root)
    key = read_key(args.sign_key_file) if args.sign_key_file else None
    path = export_study(name, args.output, root=args.root, trial=args.trial, max_gflops=args.max_gflops,
                        fmt=args.format, progress=not args.quiet, device=args.device, deploy=args.deploy, key=key)
    mf = _print_model_file(model_file_path(path, args.format), key)
    if args.format != "senas":
        s = mf.preprocess.image_size
        print(f"wrote {path}: the same model as {args.format} (input 'images' N x 3 x {s} x {s} after the "
              "preprocessing above, output 'logits')")
    return 0


def cmd_train(args):
    from .export import read_key, resolve_ref, save_trained, train_arch
    from .recipe import load_recipe

    arch, source = resolve_ref(args.arch, args.root)
    recipe = load_recipe(args.recipe)
    key = read_key(args.sign_key_file) if args.sign_key_file else None
    out = args.output or f"models/{arch.id}-{Path(str(args.recipe)).stem}.safetensors"
    ckpt = Path(args.checkpoint_dir) / f"{Path(out).stem}.ckpt" if args.checkpoint_dir else Path(out).with_suffix(".ckpt")
    print(f"training {arch.id} {arch.label} under recipe {args.recipe}; checkpoint {ckpt} (rerun to resume)")
    model, result, data = train_arch(arch, recipe, seed=args.seed, checkpoint=ckpt, progress=not args.quiet,
                                     device=args.device)
    save_trained(out, model, arch, recipe, data, result, key=key, **source)
    print(f"accuracy {result.accuracy:.4f} after {result.epochs} epochs ({result.seconds:.1f} s)")
    _print_model_file(out, key)
    return 0


def cmd_compare(args):
    from .arch import resolve_arch
    from .compare import compare, compare_md

    res = compare(args.study, root=args.root, out=args.out, seeds=args.seeds, recipe=args.recipe,
                  arch=resolve_arch(args.arch) if args.arch else None, device=args.device,
                  progress=not args.quiet)
    print(compare_md(res))
    print(f"wrote {Path(args.out) / res['study']}/compare.json and compare.md (shown by `se-nas report`)")
    return 0


def _register_report(sub):
    from .export import FORMATS

    p = sub.add_parser("report", help="Pareto report of a study: offline HTML, PNG figures, CSV, Markdown")
    p.add_argument("study", nargs="?", help="study name (default: the most recently modified under --root)")
    p.add_argument("--root", default="trials", help="folder holding the studies (default trials)")
    p.add_argument("--out", default="reports", help="reports go to OUT/STUDY/ (default reports)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="train a trial's proxy (or --deploy: the untrained deployment model) and "
                       "write a model file (+ ONNX/TorchScript)")
    p.add_argument("study", nargs="?", help="study name (default: the most recently modified under --root)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, default=None, help="export trial N")
    which.add_argument("--best", action="store_true",
                       help="the most accurate completed trial within --max-gflops (the default)")
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
    p.add_argument("--root", default="trials", help="folder holding the studies (default trials)")
    p.add_argument("--device", default=None, help="training device (default: the recipe's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("train", help="train any architecture fully under a recipe (resumable) and export it")
    p.add_argument("arch", help="STUDY:N (trial N of a study), a JSON file or a preset name")
    p.add_argument("--recipe", default="digits", help="built-in recipe name or YAML file (default digits)")
    p.add_argument("-o", "--output", default=None, help="model file (default models/ARCHID-RECIPE.safetensors)")
    p.add_argument("--checkpoint-dir", default=None, help="where the resumable checkpoint goes (default: beside -o)")
    p.add_argument("--sign-key-file", default=None, metavar="FILE",
                   help="sign the model file (HMAC-SHA256) with the key in FILE; load_model(path, key=...) checks it")
    p.add_argument("--seed", type=int, default=None, help="initialisation seed (default: the recipe's)")
    p.add_argument("--root", default="trials", help="folder holding the studies, for STUDY:N")
    p.add_argument("--device", default=None, help="training device (default: the recipe's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="chosen design vs the r=16 baseline and the plain backbone over K seeds")
    p.add_argument("study", nargs="?", help="study name (default: the most recently modified under --root)")
    p.add_argument("--seeds", type=_positive_int, default=3, help="seeds per design (default 3)")
    p.add_argument("--recipe", default=None, help="recipe for all three (default: the study's)")
    p.add_argument("--arch", default=None, help="compare this architecture instead of the best trial")
    p.add_argument("--root", default="trials", help="folder holding the studies (default trials)")
    p.add_argument("--out", default="reports", help="results go to OUT/STUDY/ (default reports)")
    p.add_argument("--device", default=None, help="training device (default: the recipe's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_compare)


from pathlib import Path  # noqa: E402

_cli._REGISTER.append(_register_report)


# --- recipes (se_nas.recipe) -----------------------------------------------------------------------
def cmd_recipes(args):
    from .recipe import RECIPE_DIR, builtin_recipes, load_recipe

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


def _register_recipes(sub):
    p = sub.add_parser("recipes", help="list the built-in trial recipes, or print one as YAML to start editing from")
    p.add_argument("name", nargs="?", help="a built-in recipe name or a YAML file: print it (validated)")
    p.set_defaults(func=cmd_recipes)


_cli._REGISTER.append(_register_recipes)
