"""Models and artifacts for a campaign: built once on the host, shared by every board.

A model is built from a seed (random weights, trained-looking batch norms) or a checkpoint;
each runtime gets the artifact format it loads; numerics cases (inputs and torch eval
outputs) go with every benchmark.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from biagent.numerics import Case
from biagent.runtimes import get_runtime
from biformats import get_format

if TYPE_CHECKING:  # torch is imported only when a model is built
    from torch import nn

FP32 = "fp32"  # the algorithm label of the full-precision baseline
CHECK_CASES = 3


def check_cases(model, seed: int) -> list[Case]:
    """The numerics check inputs every runtime is judged on (biagent.numerics)."""
    import bimodels
    from bimodels.numerics import reference_cases

    return reference_cases(
        model, [bimodels.example_input(model, batch_size=1, seed=seed + 1 + i) for i in range(CHECK_CASES)]
    )


def export_format(runtime: str) -> str:
    """The artifact format the host exports for `runtime`: the first it lists (its registry
    entry in biagent.runtimes), by its canonical name in biformats. UnknownRuntime if none."""
    return get_format(get_runtime(runtime).formats[0]).name


def pad_value_for(runtime: str, algorithm: str) -> float:
    """What a binary conv pads with for `runtime`: its format's (daBNN pads with -1 and
    cannot correct for another value; the others take PyTorch's zero padding)."""
    return 0.0 if algorithm == FP32 else get_format(export_format(runtime)).binary_pad_value


class NoExporter(Exception):
    """The runtime's format has no exporter yet: the combination is unsupported."""


@dataclass(frozen=True)
class Artifact:
    data: bytes
    format: str
    sha256: str


@dataclass
class ModelCase:
    arch: str
    algorithm: str
    model: nn.Module  # eval mode
    checks: list[Case] = field(default_factory=list)  # float64 torch references with sign decisions
    artifacts: dict[str, Artifact] = field(default_factory=dict)


class ArtifactCache:
    def __init__(self, seed: int = 0):
        self.seed = seed
        self._cases: dict[tuple[str, str, float], ModelCase] = {}
        self._lock = threading.Lock()

    def case(self, arch: str, algorithm: str, pad_value: float = 0.0) -> ModelCase:
        """The model (and its torch reference outputs) as binarized with this padding value."""
        with self._lock:
            key = (arch, algorithm, pad_value)
            if key not in self._cases:
                self._cases[key] = self._build(arch, algorithm, pad_value)
            return self._cases[key]

    def _build(self, arch: str, algorithm: str, pad_value: float) -> ModelCase:
        import torch

        import bimodels

        torch.manual_seed(self.seed)
        model = bimodels.trained_like_norms(bimodels.create_model(arch), self.seed)
        if algorithm != FP32:
            model = bimodels.binarize(model, algorithm, pad_value=pad_value)
        model.eval()
        return ModelCase(arch, algorithm, model, check_cases(model, self.seed))

    def add_alternatives(self, case: ModelCase) -> bool:
        """Give the case's checks their single-flip alternatives (biagent.numerics), for a
        board whose runtime could not show its sign inputs; True if any check got some.
        Made on demand: 24 float64 forward passes cost a minute on reactnet."""
        from bimodels.numerics import alternatives_on_demand

        with self._lock:
            missing = [i for i, c in enumerate(case.checks) if c.alternatives is None]
            make = alternatives_on_demand(case.model, case.checks)
            for i in missing:
                case.checks[i].alternatives = make(i)
            return any(case.checks[i].alternatives for i in missing)

    def artifact(self, arch: str, algorithm: str, runtime: str) -> Artifact:
        """The artifact `runtime` loads; ExportError (unsupported op) or NoExporter otherwise."""
        import hashlib

        import bimodels

        from .deployability import export_for

        fmt = export_format(runtime)
        case = self.case(arch, algorithm, pad_value_for(runtime, algorithm))
        with self._lock:
            if fmt not in case.artifacts:
                x = bimodels.example_input(case.model, batch_size=1, seed=self.seed)
                data, _ = export_for(runtime, case.model, x)  # the matrix's export attempt, same errors
                case.artifacts[fmt] = Artifact(data, fmt, hashlib.sha256(data).hexdigest())
            return case.artifacts[fmt]
