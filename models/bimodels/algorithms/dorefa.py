"""DoReFa-Net (1-bit weights and activations) — Zhou et al., "DoReFa-Net: Training Low
Bitwidth Convolutional Neural Networks with Low Bitwidth Gradients", 2016.

    weights:     alpha_c * sign(w),  alpha_c = mean |w_c| (detached)   gradient: clip-STE
    activations: sign(x)                                               gradient: clip-STE

alpha_c folds into the following per-channel affine at inference.
"""

from __future__ import annotations

from torch import Tensor

from ..ste import sign_clip_ste
from .base import Binarizer, DeployForm, flat_channel, register_algorithm, signed


@register_algorithm
class DoReFa(Binarizer):
    name = "dorefa"
    paper = "Zhou et al., DoReFa-Net, arXiv:1606.06160"

    def binarize_input(self, x: Tensor) -> Tensor:
        return sign_clip_ste(x)

    def binarize_weight(self, w: Tensor) -> Tensor:
        return self.channel_mean_abs(w) * sign_clip_ste(w)

    def deploy_form(self, weight: Tensor, bias: Tensor | None) -> DeployForm:
        return DeployForm(
            weight_sign=signed(weight), weight_scale=flat_channel(self.channel_mean_abs(weight)), bias=bias
        )
