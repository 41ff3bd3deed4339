"""The C kernels of the Transformer ops (kernels/fpops.c), against what they claim.

GELU is torch's float32 formula with erf correctly rounded, so it is checked exactly against
math.erf; exp (inside softmax) is within a few ulps of the exact value; the matmul sums over k
in order; layer norm follows torch's steps. torch is the reference where the claim is
"close to torch".
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from biagent import kernels
from biagent.kernels import _xnor
from biagent.runtimes.custom.ops.transformer import UNARY

pytestmark = pytest.mark.skipif(not kernels.available(), reason="C kernels not built on this machine")
F = np.float32


def _unary(kind: str, x: np.ndarray, value: float = 0.0, threads: int = 1) -> np.ndarray:
    y = np.empty_like(x)
    _xnor.unary(x, UNARY[kind], value, y, threads)
    return y


def test_gelu_is_torchs_float32_steps_with_a_correctly_rounded_erf():
    x = np.concatenate([np.linspace(-9, 9, 60001, dtype=F), F([1e-30, -1e-30, 0.0, -0.0, 4.2e-39])])
    alpha = F(math.sqrt(0.5))
    erf = np.array([math.erf(float(v * alpha)) for v in x], dtype=F)  # correctly rounded to float32
    want = x * F(0.5) * (F(1) + erf)
    got = _unary("gelu", x)
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want))  # -0.0 where torch's float32 steps give it
    assert float(np.abs(got - torch.nn.functional.gelu(torch.from_numpy(x)).numpy()).max()) < 2e-6


def test_gelu_keeps_nan_and_ignores_the_block_edge():
    x = np.random.default_rng(0).standard_normal(131).astype(F)  # two blocks of 64 and a ragged 3
    x[70] = np.nan
    got = _unary("gelu", x, threads=2)
    assert np.isnan(got[70]) and not np.isnan(np.delete(got, 70)).any()
    np.testing.assert_array_equal(got[:64], _unary("gelu", x[:64].copy()))


@pytest.mark.parametrize(("kind", "value"), [("add", 1.5), ("sub", 0.25), ("mul", -3.0), ("div", 7.0)])
def test_arithmetic_with_a_number_is_ieee(kind, value):
    x = np.random.default_rng(1).standard_normal(1000).astype(F)
    v = F(value)
    want = {"add": x + v, "sub": x - v, "mul": x * v, "div": x / v}[kind]
    np.testing.assert_array_equal(_unary(kind, x, value), want)
    np.testing.assert_array_equal(_unary("rsub", x, value), v - x)
    np.testing.assert_array_equal(_unary("rdiv", x, value), v / x)


def test_tanh_forms_are_close_to_torch():
    x = np.linspace(-8, 8, 10001, dtype=F)
    t = torch.from_numpy(x)
    assert float(np.abs(_unary("tanh", x) - torch.tanh(t).numpy()).max()) < 3e-7
    gelu_tanh = torch.nn.functional.gelu(t, approximate="tanh").numpy()
    assert float(np.abs(_unary("gelu_tanh", x) - gelu_tanh).max()) < 2e-6


@pytest.mark.parametrize("dims", [(5, 128, 1), (3, 7, 4), (1, 200, 1), (2, 1, 3)])
def test_softmax_matches_torch_over_the_middle_axis(dims):
    x = (np.random.default_rng(2).standard_normal(dims) * 8).astype(F)
    y = np.empty_like(x)
    _xnor.softmax(x, dims, y)
    ref = torch.softmax(torch.from_numpy(x), 1).numpy()
    assert float((np.abs(y - ref) / ref).max()) < 2e-6
    assert np.allclose(y.sum(1), 1, atol=1e-6)


def test_softmax_exp_is_within_a_few_ulps_and_underflows_to_zero():
    x = np.concatenate([np.linspace(-120, 0, 100001, dtype=F), F([-200, -np.inf])]).reshape(1, -1, 1)
    y = np.empty_like(x)
    _xnor.softmax(x, x.shape, y)  # the max is 0, so y = exp(x) * (1 / sum)
    s = np.exp(x.astype(np.float64)).sum()
    exact = (np.exp(x.astype(np.float64)) * float(F(1) / F(s))).astype(F)
    tiny = exact < 1e-37  # float32 denormals: an absolute, not relative, bound
    rel = np.abs(y.astype(np.float64) - exact) / np.maximum(exact.astype(np.float64), 1e-300)
    assert float(rel[~tiny].max()) < 5e-7
    assert float(np.abs(y[tiny] - exact[tiny]).max()) < 3e-44  # a few denormal steps (1.4e-45 each)
    assert y[0, -2:, 0].tolist() == [0.0, 0.0]
    nan_row = F([[np.nan], [1.0], [2.0]]).reshape(1, 3, 1)
    out = np.empty_like(nan_row)
    _xnor.softmax(nan_row, (1, 3, 1), out)
    assert np.isnan(out).all()  # as torch: a NaN anywhere makes the row NaN


@pytest.mark.parametrize("shape", [(4, 128, 64, 128), (3, 7, 13, 5), (1, 1, 1, 1), (2, 9, 130, 3)])
def test_matmul_sums_over_k_in_order(shape):
    b_, m, k, n = shape
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((b_, m, k)).astype(F), rng.standard_normal((b_, k, n)).astype(F)
    y = np.empty((b_, m, n), F)
    _xnor.matmul(a, b, y, 2)
    want = np.zeros((b_, m, n), F)
    for kk in range(k):  # the documented order: y += a[:, :, kk] * b[:, kk, :], in float32
        want += a[:, :, kk : kk + 1] * b[:, kk : kk + 1, :]
    np.testing.assert_array_equal(y, want)


def test_layer_norm_matches_torch():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((37, 256)) * 3 + 1).astype(F)
    w, b = rng.standard_normal(256).astype(F), rng.standard_normal(256).astype(F)
    y = np.empty_like(x)
    _xnor.layer_norm(x, w, b, 1e-12, y)
    ref = torch.nn.functional.layer_norm(
        torch.from_numpy(x), (256,), torch.from_numpy(w), torch.from_numpy(b), 1e-12
    )
    assert float(np.abs(y - ref.numpy()).max()) < 1e-5
    _xnor.layer_norm(x, None, None, 1e-5, y)
    assert float(np.abs(y - torch.nn.functional.layer_norm(torch.from_numpy(x), (256,)).numpy()).max()) < 1e-5


def test_kernels_refuse_mismatched_buffers():
    x = np.zeros((4, 8), F)
    with pytest.raises(ValueError, match="unary: x and out of one shape"):
        _xnor.unary(x, 0, 0.0, np.zeros((4, 7), F))
    with pytest.raises(ValueError, match="a known kind"):
        _xnor.unary(x, 99, 0.0, np.zeros_like(x))
    with pytest.raises(ValueError, match="softmax: .*element count"):
        _xnor.softmax(x, (4, 9, 1), np.zeros_like(x))
    with pytest.raises(ValueError, match="matmul: a \\(B, m, k\\)"):
        _xnor.matmul(np.zeros((1, 4, 8), F), np.zeros((1, 7, 2), F), np.zeros((1, 4, 2), F))
    with pytest.raises(ValueError, match="layer_norm: "):
        _xnor.layer_norm(x, np.zeros(7, F), None, 1e-5, np.zeros_like(x))


def test_the_fma_ceiling_counts_what_it_did():
    """bench/kernels.py times it to judge the FP stem: it must report its work and refuse nonsense."""
    assert _xnor.fma_ceiling(10) == 10 * 12 * 16
    with pytest.raises(ValueError, match="reps must be >= 1"):
        _xnor.fma_ceiling(0)
