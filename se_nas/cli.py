"""The ``se-nas`` command line. It parses and delegates: every subcommand is a thin function over
the library, so anything the CLI does can be done from Python too."""
from __future__ import annotations

import argparse
import os
import sys

from .arch import PRESETS, ArchError, resolve_arch
from .cost import count_cost


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2, no traceback."""


# --- cost / presets ------------------------------------------------------------------------------
def cmd_cost(args: argparse.Namespace) -> int:
    arch = resolve_arch(args.arch)
    c = count_cost(arch, args.image_size, args.num_classes)
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
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    if args.name:
        if args.name not in PRESETS:
            raise UserError(f"unknown preset {args.name!r}; presets: {', '.join(PRESETS)}")
        print(PRESETS[args.name].to_json(indent=2))
        return 0
    for name, arch in PRESETS.items():
        c = count_cost(arch)
        print(f"{name:<24}{c.gflops:>8.2f} GFLOPs{c.mparams:>8.1f} M params   {arch.label}")
    return 0


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="se-nas", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("cost", help="per-stage and total parameters and GFLOPs of an architecture")
    c.add_argument("arch", help="a JSON file or a preset name (see `se-nas presets`)")
    c.add_argument("--image-size", type=_positive_int, default=224, help="input side in pixels (default 224)")
    c.add_argument("--num-classes", type=_positive_int, default=1000, help="classifier outputs (default 1000)")
    c.set_defaults(func=cmd_cost)

    c = sub.add_parser("presets", help="list presets, or print one preset's JSON to start editing from")
    c.add_argument("name", nargs="?", help="print this preset as JSON")
    c.set_defaults(func=cmd_presets)

    for register in _REGISTER:
        register(sub)
    return p


# Subcommands defined in other modules add themselves here (see se_nas/commands.py).
_REGISTER: list = []


def main(argv: list[str] | None = None) -> int:
    from . import commands  # noqa: F401  (registers the search/report/export/... subcommands)

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, ArchError, ValueError, FileNotFoundError) as e:
        # Our errors name the thing, the bad value and what is allowed; SE_NAS_DEBUG=1 adds the traceback.
        if os.environ.get("SE_NAS_DEBUG"):
            raise
        print(f"se-nas {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `se-nas presets | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"\nse-nas {args.command}: interrupted; everything finished so far is saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run as `python -m se_nas.cli`, this file is __main__ while commands.py registers into the
    # imported se_nas.cli: delegate to that one.
    from se_nas.cli import main as _main

    sys.exit(_main())
