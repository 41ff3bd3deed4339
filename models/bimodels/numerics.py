"""Torch's side of the numerics rule (biagent.numerics): the float64 reference a runtime is
judged against, with its sign decisions, and the ONNX comparison the exporters' tests use.

The reference is the deployed model (`to_deploy`: what every exporter sees) run in float64,
so that torch's own float32 rounding never decides a sign: a runtime is compared with the
exact values, and a decision counts as fragile only where the exact value is near zero.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from biagent.numerics import ALTERNATIVES, ATOL, ROUNDING_MARGIN, RTOL, Alternative, Case, SignReference

from .binarize import to_deploy
from .layers import DeployedBinaryLayer

__all__ = [
    "ROUNDING_MARGIN",
    "NumericsReport",
    "reference_cases",
    "flip_alternatives",
    "alternatives_on_demand",
    "compare_onnx",
]


@dataclass(frozen=True)
class NumericsReport:
    max_abs_error: float
    output_range: float  # max |reference|
    argmax_agreement: float  # fraction of samples whose argmax agrees
    sign_decisions: int  # binary activations compared
    sign_flips: int  # all layers, including flips caused by an earlier one
    first_flip_layer: int  # index (execution order) of the first binary layer that flipped; -1 if none
    first_flip_margin: float  # largest |value| among that layer's flips relative to the layer's
    # largest |value| (0 if none)
    passed: bool  # the numerics rule (biagent.numerics.judge) on every sample
    reason: str = ""

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / max(self.output_range, 1e-12)

    def exact(self) -> bool:
        """The numerics rule: matches to ATOL + RTOL * range, or differs only through a
        first flip at rounding distance from zero (later flips follow from it)."""
        return self.passed

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

    handles = [
        m.register_forward_pre_hook(hook) for m in deployed.modules() if isinstance(m, DeployedBinaryLayer)
    ]
    try:
        with torch.no_grad():
            out = deployed(x)
    finally:
        for h in handles:
            h.remove()
    return out, captured


def _outputs(out) -> list[np.ndarray]:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().numpy().astype(np.float32) for o in outs]


def _x64(x: Tensor) -> Tensor:
    return x.double() if x.is_floating_point() else x


def reference_cases(
    model: nn.Module, inputs: list[Tensor], deployed: nn.Module | None = None, alternatives: bool = False
) -> list[Case]:
    """One check case per input tensor (batch included): float64 outputs, as float32, and the
    sign decisions of every binary layer. deployed: the float64 `to_deploy(model)` to use
    instead (a test's copy with hooks on it). alternatives: also compute each case's
    `flip_alternatives` now (for a board, which has no torch to make them on demand)."""
    deployed = to_deploy(model).double() if deployed is None else deployed
    cases = []
    for x in inputs:
        out, pre = _torch_pre_signs(deployed, _x64(x))
        case = Case([x.numpy()], _outputs(out), [SignReference.of(p.numpy()) for p in pre])
        if alternatives:
            case.alternatives = flip_alternatives(deployed, x, case)
        cases.append(case)
    return cases


def flip_alternatives(
    deployed: nn.Module, x: Tensor, case: Case, limit: int = ALTERNATIVES
) -> list[Alternative]:
    """Torch's float64 output with each of the `limit` decisions nearest zero flipped in turn
    (only fragile ones: within ROUNDING_MARGIN), for runtimes that cannot show their signs.
    deployed: the float64 `to_deploy` model the case was made with."""
    nearest = sorted(
        (float(m), layer, int(p))
        for layer, ref in enumerate(case.signs)
        for p, m in zip(ref.fragile, ref.margins)
    )[:limit]
    return [
        Alternative(layer, position, margin, _outputs(_with_flip(deployed, _x64(x), layer, position)))
        for margin, layer, position in nearest
    ]


def alternatives_on_demand(model: nn.Module, cases: list[Case]):
    """For `biagent.numerics.check(alternatives=...)` on the host: case index -> its
    `flip_alternatives`, made only when a mismatch needs them (the deployed model once)."""
    deployed: list[nn.Module] = []

    def make(index: int) -> list[Alternative]:
        if not deployed:
            deployed.append(to_deploy(model).double())
        case = cases[index]
        return flip_alternatives(deployed[0], torch.from_numpy(case.inputs[0]), case)

    return make


def _with_flip(deployed: nn.Module, x: Tensor, layer: int, position: int):
    """The model's output with the sign decision `position` of binary layer `layer` (in the
    order of `_torch_pre_signs`) taken the other way; every float path sees the true value."""
    state = {"layer": 0}
    replaced: list[tuple[Tensor, Tensor]] = []  # an unshifted value every reader must see flipped

    def hook(module: DeployedBinaryLayer, args: tuple[Tensor, ...]):
        a = args[0]
        if module.input_shift is None:
            for original, new in replaced:
                if original is a:
                    return (new,)
        index, state["layer"] = state["layer"], state["layer"] + 1
        new = a
        if index == layer:
            pre = a if module.input_shift is None else a + module.input_shift
            value = pre.reshape(-1)[position]
            new = a.clone()
            # pre -> -pre; an exact zero (+1 by the sign's rule) moves just below zero
            step = 2 * value if value != 0 else torch.nextafter(value, value.new_tensor(1.0))
            new.view(-1)[position] -= step
        if module.input_shift is None:
            replaced.append((a, new))
        return (new,)

    handles = [
        m.register_forward_pre_hook(hook) for m in deployed.modules() if isinstance(m, DeployedBinaryLayer)
    ]
    try:
        with torch.no_grad():
            return deployed(x)
    finally:
        for h in handles:
            h.remove()


def compare_onnx(
    model: nn.Module, model_bytes: bytes, x: Tensor, atol: float = ATOL, rtol: float = RTOL
) -> NumericsReport:
    """Run the ONNX artifact in onnxruntime on `x` and judge it against the float64 reference,
    with the runtime's sign inputs (biagent.numerics) always read, for the report."""
    from biagent.numerics import first_flip, judge
    from biagent.runtimes.onnxrt import OnnxRuntime

    (case,) = reference_cases(model, [x])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(model_bytes)
        probing = OnnxRuntime().load_probing(path, threads=1)
        probing.set_inputs(case.inputs)
        probing.invoke()
        outs, signs = probing.get_outputs(), probing.sign_inputs()
        probing.close()
    verdict = judge(0, outs, case, atol, rtol, (outs, signs))
    flip = first_flip(signs, case.signs)
    flips = decisions = 0
    if not isinstance(flip, str):
        for v, ref in zip(signs, case.signs):
            decisions += v.size
            flips += int(((np.asarray(v).reshape(-1) >= 0) != ref.decisions()).sum())
    flip = flip if not isinstance(flip, str) else None
    ref_np, out = case.expected[0], outs[0]
    agree = float((ref_np.reshape(len(ref_np), -1).argmax(1) == out.reshape(len(out), -1).argmax(1)).mean())
    return NumericsReport(
        max_abs_error=verdict.error,
        output_range=float(np.abs(ref_np).max()),
        argmax_agreement=agree,
        sign_decisions=decisions,
        sign_flips=flips,
        first_flip_layer=flip.layer if flip else -1,
        first_flip_margin=flip.margin if flip else 0.0,
        passed=verdict.ok,
        reason=verdict.reason,
    )
