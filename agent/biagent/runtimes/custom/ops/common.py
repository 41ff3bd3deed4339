"""What every op of the custom runtime shares: the C-or-numpy switch and window geometry.

`compiled(settings)` is the one test of whether an op runs its C kernel (asked for, and
built). The window helpers view a padded array's trailing spatial axes as (..., *out, *k)
without copying; convs and pools build on them, and `row_blocks` bounds their temporaries.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from biagent.kernels import _xnor

from ..settings import KernelSettings

CHUNK_BYTES = 1 << 25  # ~32 MB per temporary


def compiled(settings: KernelSettings) -> bool:
    """Whether an op runs its C kernel: the settings ask for C and the extension is built."""
    return settings.use_c and _xnor is not None


def out_size(size: int, pads: Sequence[int], k: int, s: int, d: int) -> int:
    return (size + pads[0] + pads[1] - d * (k - 1) - 1) // s + 1


def out_spatial(spatial, pads, kernel, stride, dilation) -> tuple[int, ...]:
    """A window op's output size along each spatial axis."""
    return tuple(out_size(i, p, k, s, d) for i, p, k, s, d in zip(spatial, pads, kernel, stride, dilation))


def geometry2d(kernel, stride, dilation, pads) -> tuple[int, ...]:
    """(kh, kw, sh, sw, dh, dw, pad_top, pad_left): a 2-D window as the C kernels take it."""
    return (*kernel, *stride, *dilation, pads[0][0], pads[1][0])


def pad_spatial(x: np.ndarray, pads: Sequence[Sequence[int]], value) -> np.ndarray:
    if not any(b or a for b, a in pads):
        return x
    width = [(0, 0)] * (x.ndim - len(pads)) + [(b, a) for b, a in pads]
    return np.pad(x, width, mode="constant", constant_values=value)


def windows(xp: np.ndarray, kernel, stride, dilation, out) -> np.ndarray:
    """View (..., *out, *kernel) of a padded array's trailing spatial axes (no copy)."""
    nd = len(kernel)
    eff = tuple(int(d * (k - 1) + 1) for k, d in zip(kernel, dilation))
    axes = tuple(range(xp.ndim - nd, xp.ndim))
    v = np.lib.stride_tricks.sliding_window_view(xp, eff, axis=axes)  # type: ignore[call-overload]  # numpy 1's stub omits tuple axes
    index = (
        (Ellipsis,)
        + tuple(slice(0, o * s, s) for o, s in zip(out, stride))
        + tuple(slice(None, None, d) for d in dilation)
    )
    return v[index]


def tap_slices(xp: np.ndarray, kernel, stride, dilation, out) -> Iterator[np.ndarray]:
    """Yield, in row-major tap order, the strided view of every kernel tap: (..., *out)."""
    nd = len(kernel)
    for tap in np.ndindex(*kernel):
        idx = tuple(
            slice(t * d, t * d + s * (o - 1) + 1, s) for t, d, s, o in zip(tap, dilation, stride, out)
        )
        yield xp[(Ellipsis,) + idx] if nd else xp


def row_blocks(
    out: tuple[int, ...], row_bytes: int, limit: int = CHUNK_BYTES, at_least: int = 1
) -> Iterator[tuple[int, int]]:
    """Split the first output axis so one block's temporaries stay under `limit` bytes (and
    into at least `at_least` blocks, one per thread, where there are rows enough)."""
    inner = math.prod(out[1:])
    step = max(1, min(limit // max(1, row_bytes * inner), -(-out[0] // at_least)))
    for h0 in range(0, out[0], step):
        yield h0, min(out[0], h0 + step)
