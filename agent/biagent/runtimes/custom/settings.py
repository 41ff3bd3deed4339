"""The custom runtime's kernel settings: one frozen value, passed in, never read at import.

The runtime builds it when it loads a model (`KernelSettings.from_env(threads)`: the thread
count the agent's worker asked for, plus two environment switches), the engine hands it to
every op it builds, and each op keeps it. So two models in one process never share a
setting, and a test or a benchmark states the kernels it means instead of patching globals.

Environment (read only by `from_env`):

* BIAGENT_CUSTOM_KERNELS=numpy: the numpy reference kernels even where the C ones are built
  (anything else, or unset: the C kernels where built).
* BIAGENT_CUSTOM_EXECUTOR=python: run a model node by node from Python (the reference path)
  instead of the whole-graph executor (executor.py); anything else, or unset: the executor
  wherever the graph can be planned.
* BIAGENT_KERNEL_ISA: force one popcount path of the channel-packed conv and of the pools
  (avx512, avx2, neon, popcnt, portable) to compare them; "auto" (the default) takes the
  best this CPU runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class KernelSettings:
    """use_c: run the C kernels where they are built; isa: the popcount path ("auto" or a
    forced one); threads: OpenMP threads of the C kernels and the FP conv's thread pool;
    executor: run the whole graph in one C call where it can be planned (needs use_c)."""

    use_c: bool = True
    isa: str = "auto"
    threads: int = 1
    executor: bool = True

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    @classmethod
    def from_env(cls, threads: int = 1, environ: Mapping[str, str] | None = None) -> KernelSettings:
        """The settings a model loads with: `threads` (at least 1) and the environment's switches."""
        env = os.environ if environ is None else environ
        return cls(
            use_c=env.get("BIAGENT_CUSTOM_KERNELS", "c") != "numpy",
            isa=env.get("BIAGENT_KERNEL_ISA", "auto"),
            threads=max(1, int(threads)),
            executor=env.get("BIAGENT_CUSTOM_EXECUTOR", "native") != "python",
        )
