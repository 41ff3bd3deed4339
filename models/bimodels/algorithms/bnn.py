"""BNN — Courbariaux et al., "Binarized Neural Networks", NeurIPS 2016.

    weights:     sign(w)          gradient: clip-STE, 1[|w| < 1]
    activations: sign(x)          gradient: clip-STE, 1[|x| < 1]

No scaling at all: inference is pure XNOR-popcount.
"""

from __future__ import annotations

from torch import Tensor

from ..ste import sign_clip_ste
from .base import Binarizer, DeployForm, register_algorithm, signed


@register_algorithm
class BNN(Binarizer):
    name = "bnn"
    paper = "Courbariaux et al., Binarized Neural Networks, NeurIPS 2016"

    def binarize_input(self, x: Tensor) -> Tensor:
        return sign_clip_ste(x)

    def binarize_weight(self, w: Tensor) -> Tensor:
        return sign_clip_ste(w)

    def deploy_form(self, weight: Tensor, bias: Tensor | None) -> DeployForm:
        return DeployForm(weight_sign=signed(weight), bias=bias)
