"""se-nas: neural-architecture search over the design space of Squeeze-and-Excitation blocks.

The flow: search space -> ``Arch`` -> cost check -> ``build_model`` -> training -> study ->
report / export / compare. The subpackages are its floors, each importing only the ones before it:

    design    the Arch value, choice and backbone tables, cost, spaces, budgets, recipes (no torch)
    nn        SE blocks, the builder, data, training, the supernet, latency
    record    the study as the one result format, per-design results, Pareto, storage, samplers
    search    the stages, the trial function, confirmation, early stopping, the executors
    products  model files, export, compare, report
    cli       the ``se-nas`` command

See the README for the command line.

The public names load their module on first use (PEP 562), so ``import se_nas`` and the command
line's ``--help`` do not import torch.
"""
import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_HOME = {
    "Arch": "design.arch", "ArchError": "design.arch", "StageSE": "design.arch", "PRESETS": "design.arch",
    "resolve_arch": "design.arch",
    "build_model": "nn.build",
    "Cost": "design.cost", "count_cost": "design.cost",
    "load_model": "products.export",  # se_nas.load_model(FILE) -> a ready nn.Module, no study needed
    "SeNasError": "errors",
    "SearchConfig": "search.stages", "run_search": "search.stages",  # run_search(SearchConfig(...)): the CLI's search
}

__all__ = [
    "Arch", "ArchError", "StageSE", "PRESETS", "resolve_arch", "build_model", "Cost", "count_cost",
    "load_model", "SeNasError", "SearchConfig", "run_search", "__version__",
]


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'se_nas' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
