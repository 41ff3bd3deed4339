"""FDA — Xu et al., "Learning Frequency Domain Approximation for Binary Neural Networks",
NeurIPS 2021.

    weights:     alpha_c * (sign(w) + lambda * e_w(w)),  alpha_c = mean |w_c| (detached)
    activations: sign(x) + lambda * e_a(x)
    gradients:   Fourier series of sign for both signs:
                 (4 omega / pi) * sum_{i=0..n} cos((2i+1) omega t), omega = 0.1, 0 where |t| > 1
    e(t) = W2 ReLU(W1 t) + 0.1 sin(t), d -> max(1, d/64) -> d; e_w acts on each weight row
    (d = C_in/groups * kernel), e_a across channels at every position (d = C_in).
    n = 9 + floor(9 epoch / epochs);  lambda = 0.05 (1 + cos(pi (epoch + 1) / epochs)).

lambda reaches 0 at the last epoch, so the deployed layer is alpha_c * sign(w) (*) sign(x).
A layer whose schedule has never been driven is treated as trained (lambda = 0); the
training loop's `set_epoch` hook turns the noise adaptation on.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..ste import sign_fourier
from .base import Binarizer, DeployForm, LayerGeometry, flat_channel, register_algorithm, signed

N_START = 9


class DeployWhileTrainingError(RuntimeError):
    """FDA's noise terms are still on (lambda != 0), so sign-only inference is not exact."""


class NoiseAdaptation(nn.Module):
    """e(t) = W2 ReLU(W1 t) + 0.1 sin(t) along the last axis."""

    def __init__(self, d: int):
        super().__init__()
        hidden = max(1, d // 64)
        self.fc1 = nn.Linear(d, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, d, bias=False)

    def forward(self, t: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(t))) + 0.1 * torch.sin(t)


@register_algorithm
class FDA(Binarizer):
    name = "fda"
    paper = "Xu et al., FDA, NeurIPS 2021"
    n: Tensor  # buffers
    noise_weight: Tensor

    def __init__(self, geometry: LayerGeometry):
        super().__init__(geometry)
        row = math.prod(geometry.weight_shape[1:])
        self.weight_noise = NoiseAdaptation(row)
        self.input_noise = NoiseAdaptation(geometry.in_channels)
        self.register_buffer("n", torch.tensor(N_START))
        self.register_buffer("noise_weight", torch.tensor(0.0))  # lambda

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.n.fill_(N_START + (9 * epoch) // epochs)
        self.noise_weight.fill_(0.05 * (1 + math.cos(math.pi * (epoch + 1) / epochs)))

    def _noise_on(self) -> bool:
        return float(self.noise_weight) != 0.0

    def binarize_input(self, x: Tensor) -> Tensor:
        s = sign_fourier(x, int(self.n))
        if not self._noise_on():
            return s
        if self.geometry.kind == "linear":
            e = self.input_noise(x)
        else:  # across channels at every position
            e = self.input_noise(x.movedim(1, -1)).movedim(-1, 1)
        return s + self.noise_weight * e

    def binarize_weight(self, w: Tensor) -> Tensor:
        b = sign_fourier(w, int(self.n))
        if self._noise_on():
            b = b + self.noise_weight * self.weight_noise(w.reshape(w.shape[0], -1)).reshape(w.shape)
        return self.channel_mean_abs(w) * b

    def deploy_form(self, weight: Tensor, bias: Tensor | None) -> DeployForm:
        if self._noise_on():
            raise DeployWhileTrainingError(
                f"FDA layer still has lambda={float(self.noise_weight):.4g}; finish the schedule "
                "(set_epoch(epochs - 1, epochs)) before exporting"
            )
        return DeployForm(
            weight_sign=signed(weight), weight_scale=flat_channel(self.channel_mean_abs(weight)), bias=bias
        )
