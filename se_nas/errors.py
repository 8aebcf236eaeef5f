"""The one base class of se-nas's errors, and the kinds of bad input no single module owns.

Every error se-nas raises for bad input (a flag, a file, a study, a design) is an ``SeNasError``: its
message states the rule, names the file or flag and shows the value, and the command line prints it as
one line. Any other exception is a bug in se-nas, and the command line says so, with its traceback.

``SeNasError`` is a ``ValueError``, so code written against the earlier kinds (``ArchError``,
``RecipeError``, ... each a ``ValueError``) still catches them.
"""
from __future__ import annotations


class SeNasError(ValueError):
    """Bad input, told in one line that names what was wrong and what is allowed."""


class UsageError(SeNasError):
    """A bad value of a command-line flag or an argument of the Python API that no domain module owns."""


class SearchError(SeNasError):
    """A search that can't start as asked (bad option, or a study created with other settings)."""
