"""Designs as data: what a candidate is and what it costs, with no model built.

The SE choice axes and the backbone tables (``choices``, ``backbones``), the ``Arch`` value
(``arch``), the layers a design resolves to (``geometry``, ``inception``), the analytic cost
(``cost``), search spaces and budgets (``space``, ``budget``), trial recipes (``recipe``), Pareto
fronts and hypervolume over plain arrays (``pareto``), the built-in files (``builtin``) and small file
helpers (atomic writes, bounded YAML).

May import: the standard library, numpy and yaml. Never torch at import time, and nothing else of
se_nas: everything above builds on this floor.
"""
