"""The ``se-nas`` command line: a parser over one table of subcommands and their arguments
(``commands``), each running a thin function over the library (``handlers``), and the one place
that turns an ``SeNasError`` into one line (``parser``).

May import: everything; nothing imports it.
"""
__all__ = ["main"]


def __getattr__(name: str):
    # ``se_nas.cli.main`` (the console script) loads the parser on first use, so that importing the
    # table of commands alone never imports the parser.
    if name == "main":
        from .parser import main

        return main
    raise AttributeError(f"module 'se_nas.cli' has no attribute {name!r}")
