"""Sign and its gradient estimators against their closed forms on chosen points."""

from __future__ import annotations

import math

import pytest
import torch

from bimodels import ste

POINTS = torch.tensor([-2.0, -1.0, -0.999, -0.5, -0.0, 0.0, 0.25, 0.5, 0.999, 1.0, 1.5])


def grad_of(fn, t: torch.Tensor) -> torch.Tensor:
    t = t.clone().requires_grad_(True)
    fn(t).sum().backward()
    return t.grad


def test_sign_maps_zero_to_plus_one():
    assert ste.sign(torch.tensor([-0.0, 0.0, -1e-30, 1e-30])).tolist() == [1.0, 1.0, -1.0, 1.0]


@pytest.mark.parametrize(
    "fn", [ste.sign_clip_ste, ste.sign_approx, ste.sign_identity, lambda t: ste.sign_fourier(t, 9)]
)
def test_forward_is_sign_whatever_the_estimator(fn):
    t = POINTS.clone().requires_grad_(True)
    assert torch.equal(fn(t).detach(), torch.where(POINTS >= 0, 1.0, -1.0))


def test_clip_ste_is_hardtanh_derivative():
    expected = [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    assert grad_of(ste.sign_clip_ste, POINTS).tolist() == expected


def test_approx_sign_is_the_bireal_triangle():
    expected = [max(0.0, 2 - 2 * abs(p)) for p in POINTS.tolist()]
    assert torch.allclose(grad_of(ste.sign_approx, POINTS), torch.tensor(expected))
    # The triangle: 2 at 0, 1 at +-0.5, 0 from |t| = 1.
    assert grad_of(ste.sign_approx, torch.tensor([0.0, 0.5, -0.5, 1.0])).tolist() == [2.0, 1.0, 1.0, 0.0]


def test_identity_ste_passes_everything():
    assert grad_of(ste.sign_identity, POINTS).tolist() == [1.0] * len(POINTS)


@pytest.mark.parametrize("n", [9, 13, 17])
def test_fourier_is_the_truncated_series(n):
    omega = 0.1
    expected = []
    for p in POINTS.tolist():
        s = 4 * omega / math.pi * sum(math.cos((2 * i + 1) * omega * p) for i in range(n + 1))
        expected.append(0.0 if abs(p) > 1 else s)
    got = grad_of(lambda t: ste.sign_fourier(t, n), POINTS)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)
    assert got[0] == 0 and got[-1] == 0  # |t| > 1


def test_no_autograd_function_without_grad():
    # Under no_grad (and ONNX export) the sign is plain ops, so exports hold standard ops only.
    with torch.no_grad():
        y = ste.sign_clip_ste(POINTS.clone().requires_grad_(True))
    assert y.grad_fn is None
