"""What each subcommand does when it runs: a thin function over the library per command, named in the
table of ``commands`` (``cmd_<name>``). Each imports the library it uses when it runs, so running one
command loads only its part; building the parser (``commands``) never imports this module."""
from __future__ import annotations

from pathlib import Path


# --- search (se_nas.search.stages) ----------------------------------------------------------------------
def cmd_search(args):
    from ..design.budget import Budget
    from ..search.stages import SearchConfig, run_search

    # None (a flag not given) takes the library's default: SearchConfig and the strategy own them all,
    # so this command and SearchConfig(...) from Python search alike. `--study ""` is a bad name
    # (refused by SearchConfig), not the default.
    config = SearchConfig(
        study=args.study, space=args.space, recipe=args.recipe,
        budget=Budget(args.budget_gflops, args.budget_mparams, args.budget_latency_ms, args.latency),
        strategy=args.strategy, n_trials=args.n_trials, sampler=args.sampler, workers=args.workers,
        storage=args.storage, backend=args.backend, ray_address=args.ray_address,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        early_stop=args.early_stop, seed=args.seed, root=args.root, calibration_seeds=args.calibration_seeds,
        confirm_top=args.confirm_top, confirm_max_seeds=args.confirm_max_seeds, confirm_recipe=args.confirm_recipe,
        max_seeds_per_design=args.max_seeds_per_design, objectives=args.objectives,
        supernet_epochs=args.supernet_epochs, supernet_sampling=args.supernet_sampling, progress=not args.quiet,
    )
    study = run_search(config)
    if args.quiet:  # no bars or per-trial lines; the summary still
        from ..search.progress import summarize

        print(summarize(study, config.root, config.storage))
    return 0


# --- report / export / train / compare (se_nas.products) --------------------------------------------------
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


# --- cost / latency / presets / recipes: designs and recipes --------------------------------------------
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
              + f"  stem+head {lat.rest:.2f}  total {table.plus_minus(lat.ms)}")
    return 0


def _latency(arch, path, image_size):
    import sys

    from ..design.latency import load_table, predict_latency

    table = load_table(path, on_mismatch=lambda m: print(f"se-nas cost: warning: {m}", file=sys.stderr))
    return table, predict_latency(arch, table, image_size)


def cmd_latency(args):
    if args.action == "check":
        return _latency_check(args)
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
                        num_classes=args.num_classes, runtime_=args.runtime, check=args.check,
                        progress=progress)
    finally:
        for b in bar:
            b.close()
    print(f"wrote {args.output}: {len(table.entries) - 2} unit entries of {space.name}"
          f"{f' ({len(archs)} design' + ('s)' if len(archs) != 1 else ')') if archs else ''}, plain model {table.ms(MODEL):.2f} ms, in "
          f"{time.perf_counter() - start:.0f} s; {table.describe()}")
    if table.check:
        from ..design.latency import check_line

        print(check_line(table, table.check))
    return 0


def _latency_check(args):
    """``se-nas latency check TABLE``: the table's check designs timed again now (exit 1 if drifted)."""
    import sys

    from ..design.latency import check_line, drifted, load_table
    from ..nn.profile import recheck

    table = load_table(args.table, on_mismatch=lambda m: print(f"se-nas latency: warning: {m}", file=sys.stderr))
    check = recheck(table, rounds=args.rounds)
    print(f"latency table {table.path}: {table.describe()}")
    print("  ".join(f"{d['id']} {d['predicted_ms']:.2f}/{d['measured_ms']:.2f} ms ({d['error_pct']:+.1f}%)"
                    for d in check["designs"]) + "  (predicted/measured now)")
    if table.check is None:
        print(f"the table stores no uncertainty (written before se-nas measured one); rerunning its profile command "
              f"adds it, measuring only the check: {table.profile_command()}")
    else:
        print(f"stored: ± {table.uncertainty_pct:.1f}% (the profile's check: {table.check['drift_pct']:+.1f}% "
              f"systematic, noise {table.check['noise_pct']:.1f}%)")
    print(f"now: {check_line(table, check)}")
    return 1 if drifted(check) else 0


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
    names = builtin_recipes()
    wide = max(map(len, names), default=0) + 2
    for name in names:
        r = load_recipe(name)
        print(f"{name:<{wide}}{r.dataset:<13}{r.image_size:>4}px  {r.stem:<8} stem  width {r.width:<6g}"
              f"{r.epochs:>3} epochs  batch {r.batch_size:<5}{r.optimizer} lr {r.lr:g} {r.schedule}")
    print(f"(files in {RECIPE_DIR}; `se-nas recipes NAME > my.yaml` gives one to edit)")
    return 0
