"""Full-precision elementwise ops and pools of the custom runtime (C kernels: kernels/fpops.c).

Each op that has a C kernel takes the model's KernelSettings and runs it when
`compiled(settings)`; the numpy code beside it is the reference it equals (the tests
compare them), and the fallback where nothing was compiled.
"""

from __future__ import annotations

import math

import numpy as np

from biagent.kernels import _xnor

from ..settings import KernelSettings
from .common import compiled, geometry2d, out_spatial, pad_spatial, tap_slices


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    y = (x.reshape(-1, x.shape[-1]) @ weight.T).reshape(*x.shape[:-1], weight.shape[0])
    if bias is not None:
        y += bias
    return y


def channel_affine(
    x: np.ndarray,
    scale: np.ndarray,
    shift: np.ndarray,
    settings: KernelSettings,
    clamp_to: tuple[float, float] | None = None,
) -> np.ndarray:
    """fma(x, scale, shift) per channel (axis 1), one rounding like torch's batch norm;
    then clamped to `clamp_to` when a Hardtanh was fused into it.

    C: fmaf. numpy: the float64 product of two float32 is exact, so a float64 multiply-add
    then one rounding to float32 equals a float32 fma except in (vanishingly rare)
    double-rounding ties.
    """
    if compiled(settings) and x.ndim >= 2:
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.empty_like(x)
        _xnor.channel_fma(
            x,
            scale.astype(np.float32, copy=False),
            shift.astype(np.float32, copy=False),
            y,
            None if clamp_to is None else (float(clamp_to[0]), float(clamp_to[1])),
            settings.threads,
        )
        return y
    view = (1, scale.size) + (1,) * (x.ndim - 2)
    s, h = scale.astype(np.float64).reshape(view), shift.astype(np.float64).reshape(view)
    y = np.empty(x.shape, np.float32)
    for b in range(x.shape[0]):  # per sample bounds the float64 temporary
        y[b] = x[b] * s[0] + h[0]
    return y if clamp_to is None else clamp(y, np.float32(clamp_to[0]), np.float32(clamp_to[1]), settings)


class ChannelAffine:
    """The channel_affine node (a class, so the engine can fuse a following Hardtanh into it)."""

    def __init__(
        self,
        scale: np.ndarray,
        shift: np.ndarray,
        settings: KernelSettings,
        clamp_to: tuple[float, float] | None = None,
    ):
        self.scale, self.shift, self.settings, self.clamp_to = scale, shift, settings, clamp_to

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return channel_affine(x, self.scale, self.shift, self.settings, self.clamp_to)


class Clamp:
    """The hardtanh node."""

    def __init__(self, lo: np.float32, hi: np.float32, settings: KernelSettings):
        self.lo, self.hi, self.settings = lo, hi, settings

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return clamp(x, self.lo, self.hi, self.settings)


def clamp(x: np.ndarray, lo: np.float32, hi: np.float32, settings: KernelSettings) -> np.ndarray:
    """np.clip with NaN kept, without numpy's temporaries when the C kernels are built."""
    if compiled(settings) and x.dtype == np.float32:
        x = np.ascontiguousarray(x)
        y = np.empty_like(x)
        _xnor.clamp(x, float(lo), float(hi), y, settings.threads)
        return y
    y = np.maximum(x, lo)
    return np.minimum(y, hi, out=y)


def prelu(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    w = weight.reshape((1, weight.size) + (1,) * (x.ndim - 2)) if weight.size > 1 else weight.reshape(())
    return np.where(x > 0, x, w * x).astype(np.float32, copy=False)


class MaxPool:
    """The max_pool node (a class, so the engine can fuse it into a stem conv)."""

    def __init__(self, kernel, stride, pads, dilation, settings: KernelSettings):
        self.kernel, self.stride, self.pads, self.dilation = (
            tuple(kernel),
            tuple(stride),
            [list(p) for p in pads],
            tuple(dilation),
        )
        self.settings = settings

    def out_shape(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        return out_spatial(spatial, self.pads, self.kernel, self.stride, self.dilation)

    def geometry(self) -> tuple[int, ...]:
        """(kh, kw, sh, sw, dh, dw, pt, pl), as the C kernels take it (2-D)."""
        return geometry2d(self.kernel, self.stride, self.dilation, self.pads)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return max_pool(x, self.kernel, self.stride, self.pads, self.dilation, self.settings)


def max_pool(x: np.ndarray, kernel, stride, pads, dilation, settings: KernelSettings) -> np.ndarray:
    out = out_spatial(x.shape[2:], pads, kernel, stride, dilation)
    if compiled(settings) and x.ndim == 4:
        pooled = np.empty(x.shape[:2] + out, np.float32)
        _xnor.max_pool2d(
            np.ascontiguousarray(x, dtype=np.float32),
            pooled,
            geometry2d(kernel, stride, dilation, pads),
            settings.threads,
            settings.isa,
        )
        return pooled
    xp = pad_spatial(x, pads, -np.inf)
    y: np.ndarray | None = None
    for view in tap_slices(xp, kernel, stride, dilation, out):
        y = view.copy() if y is None else np.maximum(y, view, out=y)
    assert y is not None  # a kernel has at least one tap
    return y


def avg_pool(x: np.ndarray, kernel, stride, pads, count_include_pad: bool) -> np.ndarray:
    """Window sum in row-major tap order, then one division (torch's CPU kernel order)."""
    ones = (1,) * len(kernel)
    out = out_spatial(x.shape[2:], pads, kernel, stride, ones)
    y = np.zeros(x.shape[:2] + out, np.float32)
    for view in tap_slices(pad_spatial(x, pads, 0.0), kernel, stride, ones, out):
        y += view
    if count_include_pad or not any(b or a for b, a in pads):
        return y / np.float32(math.prod(kernel))
    count = np.zeros(out, np.float32)
    for view in tap_slices(
        pad_spatial(np.ones(x.shape[2:], np.float32), pads, 0.0), kernel, stride, ones, out
    ):
        count += view
    return y / count
