"""The compiled XNOR-popcount GEMM agrees with the numpy reference bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from biagent import kernels
from biagent.runtimes.custom import ops as custom_ops

pytestmark = pytest.mark.skipif(not kernels.available(), reason="C kernels not built on this machine")


@pytest.mark.parametrize(
    "rows, cout, k", [(1, 1, 1), (7, 3, 64), (33, 5, 65), (64, 64, 576), (130, 37, 1000), (3, 130, 4608)]
)
@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_matches_reference(rows, cout, k, threads):
    rng = np.random.default_rng(rows * 1000 + cout)
    a_signs = rng.random((rows, k)) < 0.5
    w_signs = rng.random((cout, k)) < 0.5
    acts, weights = custom_ops.pack_rows(a_signs), custom_ops.pack_rows(w_signs)
    out = np.empty((rows, cout), np.int32)
    kernels._xnor.xnor_gemm(acts, weights, out, k, threads)
    ref = custom_ops.xnor_popcount_dot(acts, np.ascontiguousarray(weights.T), k)
    assert np.array_equal(out, ref)
    # and the definition itself: the +/-1 dot product
    pm = lambda s: np.where(s, -1, 1)  # noqa: E731  (bit 1 means -1)
    assert np.array_equal(out, pm(a_signs) @ pm(w_signs).T)


def test_bad_buffers_are_a_value_error_not_a_crash():
    acts = np.zeros((4, 2), np.uint64)
    with pytest.raises(ValueError, match="contiguous"):
        kernels._xnor.xnor_gemm(acts, np.zeros((3, 3), np.uint64), np.zeros((4, 3), np.int32), 64)
    with pytest.raises(ValueError):
        kernels._xnor.xnor_gemm(acts, np.zeros((3, 2), np.uint64), np.zeros((4, 3), np.int64), 64)
    with pytest.raises((ValueError, TypeError)):
        kernels._xnor.xnor_gemm(acts[:, :1][::2], np.zeros((3, 1), np.uint64), np.zeros((2, 3), np.int32), 64)


def test_the_runtime_reports_its_kernels():
    from biagent.runtimes import get_runtime

    detail = get_runtime("custom").describe().detail
    assert "compiled XNOR-popcount kernels" in detail and kernels.info()["bconv"] in detail


@pytest.mark.parametrize(
    "c, cg, c0, k, s, d, size",
    [
        (3, 3, 0, 3, 1, 1, 9),
        (37, 37, 0, 3, 2, 1, 12),
        (130, 65, 65, 1, 1, 1, 7),
        (8, 4, 4, 7, 2, 2, 23),
        (64, 64, 0, 3, 1, 1, 58),
    ],
)
def test_patch_packing_matches_numpy_im2col(c, cg, c0, k, s, d, size):
    rng = np.random.default_rng(c + k)
    neg = rng.random((c, size, size)) < 0.5
    out_hw = (size - d * (k - 1) - 1) // s + 1
    view = custom_ops.windows(neg[None, c0 : c0 + cg], (k, k), (s, s), (d, d), (out_hw, out_hw))
    patches = view[0].transpose(1, 2, 0, 3, 4).reshape(out_hw * out_hw, -1)  # (c, ky, kx) per position
    ref = custom_ops.pack_rows(patches)
    got = np.empty((out_hw * out_hw, custom_ops.n_words(cg * k * k)), np.uint64)
    kernels._xnor.pack_patches2d(neg.view(np.uint8), got, c0, cg, k, k, s, s, d, d, 0, out_hw, out_hw)
    assert np.array_equal(got, ref)


def test_patch_packing_refuses_bad_geometry():
    neg = np.zeros((4, 5, 5), np.uint8)
    with pytest.raises(ValueError, match="geometry"):
        kernels._xnor.pack_patches2d(
            neg, np.zeros((9, 1), np.uint64), 0, 4, 3, 3, 1, 1, 1, 1, 0, 4, 3
        )  # rows off the map
    with pytest.raises(ValueError):
        kernels._xnor.pack_patches2d(
            neg, np.zeros((9, 1), np.uint64), 2, 4, 3, 3, 1, 1, 1, 1, 0, 3, 3
        )  # channels
