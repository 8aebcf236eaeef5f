"""se-nas: neural-architecture search over the design space of Squeeze-and-Excitation blocks.

The flow: search space -> ``Arch`` -> cost check -> ``build_model`` -> training -> study ->
report / export / compare. See the README for the command line.
"""
from .arch import PRESETS, Arch, ArchError, StageSE, resolve_arch
from .build import build_model
from .cost import Cost, count_cost
from .export import load_model  # noqa: F401  (se_nas.load_model(FILE) -> ready nn.Module)

__version__ = "0.1.0"

__all__ = [
    "Arch", "ArchError", "StageSE", "PRESETS", "resolve_arch", "build_model", "Cost", "count_cost",
    "__version__",
]
