"""Designs as data: what a candidate is and what it costs, with no model built.

The SE choice axes and the backbone tables (``choices``, ``backbones``), the ``Arch`` value
(``arch``), the layers a design resolves to (``geometry``, ``inception``), the analytic cost
(``cost``), search spaces and budgets (``space``, ``budget``), trial recipes (``recipe``), a device's
latency table and its predictor (``latency``), Pareto fronts and hypervolume over plain arrays
(``pareto``), the built-in files (``builtin``), files written atomically (``files``) and YAML read
within bounds (``untrusted``).

May import: the standard library, numpy, yaml and the package's root (``se_nas.errors``). Never torch
at import time (``tests/test_layers.py`` checks): everything above builds on this floor.
"""
