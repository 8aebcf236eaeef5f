"""Where the built-in search spaces and trial recipes are read from.

In a checkout (the README's editable install) they are the top-level ``search_spaces/`` and
``trials/`` folders, which users copy and edit in place. A wheel carries the same files inside the
package, as ``se_nas/builtin_spaces`` and ``se_nas/builtin_recipes`` (see ``pyproject.toml``).
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]  # se_nas/
_CHECKOUT = _PACKAGE.parent if (_PACKAGE.parent / "pyproject.toml").is_file() else None


def builtin_dir(checkout_name: str, packaged_name: str) -> Path:
    """The checkout's folder when running from a checkout, else the copy inside the package."""
    if _CHECKOUT is not None and (_CHECKOUT / checkout_name).is_dir():
        return _CHECKOUT / checkout_name
    return _PACKAGE / packaged_name


SPACES_DIR = builtin_dir("search_spaces", "builtin_spaces")
RECIPE_DIR = builtin_dir("trials", "builtin_recipes")
