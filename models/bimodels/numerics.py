"""Compare a runtime's output with the torch reference, and explain sign flips.

A binarized network amplifies rounding: a pre-sign value within a few ulps of zero can land
on either side in two correct implementations (different summation order in a float conv,
batch norm folded into a conv), and the flipped bit changes every later layer a little.
Measured here on resnet18 with random weights: about 1 model in 10 shows such a flip
between torch and onnxruntime. So a comparison reports, besides the output error, every
sign decision that differs and how far its torch pre-activation was from zero: flips at
rounding distance are a property of binarization; flips with a real margin are a bug.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from .binarize import to_deploy
from .layers import DeployedBinaryLayer

#: A flip whose torch pre-activation is closer to zero than this (relative to the layer's
#: largest pre-activation, about 80 float32 ulps) is rounding, not a bug.
ROUNDING_MARGIN = 1e-5


@dataclass(frozen=True)
class NumericsReport:
    max_abs_error: float
    output_range: float  # max |reference|
    argmax_agreement: float  # fraction of samples whose argmax agrees
    sign_decisions: int  # binary activations compared
    sign_flips: int  # all layers, including flips caused by an earlier one
    first_flip_layer: int  # index (execution order) of the first binary layer that flipped; -1 if none
    first_flip_margin: float  # largest |pre-activation| among that layer's flips, relative to
    # the layer's largest |pre-activation| (0 if none)

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / max(self.output_range, 1e-12)

    def exact(self, atol: float = 1e-4, rtol: float = 1e-5) -> bool:
        """Matches to atol + rtol * output range, or differs only through flips at rounding
        distance from zero (float32 outputs in the hundreds carry errors above 1e-4 by
        rounding alone)."""
        if self.max_abs_error <= atol + rtol * self.output_range:
            return True
        # Flips in later layers are consequences of the first; only the first must be rounding.
        return self.first_flip_layer >= 0 and self.first_flip_margin <= ROUNDING_MARGIN

    def as_dict(self) -> dict:
        return asdict(self) | {"relative_error": self.relative_error}


def _torch_pre_signs(deployed: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    captured: list[Tensor] = []
    seen: list[Tensor] = []  # kept alive, so identity checks cannot hit a recycled id

    def hook(module: DeployedBinaryLayer, args: tuple[Tensor, ...]) -> None:
        if module.input_shift is None:
            # Layers reading the same tensor share one sign in the exported graph.
            if any(t is args[0] for t in seen):
                return
            seen.append(args[0])
            pre = args[0]
        else:
            pre = args[0] + module.input_shift
        captured.append(pre.detach().clone())

    handles = [m.register_forward_pre_hook(hook) for m in deployed.modules() if isinstance(m, DeployedBinaryLayer)]
    try:
        with torch.no_grad():
            out = deployed(x)
    finally:
        for h in handles:
            h.remove()
    return out, captured


def _with_sign_inputs_as_outputs(model_bytes: bytes) -> tuple[bytes, list[str]]:
    """The same graph, also returning the tensor each sign (x >= 0) is taken of."""
    proto = onnx.load_from_string(model_bytes)
    names = [n.input[0] for n in proto.graph.node if n.op_type == "GreaterOrEqual"]
    existing = {o.name for o in proto.graph.output}
    for name in names:
        if name not in existing:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
    return proto.SerializeToString(), names


def compare_onnx(model: nn.Module, model_bytes: bytes, x: Tensor) -> NumericsReport:
    """Run the ONNX artifact in onnxruntime on `x` and compare with `model`'s eval output."""
    import onnxruntime as ort

    deployed = to_deploy(model)
    ref, torch_pre = _torch_pre_signs(deployed, x)
    with torch.no_grad():
        ref = model.eval()(x)  # the trained model itself is the reference
    augmented, names = _with_sign_inputs_as_outputs(model_bytes)
    session = ort.InferenceSession(augmented, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    out, ort_pre = outputs[0], outputs[1:]
    flips, decisions, first, margin = 0, 0, -1, 0.0
    if len(ort_pre) == len(torch_pre):  # same number of signs, in the same topological order
        for index, (t_pre, o_pre) in enumerate(zip(torch_pre, ort_pre)):
            t = t_pre.numpy()
            if t.shape != o_pre.shape:
                continue
            differ = (t >= 0) != (o_pre >= 0)
            decisions += t.size
            flips += int(differ.sum())
            if differ.any() and first < 0:
                scale = max(float(np.abs(t).max()), 1e-30)
                first, margin = index, float(np.abs(t[differ]).max()) / scale
    ref_np = ref.numpy()
    agree = float((ref_np.reshape(len(ref_np), -1).argmax(1) == out.reshape(len(out), -1).argmax(1)).mean())
    return NumericsReport(
        max_abs_error=float(np.abs(out - ref_np).max()),
        output_range=float(np.abs(ref_np).max()),
        argmax_agreement=agree,
        sign_decisions=decisions,
        sign_flips=flips,
        first_flip_layer=first,
        first_flip_margin=margin,
    )
