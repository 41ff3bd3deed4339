"""The "custom" runtime: our own artifact format run by our own XNOR-popcount kernels.

Artifacts come from `bimodels.export(model, "custom", x)`; the format is specified,
written and read by `biformats.custom`. No torch anywhere here.

* runtime.py: the Runtime and LoadedModel classes (registered as "custom" in
  biagent.runtimes.base.RUNTIMES); `load` builds the model's KernelSettings.
* settings.py: KernelSettings (C or numpy, the popcount ISA, threads), passed in explicitly.
* engine.py: loads and validates an artifact into a Graph of ops.
* fusion.py: graph rewrites that run node chains as one kernel call (the same floats).
* ops/: the ops, each a numpy reference and, where it pays, a C class (biagent.kernels).

Binary convs run as one C pass each (sign, channel packing, popcount GEMM on AVX-512 /
AVX2 / NEON / POPCNT / portable code chosen at run time, epilogue); the numpy kernels stay
as the reference and as the fallback where nothing was compiled.
"""

from .engine import Graph, load_artifact
from .runtime import CustomModel, CustomRuntime, ProbingCustomModel
from .settings import KernelSettings

__all__ = ["CustomModel", "CustomRuntime", "Graph", "KernelSettings", "ProbingCustomModel", "load_artifact"]
