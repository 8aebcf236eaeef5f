"""Reading what a user hands us without trusting it: bounded YAML, bounded files, short previews.

Search spaces and recipes are YAML files that users copy from anywhere. PyYAML's ``safe_load``
constructs no objects, but it still expands aliases: a 914-byte "billion laughs" space reached
3.7 GB, and a deeply nested one ended in ``RecursionError``. ``load_yaml`` refuses aliases and
anchors (no space or recipe needs them), and bounds the text's size, the nesting depth and the
number of nodes before anything is built. ``preview`` shortens any value shown in an error, so a
200,000-item list is one short line. ``check_size`` refuses a file above a limit before it is read.
Every refusal is the caller's error class, in one line naming the file.

This module sits at the bottom of the layers: it imports nothing from se_nas.
"""
from __future__ import annotations

import os
import reprlib
from pathlib import Path
from typing import Any

MAX_YAML_BYTES = 1 << 20  # 1 MiB: the largest built-in space or recipe is about 4 KB
MAX_YAML_DEPTH = 32  # a space nests 4 levels (stages -> s1 -> axis -> values)
MAX_YAML_NODES = 50_000  # a space of 64 values per axis on 8 stages has about 2,600

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxtuple, _repr.maxdict, _repr.maxset = 3, 8, 8, 6, 6
_repr.maxstring, _repr.maxother, _repr.maxlong = 60, 60, 40


def preview(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to at most ``limit`` characters (nested and long values abbreviated with
    '...'): what an error message may show of a user's value."""
    try:
        text = _repr.repr(value)
    except Exception:  # a value whose repr fails still gets a line
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: max(limit - 3, 1)] + "..."


def check_size(path: str | Path, what: str, error: type[ValueError], limit: int) -> None:
    """Refuse ``path`` in one line when it is larger than ``limit`` bytes (checked with ``stat``,
    before any of it is read). A file that cannot be stat'ed is left to the reader's own error."""
    try:
        size = os.stat(path).st_size
    except OSError:
        return
    if size > limit:
        raise error(f"{what} {str(path)!r} is {size:,} bytes; at most {limit:,} are allowed "
                    f"(refused before reading it)")


def load_yaml(text: str, where: str, error: type[ValueError], *, max_bytes: int = MAX_YAML_BYTES,
              max_depth: int = MAX_YAML_DEPTH, max_nodes: int = MAX_YAML_NODES) -> Any:
    """``yaml.safe_load(text)`` without aliases or anchors, within the size, depth and node bounds;
    ``error`` in one line starting with ``where`` otherwise. Malformed YAML raises PyYAML's own
    ``yaml.YAMLError`` for the caller to word."""
    import yaml

    if len(text) > max_bytes:
        raise error(f"{where}: {len(text):,} characters; at most {max_bytes:,} are allowed")

    class Bounded(yaml.SafeLoader):
        depth = nodes = 0

        def compose_node(self, parent, index):
            event = self.peek_event()
            line = f"line {event.start_mark.line + 1}" if event.start_mark else "a node"
            if isinstance(event, yaml.AliasEvent):
                raise error(f"{where}, {line}: YAML aliases (*{preview(event.anchor, 40)[1:-1]}) are not "
                            "allowed; write the value out")
            if getattr(event, "anchor", None) is not None:
                raise error(f"{where}, {line}: YAML anchors (&{preview(event.anchor, 40)[1:-1]}) are not "
                            "allowed; write the value out")
            self.nodes += 1
            if self.nodes > max_nodes:
                raise error(f"{where}, {line}: more than {max_nodes:,} YAML values; a file this size is not "
                            "a search space or recipe")
            self.depth += 1
            if self.depth > max_depth:
                raise error(f"{where}, {line}: YAML nested more than {max_depth} levels deep")
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    loader = Bounded(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
