"""se-nas: neural-architecture search over the design space of Squeeze-and-Excitation blocks.

The flow: search space -> ``Arch`` -> cost check -> ``build_model`` -> training -> study ->
report / export / compare. See the README for the command line.
"""
from .arch import PRESETS, Arch, ArchError, StageSE, resolve_arch
from .build import build_model
from .cost import Cost, count_cost
from .export import load_model  # se_nas.load_model(FILE) -> a ready nn.Module, no study needed

__version__ = "0.1.0"

__all__ = [
    "Arch", "ArchError", "StageSE", "PRESETS", "resolve_arch", "build_model", "Cost", "count_cost",
    "load_model", "__version__",
]
