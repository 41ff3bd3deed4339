"""Standard-ops ONNX export: the reference numerics for every runtime.

The model is reduced to its deploy form first (constant +/-1 weights, per-channel scales),
so the graph holds only Where/Conv/Mul/Add-style standard ops (opset 17) and onnxruntime
runs it as it is. The batch axis is dynamic.
"""

from __future__ import annotations

import io
import warnings

import onnx
import torch
from torch import Tensor, nn

from ..binarize import binary_layers, to_deploy
from . import ExportError, ExportResult, register_exporter

OPSET = 17


@register_exporter("onnx")
def export_onnx(model: nn.Module, example_input: Tensor) -> ExportResult:
    """The model as standard ONNX; with no binary kernels, its signs and convs run in FP32."""
    layers = len(binary_layers(model))
    extra = {"Where (sign in FP32)": layers, "Conv/Gemm in FP32": layers} if layers else {}
    deployed = to_deploy(model)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                deployed,
                (example_input,),
                buf,  # type: ignore[arg-type]  # torch's annotation omits the file objects it accepts
                opset_version=OPSET,
                dynamo=False,  # the TorchScript exporter: ~100x faster here and constant-folds
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                do_constant_folding=True,
            )
    except Exception as exc:  # torch raises many types; the caller needs one
        raise ExportError(f"ONNX export failed: {exc}") from exc
    data = buf.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data))
    return ExportResult(data, extra)
