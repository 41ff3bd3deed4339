"""The full-precision conv of the custom runtime: a numpy reference and a C class.

`make_conv` picks one from the KernelSettings. Both cut the output rows into blocks, copy
each block's im2col columns and multiply them with float32 sgemm (numpy's matmul), on
`threads` threads for large convs. `ConvC` builds the columns in C (2-D) and has two
faster kernels where they apply: the direct AVX-512 kernel for few-channel stems (which can
also run the stem's next nodes, see StemPost) and an OpenMP GEMM for mid-size convs.

Threads: the custom runtime owns them. BLAS runs single-threaded in its worker (see
biagent.worker.thread_env), the binary kernels use OpenMP, and big FP convs split their
blocks over a pool. Two spinning pools (OpenBLAS's and OpenMP's) on the same cores
measured resnet18 at 2 threads 3x slower than at 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from biagent.kernels import _xnor

from ..settings import KernelSettings
from .common import compiled, geometry2d, out_spatial, pad_spatial, row_blocks, windows
from .elementwise import MaxPool, channel_affine, clamp

COLS_BYTES = 1 << 20  # FP conv columns per block: copied, then read by sgemm while still in L2
# FP convs this large run their blocks on `threads` threads. Handing blocks to the pool costs
# ~0.1 ms: resnet18's 6.4M-MAC downsample convs took 0.50 ms split over 2 threads, 0.42 on one.
PARALLEL_MACS = 1 << 24
DIRECT_MAX_CHANNELS = 16  # FP convs with at most this many input channels per group use the direct kernel

_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="custom-fp")
    return _POOLS[threads]


@dataclass(frozen=True)
class StemPost:
    """Nodes the engine fused after a direct (stem) conv, in this order, each optional:
    channel_affine, hardtanh, a 2-D max_pool."""

    scale: np.ndarray | None = None
    shift: np.ndarray | None = None
    clamp: tuple[float, float] | None = None
    pool: MaxPool | None = None

    def apply(self, y: np.ndarray, settings: KernelSettings) -> np.ndarray:
        """The same nodes one at a time (the reference the fused kernel must equal)."""
        if self.scale is not None and self.shift is not None:  # an affine has both
            y = channel_affine(y, self.scale, self.shift, settings)
        if self.clamp is not None:
            y = clamp(y, np.float32(self.clamp[0]), np.float32(self.clamp[1]), settings)
        return y if self.pool is None else self.pool(y)


class Conv:
    """conv: zero-padded Conv1d/Conv2d, im2col + float32 matmul, per group.

    The base of both paths: the weights, the geometry and the blocked, threaded GEMM loop;
    a subclass says how a block's columns are built (`_columns`)."""

    direct: np.ndarray | None = None  # the direct stem kernel's weights (ConvC only)
    gemm_w: np.ndarray | None = None  # the OpenMP GEMM's weights (ConvC only)

    def __init__(self, a: dict, t: dict, settings: KernelSettings):
        w = t[a["weight"]]
        self.settings = settings
        self.groups = int(a["groups"])
        self.cout, self.cg = w.shape[0], w.shape[1]
        self.kernel = tuple(w.shape[2:])
        self.w = np.ascontiguousarray(
            w.reshape(self.groups, self.cout // self.groups, self.cg * math.prod(self.kernel))
        )
        self.bias = None if a.get("bias") is None else t[a["bias"]]
        self.stride, self.dilation, self.pads = (
            tuple(a["stride"]),
            tuple(a["dilation"]),
            [list(p) for p in a["pads"]],
        )

    def out_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        return out_spatial(x_shape[2:], self.pads, self.kernel, self.stride, self.dilation)

    def _columns(self, x: np.ndarray, out: tuple[int, ...]) -> Callable[[int, int, int], np.ndarray]:
        """A function (sample, h0, h1) -> the contiguous (groups, K/groups, positions) columns
        of output rows [h0, h1)."""
        raise NotImplementedError

    def _split(self, out: tuple[int, ...]) -> int:
        """How many threads share this conv's blocks (1 below PARALLEL_MACS)."""
        threads = self.settings.threads
        return threads if threads > 1 and self.w.size * math.prod(out) >= PARALLEL_MACS else 1

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n, c = x.shape[:2]
        nd = len(self.kernel)
        out = self.out_shape(x.shape)
        y = np.empty((n, self.groups, self.cout // self.groups, math.prod(out)), np.float32)
        inner = math.prod(out[1:])
        columns = self._columns(x, out)

        def block(b: int, h0: int, h1: int) -> None:
            # contiguous columns: numpy's matmul only calls BLAS sgemm on BLAS-compatible
            # strides and otherwise loops in C (measured ~15x slower on a strided 1x1 conv)
            np.matmul(self.w, columns(b, h0, h1), out=y[b, :, :, h0 * inner : h1 * inner])

        threads = self.settings.threads
        split = self._split(out)
        jobs = [
            (b, h0, h1)
            for b in range(n)
            for h0, h1 in row_blocks(out, 4 * max(c * math.prod(self.kernel), self.cout), COLS_BYTES, split)
        ]
        if split > 1 and len(jobs) > 1:  # numpy drops the GIL in the copy and in sgemm
            # this thread takes its share too: one hand-off to the pool instead of two
            futures = [_pool(threads - 1).submit(block, *job) for i, job in enumerate(jobs) if i % threads]
            for job in jobs[::threads]:
                block(*job)
            for future in futures:
                future.result()
        else:
            for job in jobs:
                block(*job)
        y = y.reshape(n, self.cout, *out)
        if self.bias is not None:
            y += self.bias.reshape((1, self.cout) + (1,) * nd)
        return y


class ConvReference(Conv):
    """numpy: the columns are copied out of a window view of the padded input."""

    def _columns(self, x: np.ndarray, out: tuple[int, ...]) -> Callable[[int, int, int], np.ndarray]:
        nd, kg = len(self.kernel), self.w.shape[2]
        view = windows(
            pad_spatial(x, self.pads, 0.0), self.kernel, self.stride, self.dilation, out
        )  # (N, C, *out, *k)
        view = view.transpose(0, 1, *range(2 + nd, 2 + 2 * nd), *range(2, 2 + nd))  # (N, C, *k, *out)

        def columns(b: int, h0: int, h1: int) -> np.ndarray:
            return np.ascontiguousarray(view[(b,) + (slice(None),) * (1 + nd) + (slice(h0, h1),)]).reshape(
                self.groups, kg, -1
            )

        return columns


class ConvC(ConvReference):
    """The C kernels (kernels/fpops.c): im2col in C for 2-D convs (1-D ones keep the numpy
    columns), and where the CPU has them two more (the direct stem kernel on AVX-512; the GEMM
    on AVX-512 and AArch64, the same floats on both):

    * few input channels (a stem): the direct kernel beats im2col + sgemm (K is tiny and the
      im2col copies the input kh*kw/stride^2 times). Weights as (ceil(C_out/8), C, kh, kw, 8).
    * a 1-D conv (any groups): a direct loop (fp_conv1d), each output's products summed in
      (channel, tap) order, as the whole-graph executor runs it;
    * every other 2-D conv with groups == 1: im2col + our OpenMP GEMM (weights (ceil(C_out/8),
      K, 8)), which uses every thread without a Python hand-off (OpenBLAS would run on one)
      and computes exactly what the whole-graph executor computes (executor.py), so the
      probing instance of the numerics check sees the timed model's floats.
    """

    def __init__(self, a: dict, t: dict, settings: KernelSettings):
        super().__init__(a, t, settings)
        direct_ok = _xnor.conv2d_direct_supported()
        gemm_ok = hasattr(_xnor, "fp_gemm_supported") and _xnor.fp_gemm_supported()
        if len(self.kernel) == 2 and self.groups == 1 and (direct_ok or gemm_ok):
            w = t[a["weight"]]
            padded = np.zeros((-(-self.cout // 8) * 8, self.cg * math.prod(self.kernel)), np.float32)
            padded[: self.cout] = w.reshape(self.cout, -1)  # K in (c, ky, kx) order
            blocks = np.ascontiguousarray(
                padded.reshape(-1, 8, padded.shape[1]).transpose(0, 2, 1)
            )  # (blocks, K, 8)
            if self.cg <= DIRECT_MAX_CHANNELS and math.prod(self.kernel) > 1 and direct_ok:
                self.direct = blocks.reshape(-1, self.cg, *self.kernel, 8)
            elif gemm_ok:  # AArch64 too (plain C with fmaf): a board's image models get the executor
                self.gemm_w = blocks

    def direct_call(self, x: np.ndarray, post: StemPost | None = None) -> np.ndarray:
        """The direct kernel, with the fused next nodes (`post`) in its epilogue."""
        n, out = x.shape[0], self.out_shape(x.shape)
        x = np.ascontiguousarray(x, dtype=np.float32)
        geom = geometry2d(self.kernel, self.stride, self.dilation, self.pads)
        extra: tuple[Any, ...] = ()
        final = out
        if post is not None:
            pool = None
            if post.pool is not None:
                final = post.pool.out_shape(out)
                pool = (post.pool.geometry(), *out)
            extra = ((post.scale, post.shift, post.clamp, pool),)
        y = np.empty((n, self.cout, *final), np.float32)
        for b in range(n):
            _xnor.conv2d_direct(x[b], self.direct, self.bias, y[b], geom, self.settings.threads, *extra)
        return y

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.direct is not None:
            return self.direct_call(x)
        if len(self.kernel) == 1 and hasattr(_xnor, "conv1d"):  # any groups: the executor's loop
            out = self.out_shape(x.shape)
            y = np.empty((x.shape[0], self.cout, *out), np.float32)
            (pl, pr), (s,), (d,) = self.pads[0], self.stride, self.dilation
            w = self.w.reshape(self.cout, self.cg, self.kernel[0])
            _xnor.conv1d(
                np.ascontiguousarray(x, dtype=np.float32),
                w,
                self.bias,
                y,
                (self.groups, s, d, pl, pr),
                self.settings.threads,
            )
            return y
        if self.gemm_w is not None:  # a 2-D conv, groups == 1: the whole-graph executor's arithmetic
            threads = self.settings.threads
            out = self.out_shape(x.shape)
            n = x.shape[0]
            x = np.ascontiguousarray(x, dtype=np.float32)
            geom = geometry2d(self.kernel, self.stride, self.dilation, self.pads)
            y = np.empty((n, self.groups, self.cout // self.groups, math.prod(out)), np.float32)
            cols = np.empty((self.w.shape[2], math.prod(out)), np.float32)
            for b in range(n):
                _xnor.im2col2d(x[b], cols, geom, out[1], 0, out[0], threads)
                _xnor.fp_gemm(self.gemm_w, cols, self.bias, y[b, 0], threads)
            return y.reshape(n, self.cout, *out)  # the bias is added in the GEMM
        return super().__call__(x)

    def _columns(self, x: np.ndarray, out: tuple[int, ...]) -> Callable[[int, int, int], np.ndarray]:
        if len(self.kernel) != 2:
            return super()._columns(x, out)
        c, kg = x.shape[1], self.w.shape[2]
        xc = np.ascontiguousarray(x, dtype=np.float32)
        geom = geometry2d(self.kernel, self.stride, self.dilation, self.pads)

        def columns(b: int, h0: int, h1: int) -> np.ndarray:
            cols = np.empty((c * math.prod(self.kernel), (h1 - h0) * out[1]), np.float32)
            _xnor.im2col2d(xc[b], cols, geom, out[1], h0, h1)
            return cols.reshape(self.groups, kg, -1)

        return columns


def make_conv(a: dict, t: dict, settings: KernelSettings) -> Conv:
    """The conv node's op: the C class where the settings ask for C and it is built."""
    return ConvC(a, t, settings) if compiled(settings) else ConvReference(a, t, settings)
