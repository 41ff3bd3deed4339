"""Bi-Real Net — Liu et al., "Bi-Real Net: Enhancing the Performance of 1-bit CNNs with
Improved Representational Capability and Advanced Training Algorithm", ECCV 2018.

    weights:     alpha_c * sign(w),  alpha_c = mean |w_c| (detached)   gradient: clip-STE
    activations: sign(x)           gradient: ApproxSign, max(0, 2 - 2|x|)
                 (the derivative of -1 / x^2+2x / -x^2+2x / 1 on (-inf,-1], (-1,0], (0,1], (1,inf))

The architectural half of Bi-Real (a shortcut around every binary conv) is the
`birealnet18` architecture.
"""

from __future__ import annotations

from torch import Tensor

from ..ste import sign_approx, sign_clip_ste
from .base import Binarizer, DeployForm, flat_channel, register_algorithm, signed


@register_algorithm
class BiReal(Binarizer):
    name = "bireal"
    paper = "Liu et al., Bi-Real Net, ECCV 2018"

    def binarize_input(self, x: Tensor) -> Tensor:
        return sign_approx(x)

    def binarize_weight(self, w: Tensor) -> Tensor:
        return self.channel_mean_abs(w) * sign_clip_ste(w)

    def deploy_form(self, weight: Tensor, bias: Tensor | None) -> DeployForm:
        return DeployForm(
            weight_sign=signed(weight), weight_scale=flat_channel(self.channel_mean_abs(weight)), bias=bias
        )
