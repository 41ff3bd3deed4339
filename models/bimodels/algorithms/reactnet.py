"""ReActNet (RSign) — Liu et al., "ReActNet: Towards Precise Binary Neural Network with
Generalized Activation Functions", ECCV 2020.

    weights:     alpha_c * sign(w),  alpha_c = mean |w_c| (detached)   gradient: clip-STE
    activations: sign(x + b_c), b learnable per input channel, init 0
                 gradient: ApproxSign at x + b (so b receives the same gradient as x)

b folds into the preceding bias at inference (a per-channel threshold).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ste import sign_approx, sign_clip_ste
from .base import Binarizer, DeployForm, LayerGeometry, flat_channel, register_algorithm, signed


@register_algorithm
class ReActNet(Binarizer):
    name = "reactnet"
    paper = "Liu et al., ReActNet, ECCV 2020"

    def __init__(self, geometry: LayerGeometry):
        super().__init__(geometry)
        self.threshold = nn.Parameter(torch.zeros(geometry.channel_view(geometry.in_channels)))

    def binarize_input(self, x: Tensor) -> Tensor:
        return sign_approx(x + self.threshold)

    def binarize_weight(self, w: Tensor) -> Tensor:
        return self.channel_mean_abs(w) * sign_clip_ste(w)

    def deploy_form(self, weight: Tensor, bias: Tensor | None) -> DeployForm:
        return DeployForm(
            weight_sign=signed(weight),
            weight_scale=flat_channel(self.channel_mean_abs(weight)),
            input_shift=flat_channel(self.threshold),
            bias=bias,
        )
