"""The compiled XNOR-popcount GEMM agrees with the numpy reference bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from biagent import kernels
from biagent.runtimes import custom_ops

pytestmark = pytest.mark.skipif(not kernels.available(), reason="C kernels not built on this machine")


@pytest.mark.parametrize("rows, cout, k", [(1, 1, 1), (7, 3, 64), (33, 5, 65), (64, 64, 576), (130, 37, 1000),
                                           (3, 130, 4608)])
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

    assert "compiled XNOR-popcount GEMM" in get_runtime("custom").describe().detail
