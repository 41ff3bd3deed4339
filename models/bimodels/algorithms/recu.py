"""ReCU — Xu et al., "ReCU: Reviving the Dead Weights in Binary Neural Networks", ICCV 2021.

    w_hat  = (w - mean_c(w)) / (std_c(w) / (2 sqrt 2))       per output channel
    Q_tau  = -mean(|w_hat|) * ln(2 - 2 tau)                  detached; tau 0.85 -> 0.99
    weights:     sign(clamp(w_hat, -Q_tau, Q_tau))   gradient: identity STE, then through
                                                     clamp and the standardisation
    activations: sign(x)                             gradient: max(0, 2 - 2|x|)
                 (training divides x by its per-sample std first; the sign is the same)
    output:      * alpha_c, learnable per output channel (initialised to mean |w_c|)

tau follows ReCU's exponential schedule tau(e) = A exp(e / E) + B with tau(0) = 0.85 and
tau(E) = 0.99; `set_epoch` drives it. alpha_c folds into the following affine.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..ste import sign_approx, sign_identity
from .base import Binarizer, DeployForm, LayerGeometry, flat_channel, register_algorithm, signed

TAU_MIN, TAU_MAX = 0.85, 0.99
EPS = 1e-5


def tau_schedule(epoch: int, epochs: int) -> float:
    a = (TAU_MAX - TAU_MIN) / (math.e - 1)
    return a * math.exp(epoch / epochs) + (TAU_MIN - a)


@register_algorithm
class ReCU(Binarizer):
    name = "recu"
    paper = "Xu et al., ReCU, ICCV 2021"
    tau: Tensor  # buffer

    def __init__(self, geometry: LayerGeometry):
        super().__init__(geometry)
        self.register_buffer("tau", torch.tensor(TAU_MIN))
        self.scale = nn.Parameter(torch.ones(geometry.channel_view(geometry.out_channels)))

    def init_from_weight(self, w: Tensor) -> None:
        with torch.no_grad():
            self.scale.copy_(self.channel_mean_abs(w).reshape(self.scale.shape))

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.tau.fill_(tau_schedule(epoch, epochs))

    def clamped(self, w: Tensor) -> Tensor:
        dims = tuple(range(1, w.dim()))
        centred = w - w.mean(dim=dims, keepdim=True)
        std = torch.sqrt(centred.var(dim=dims, keepdim=True) + EPS)
        w_hat = centred / (std / (2 * math.sqrt(2)))
        q = (-w_hat.abs().mean() * torch.log(2 - 2 * self.tau)).detach()
        return torch.clamp(w_hat, -q, q)

    def binarize_input(self, x: Tensor) -> Tensor:
        if self.training:
            dims = -1 if self.geometry.kind == "linear" else tuple(range(1, x.dim()))
            x = x / torch.sqrt(x.var(dim=dims, keepdim=True) + EPS)
        return sign_approx(x)

    def binarize_weight(self, w: Tensor) -> Tensor:
        return sign_identity(self.clamped(w))

    def scale_output(self, y: Tensor, x: Tensor) -> Tensor:
        return y * self.scale

    def deploy_form(self, weight: Tensor, bias: Tensor | None) -> DeployForm:
        with torch.no_grad():
            return DeployForm(
                weight_sign=signed(self.clamped(weight)), output_scale=flat_channel(self.scale), bias=bias
            )
