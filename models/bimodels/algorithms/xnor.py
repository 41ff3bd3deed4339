"""XNOR-Net — Rastegari et al., "XNOR-Net: ImageNet Classification Using Binary
Convolutional Neural Networks", ECCV 2016.

    weights:     alpha_c * sign(w),  alpha_c = mean |w_c| (detached)   gradient: clip-STE
    activations: beta * sign(x),     beta = mean |x| per sample over (C, H, W), detached
                                                                       gradient: clip-STE

Linear layers: each weight row is centred by its mean before the sign (alpha from the
centred row), and beta is taken per token over the feature axis.

beta is recomputed from every input at run time: extra FP work no runtime can fold.
Because beta is a per-sample (per-token) scalar, beta*sign(x) (*) W == beta * (sign(x) (*) W);
it is applied on the output, which also keeps padded positions exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ste import sign_clip_ste
from .base import Binarizer, DeployForm, flat_channel, register_algorithm, signed


def mean_abs_scale(x: Tensor, linear: bool) -> Tensor:
    """beta: mean |x| per sample (conv) or per token (linear), detached, kept broadcastable."""
    x = x.detach().abs()
    if linear:
        return x.mean(dim=-1, keepdim=True)
    return x.mean(dim=tuple(range(1, x.dim())), keepdim=True)


@register_algorithm
class XNOR(Binarizer):
    name = "xnor"
    paper = "Rastegari et al., XNOR-Net, ECCV 2016"

    def _centred(self, w: Tensor) -> Tensor:
        if self.geometry.kind == "linear":
            return w - w.mean(dim=-1, keepdim=True)
        return w

    def binarize_input(self, x: Tensor) -> Tensor:
        return sign_clip_ste(x)

    def binarize_weight(self, w: Tensor) -> Tensor:
        wc = self._centred(w)
        return self.channel_mean_abs(wc) * sign_clip_ste(wc)

    def scale_output(self, y: Tensor, x: Tensor) -> Tensor:
        return y * mean_abs_scale(x, self.geometry.kind == "linear")

    def deploy_form(self, weight: Tensor, bias: Tensor | None) -> DeployForm:
        with torch.no_grad():
            wc = self._centred(weight)
            return DeployForm(
                weight_sign=signed(wc),
                weight_scale=flat_channel(self.channel_mean_abs(wc)),
                input_scale="mean_abs",
                bias=bias,
            )
