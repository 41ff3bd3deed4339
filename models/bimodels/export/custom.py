"""Export to the "custom" runtime: our own artifact, run as XNOR + popcount on packed bits.

The custom format is the IR stored as it is (`bimodels.export.ir`; container, op list and
bit packing in `biformats.custom`), so every op the tracer emits has a kernel and nothing
is added. The runtime is `biagent.runtimes.custom` (numpy reference and C kernels).
"""

from __future__ import annotations

from torch import Tensor, nn

from . import ExportResult, register_exporter
from .trace import trace_ir


@register_exporter("custom")
def export_custom(model: nn.Module, example_input: Tensor) -> ExportResult:
    """The model as a custom-format artifact; every op has a kernel, so nothing is reported."""
    return ExportResult(trace_ir(model, example_input).to_artifact())


__all__ = ["export_custom"]
