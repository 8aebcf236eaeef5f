"""The ``se-nas`` command line: the parser over the table of subcommands in ``commands.py``, and the
one place that turns bad input into one line on stderr. Only the subcommand being run gets its
arguments built, because building them imports its part of the library."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback

from .. import __version__
from ..errors import SeNasError
from .commands import COMMANDS

DESCRIPTION = """\
Search per-stage Squeeze-and-Excitation designs of a ResNet under a FLOPs/params budget.
Each proposed design is costed analytically on the deployment model its search space declares
(224x224, 1000 classes as in the paper); only designs within the budget are trained, as a small
proxy under a trial recipe.

The flow:
  se-nas search --budget-gflops 4         propose, cost and train designs (resumable)
  se-nas compare                          the chosen design vs the reference SE (r=16) and the plain backbone
  se-nas report                           Pareto fronts and every trial: HTML, PNG, CSV, Markdown
  se-nas export --best -o best.senas      the best design within budget as one model file

Designs without training: se-nas presets; se-nas cost se_resnet50."""

EPILOG = "Each command has its own --help. SE_NAS_DEBUG=1 adds the traceback to an error."
INTERNAL_ERROR = 70  # EX_SOFTWARE of sysexits.h: an exit code that says "a bug", apart from bad input (2)


class _HelpFormatter(argparse.HelpFormatter):
    """Each option's default is stated once: by its help text, in words, or else added here from
    its ``default=`` (None and off flags have no default worth printing)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS or "default" in text):
            return text
        return f"{text} (default: %(default)s)"


def build_parser(commands: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with the arguments of ``commands`` (default: every subcommand) built; the other
    subcommands are listed by name and help only."""
    p = argparse.ArgumentParser(prog="se-nas", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        c = sub.add_parser(name, help=command.help, description=command.description or command.help,
                           formatter_class=_HelpFormatter)
        c.set_defaults(run=command.run)
        if commands is None or name in commands:
            command.arguments(c)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The top level has only flags, so the first other word names the subcommand.
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser([command] if command else []).parse_args(argv)
    # SIGTERM (kill, timeout, systemd) stops a command like Ctrl-C: the trials in flight, here and in
    # worker processes, are failed as interrupted and enqueued; the exit code is 128 + the signal.
    got = [signal.SIGINT]

    def terminate(signum, frame):
        got[0] = signum
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread (main called from a thread): leave signals alone
        previous = None
    try:
        return int(args.run(args) or 0)
    except SeNasError as e:
        # Bad input: the message names the thing, the bad value and what is allowed.
        # SE_NAS_DEBUG=1 adds the traceback.
        if os.environ.get("SE_NAS_DEBUG"):
            raise
        from ..record.storage import without_password

        print(f"se-nas {args.command}: error: {without_password(str(e), getattr(args, 'storage', None))}",
              file=sys.stderr)
        return 2
    except BrokenPipeError:  # `se-nas presets | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        # A filesystem problem (a full disk, a read-only folder, a file where a folder should be): the
        # path and what is wrong with it. Files are written atomically, so nothing half-written is left.
        if os.environ.get("SE_NAS_DEBUG"):
            raise
        from ..design.files import os_error_line

        print(f"se-nas {args.command}: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nse-nas {args.command}: interrupted; everything finished so far is saved", file=sys.stderr)
        return 128 + got[0]
    except Exception:
        # Anything else is a bug in se-nas, never the user's input: say so, with the traceback.
        traceback.print_exc()
        print(f"se-nas {args.command}: internal error in se-nas {__version__} (a bug, not a problem with your "
              f"input); please report it with the traceback above", file=sys.stderr)
        return INTERNAL_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # python -m se_nas.cli.parser, like python -m se_nas
    sys.exit(main())
