"""XNOR-Net++ — Bulat & Tzimiropoulos, "XNOR-Net++: Improved Binary Neural Networks",
BMVC 2019.

    weights:     sign(w)          gradient: clip-STE
    activations: sign(x)          gradient: clip-STE
    output:      * Gamma,  Gamma = o[c] * h[y] * v[x], learnable, initialised to 1

o is per output channel; h and v are per output row and column (conv1d: v per position;
linear on (N, T, F): h per token). Gamma is static but spatial, so it is not a per-channel
affine: runtimes must apply it as an extra elementwise multiply.
The output size must be known when the layer is built: `binarize` probes it with an
example input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ste import sign_clip_ste
from .base import Binarizer, DeployForm, LayerGeometry, flat_channel, register_algorithm, signed


class OutputShapeError(ValueError):
    """XNOR-Net++'s Gamma was sized for another output shape."""


@register_algorithm
class XNORPlusPlus(Binarizer):
    name = "xnorpp"
    paper = "Bulat & Tzimiropoulos, XNOR-Net++, BMVC 2019"
    needs_output_shape = True

    def __init__(self, geometry: LayerGeometry):
        super().__init__(geometry)
        self.channel = nn.Parameter(torch.ones(geometry.channel_view(geometry.out_channels)))
        self.spatial = nn.ParameterList()
        self.output_shape: tuple[int, ...] | None = None  # without batch

    def set_output_shape(self, shape: tuple[int, ...]) -> None:
        rest = tuple(shape[1:])
        self.output_shape = rest
        self.spatial = nn.ParameterList()
        # One factor per non-channel axis of the output (h, v for conv2d).
        axes = range(len(rest) - 1) if self.geometry.kind == "linear" else range(1, len(rest))
        for axis in axes:
            view = [1] * len(rest)
            view[axis] = rest[axis]
            self.spatial.append(nn.Parameter(torch.ones(view)))

    def gamma_spatial(self) -> Tensor | None:
        gain = None
        for factor in self.spatial:
            gain = factor if gain is None else gain * factor
        return gain

    def binarize_input(self, x: Tensor) -> Tensor:
        return sign_clip_ste(x)

    def binarize_weight(self, w: Tensor) -> Tensor:
        return sign_clip_ste(w)

    def scale_output(self, y: Tensor, x: Tensor) -> Tensor:
        if self.output_shape is None and getattr(self, "probing", False):
            self.set_output_shape(tuple(y.shape))
        if self.output_shape is None:
            raise OutputShapeError(
                "XNOR-Net++ layer was never sized: call bimodels.binarize(model, 'xnorpp', example_input=...)"
            )
        if tuple(y.shape[1:]) != self.output_shape:
            raise OutputShapeError(
                f"XNOR-Net++ Gamma was sized for outputs {self.output_shape}, got {tuple(y.shape[1:])}; "
                "binarize again with an example input of the deployment size"
            )
        y = y * self.channel
        gain = self.gamma_spatial()
        return y if gain is None else y * gain

    def deploy_form(self, weight: Tensor, bias: Tensor | None) -> DeployForm:
        gain = self.gamma_spatial()
        return DeployForm(
            weight_sign=signed(weight),
            output_scale=flat_channel(self.channel),
            output_gain=None if gain is None else gain.detach().clone(),
            bias=bias,
        )
