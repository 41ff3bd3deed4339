"""Sign and its gradient estimators.

Sign convention for the whole project: sign(t) = +1 for t >= 0, -1 otherwise (torch.sign
maps 0 to 0, which no binary runtime can represent). Each estimator is a forward `sign`
with its own backward, written as the closed form from docs/algorithms.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def sign(t: Tensor) -> Tensor:
    """+1 where t >= 0, -1 elsewhere, in t's dtype; no gradient (plain ops, exports as Where)."""
    one = torch.ones((), dtype=t.dtype, device=t.device)
    return torch.where(t >= 0, one, -one)


def clip_ste_grad(t: Tensor) -> Tensor:
    """Hardtanh STE: 1 where |t| < 1."""
    return (t.abs() < 1).to(t.dtype)


def approx_sign_grad(t: Tensor) -> Tensor:
    """Bi-Real's ApproxSign: derivative of the piecewise quadratic, max(0, 2 - 2|t|)."""
    return (2 - 2 * t.abs()).clamp_min(0)


def identity_grad(t: Tensor) -> Tensor:
    return torch.ones_like(t)


def fourier_grad(t: Tensor, n: int, omega: float = 0.1) -> Tensor:
    """FDA: (4 omega / pi) * sum_{i=0..n} cos((2i+1) omega t), zero where |t| > 1."""
    i = torch.arange(n + 1, dtype=t.dtype, device=t.device)
    series = torch.cos((2 * i + 1) * omega * t.unsqueeze(-1)).sum(-1) * (4 * omega / math.pi)
    return torch.where(t.abs() > 1, torch.zeros_like(series), series)


class _SignWithSurrogate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor, surrogate: Callable[[Tensor], Tensor]) -> Tensor:
        ctx.save_for_backward(t)
        ctx.surrogate = surrogate
        return sign(t)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (t,) = ctx.saved_tensors
        return grad_out * ctx.surrogate(t), None


def sign_ste(t: Tensor, surrogate: Callable[[Tensor], Tensor]) -> Tensor:
    """sign(t) forward, grad_out * surrogate(t) backward.

    Under ONNX export or when no gradient is needed this is plain `sign`, so exported
    graphs contain only standard ops.
    """
    if not (torch.is_grad_enabled() and t.requires_grad) or torch.onnx.is_in_onnx_export():
        return sign(t)
    return _SignWithSurrogate.apply(t, surrogate)


def sign_clip_ste(t: Tensor) -> Tensor:
    return sign_ste(t, clip_ste_grad)


def sign_approx(t: Tensor) -> Tensor:
    return sign_ste(t, approx_sign_grad)


def sign_identity(t: Tensor) -> Tensor:
    return sign_ste(t, identity_grad)


def sign_fourier(t: Tensor, n: int, omega: float = 0.1) -> Tensor:
    return sign_ste(t, lambda u: fourier_grad(u, n, omega))
