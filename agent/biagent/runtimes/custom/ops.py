"""numpy kernels of the custom runtime (the format is specified in bimodels/export/custom.py).

numpy only: this module runs on the boards, which have no torch. Binary layers run as XNOR +
popcount on packed bits:

* activations are sign-binarized (bit 1 where x + input_shift < 0, i.e. the value -1),
* im2col'd in the weights' (C_in/groups, kh, kw) order, one row per output position,
* packed LSB first into little-endian uint64 words (np.packbits(bitorder="little") on the
  bytes, zero tail bits), exactly the layout of the exported `weight_bits`,
* XORed with the weight words and popcounted: dot = K - 2 * popcount.

popcount: numpy < 2 has no np.bitwise_count, so words are counted with the classic SWAR
bit-slicing sequence (pairs, nibbles, bytes; the bytes of up to 31 words are summed before
one horizontal add). On the host this measured ~3.5x faster than an 8-bit lookup table
(`popcount_lut8`, kept as the reference the tests compare against).

Temporaries are bounded by processing rows in chunks (CHUNK_BYTES). numpy itself is
single-threaded here except BLAS (full-precision convs and linears); the agent sets the
thread count through environment variables in its worker process.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from biformats.bits import n_words, pack_rows, unpack_signs

from ...kernels import _xnor

if TYPE_CHECKING:  # fusion imports this module
    from .fusion import StemPost

CHUNK_BYTES = 1 << 25  # ~32 MB per temporary
COLS_BYTES = 1 << 20  # FP conv columns per block: copied, then read by sgemm while still in L2
# FP convs this large run their blocks on `threads` threads. Handing blocks to the pool costs
# ~0.1 ms: resnet18's 6.4M-MAC downsample convs took 0.50 ms split over 2 threads, 0.42 on one.
PARALLEL_MACS = 1 << 24
DIRECT_MAX_CHANNELS = 16  # FP convs with at most this many input channels per group use the direct kernel
LINEAR_PACKED_MIN_OUT = 64  # binary linears this wide run on the channel-packed conv (see BinaryConv)

# The custom runtime owns its threads: BLAS runs single-threaded in its worker (see
# biagent.worker.thread_env), the binary kernels use OpenMP, and big FP convs split their
# blocks over this pool. Two spinning pools (OpenBLAS's and OpenMP's) on the same cores
# measured resnet18 at 2 threads 3x slower than at 1.
_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int):

    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="custom-fp")
    return _POOLS[threads]


POP_CHUNK_ELEMS = 1 << 15  # (rows x C_out) block of the popcount loop: ~256 KB per uint64 array

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_M8 = np.uint64(0x00FF00FF00FF00FF)
_H16 = np.uint64(0x0001000100010001)
_1, _2, _4, _8, _48 = (np.uint64(v) for v in (1, 2, 4, 8, 48))
LUT8 = np.array([bin(i).count("1") for i in range(256)], np.uint8)


# -- bits ------------------------------------------------------------------------------
def popcount_lut8(words: np.ndarray) -> np.ndarray:
    """Popcount of each uint64 (reference implementation: an 8-bit lookup table)."""
    w = np.ascontiguousarray(words.astype("<u8"))
    return LUT8[w.view(np.uint8)].reshape(*w.shape, 8).sum(-1, dtype=np.int64)


# The compiled kernel (biagent.kernels) when built and not disabled; the numpy path below
# stays as the reference the tests compare it with, bit for bit.
# BIAGENT_KERNEL_ISA forces one popcount path of the channel-packed conv (avx512, avx2, neon,
# popcnt, portable) to compare them; "auto" takes the best this CPU runs.
KERNEL: dict[str, Any] = {
    "threads": 1,
    "use_c": os.environ.get("BIAGENT_CUSTOM_KERNELS", "c") != "numpy",
    "isa": os.environ.get("BIAGENT_KERNEL_ISA", "auto"),
}


def set_threads(threads: int) -> None:
    KERNEL["threads"] = max(1, int(threads))


def channel_packed_weights(bits: np.ndarray, cin: int, kernel: tuple[int, ...]) -> np.ndarray:
    """Exported (C_out, W) bits in (c, *k) order -> (ceil(C_out/8), taps * Wc, 8) channel-packed blocks.

    The layout of kernels/bconv.c: 64 input channels per word, words in (ky, kx, cw) order,
    8 output channels interleaved per word index; padded channels and outputs are zero bits.
    """
    cout, k = bits.shape[0], cin * math.prod(kernel)
    neg = unpack_signs(bits, k).reshape(cout, cin, -1) < 0  # (C_out, C_in, taps)
    wc = n_words(cin)
    chan = np.zeros((-(-cout // 8) * 8, neg.shape[2], wc * 64), bool)
    chan[:cout, :, :cin] = neg.transpose(0, 2, 1)
    words = np.packbits(chan, axis=-1, bitorder="little").view("<u8")  # (C_out8, taps, Wc)
    blocks = words.reshape(-1, 8, words.shape[1] * wc)  # (blocks, 8, taps * Wc)
    return np.ascontiguousarray(blocks.transpose(0, 2, 1)).astype(np.uint64)


def xnor_dot(acts: np.ndarray, weights_rows: np.ndarray, weights_t: np.ndarray, k: int) -> np.ndarray:
    """dot[r, o] = K - 2 * popcount(acts[r] ^ weights_rows[o]), compiled when available."""
    if KERNEL["use_c"] and _xnor is not None:
        out = np.empty((acts.shape[0], weights_rows.shape[0]), np.int32)
        _xnor.xnor_gemm(
            np.ascontiguousarray(acts, dtype=np.uint64), weights_rows, out, int(k), KERNEL["threads"]
        )
        return out
    return xnor_popcount_dot(acts, weights_t, k)


def xnor_popcount_dot(acts: np.ndarray, weights_t: np.ndarray, k: int) -> np.ndarray:
    """dot[r, o] = K - 2 * popcount(acts[r] ^ weights[o]) over the words, as int32.

    acts: (rows, W) uint64; weights_t: (W, C_out) uint64 (the packed weights, transposed).
    """
    rows, nw = acts.shape
    cout = weights_t.shape[1]
    out = np.empty((rows, cout), np.int32)
    step = max(1, POP_CHUNK_ELEMS // max(cout, 1))
    for r0 in range(0, rows, step):
        a = acts[r0 : r0 + step]
        n = a.shape[0]
        x, t, acc = (np.empty((n, cout), np.uint64) for _ in range(3))
        total = np.zeros((n, cout), np.uint64)
        for j0 in range(0, nw, 31):  # byte lanes hold <= 8 per word: 31 words fit a byte
            acc.fill(0)
            for j in range(j0, min(nw, j0 + 31)):
                np.bitwise_xor(a[:, j, None], weights_t[j][None, :], out=x)
                np.right_shift(x, _1, out=t)
                t &= _M1
                x -= t
                np.right_shift(x, _2, out=t)
                t &= _M2
                x &= _M2
                x += t
                np.right_shift(x, _4, out=t)
                x += t
                x &= _M4
                acc += x
            np.right_shift(acc, _8, out=t)  # bytes -> 16-bit lanes, then one horizontal add
            t &= _M8
            acc &= _M8
            acc += t
            acc *= _H16
            acc >>= _48
            total += acc
        np.subtract(k, 2 * total.astype(np.int64), out=out[r0 : r0 + step], casting="unsafe")
    return out


# -- windows (shared by convs and pools) -------------------------------------------------
def out_size(size: int, pads: tuple[int, int], k: int, s: int, d: int) -> int:
    return (size + pads[0] + pads[1] - d * (k - 1) - 1) // s + 1


def out_spatial(spatial, pads, kernel, stride, dilation) -> tuple[int, ...]:
    """A window op's output size along each spatial axis."""
    return tuple(out_size(i, p, k, s, d) for i, p, k, s, d in zip(spatial, pads, kernel, stride, dilation))


def geometry2d(kernel, stride, dilation, pads) -> tuple[int, ...]:
    """(kh, kw, sh, sw, dh, dw, pad_top, pad_left): a 2-D window as the C kernels take it."""
    return (*kernel, *stride, *dilation, pads[0][0], pads[1][0])


def pad_spatial(x: np.ndarray, pads: list[list[int]], value) -> np.ndarray:
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


def tap_slices(xp: np.ndarray, kernel, stride, dilation, out):
    """Yield, in row-major tap order, the strided view of every kernel tap: (..., *out)."""
    nd = len(kernel)
    for tap in np.ndindex(*kernel):
        idx = tuple(
            slice(t * d, t * d + s * (o - 1) + 1, s) for t, d, s, o in zip(tap, dilation, stride, out)
        )
        yield xp[(Ellipsis,) + idx] if nd else xp


def _blocks(out: tuple[int, ...], row_bytes: int, limit: int = CHUNK_BYTES, at_least: int = 1):
    """Split the first output axis so one block's temporaries stay under `limit` bytes (and
    into at least `at_least` blocks, one per thread, where there are rows enough)."""
    inner = math.prod(out[1:])
    step = max(1, min(limit // max(1, row_bytes * inner), -(-out[0] // at_least)))
    for h0 in range(0, out[0], step):
        yield h0, min(out[0], h0 + step)


# -- binary layers -----------------------------------------------------------------------
class BinaryConv:
    """binary_conv: conv1d / conv2d / linear on packed bits (see the format docstring)."""

    def __init__(self, a: dict, t: dict):
        self.kind = a["kind"]
        self.k = int(a["k"])
        shape = [int(v) for v in a["weight_shape"]]
        self.cout = shape[0]
        bits = np.ascontiguousarray(t[a["weight_bits"]].astype(np.uint64))
        self.groups = int(a.get("groups", 1) or 1)
        cg = self.cout // self.groups
        self.weights_t = [np.ascontiguousarray(bits[g * cg : (g + 1) * cg].T) for g in range(self.groups)]
        self.weights_rows = [np.ascontiguousarray(bits[g * cg : (g + 1) * cg]) for g in range(self.groups)]
        get = lambda key: None if a.get(key) is None else t[a[key]]  # noqa: E731
        self.shift, self.alpha = get("input_shift"), get("weight_scale")
        self.channel_scale, self.gain, self.bias = get("channel_scale"), get("output_gain"), get("bias")
        self.mean_abs = a.get("input_scale") == "mean_abs"
        self.packed = None  # the channel-packed C conv's weights, set below where it applies
        self.packed_linear = None  # the same for a linear layer, run as a 1x1 conv over its rows
        if self.kind == "linear":
            # XNOR's per-row beta sits between alpha and the channel scale, and a gain broadcasts
            # over rows: those keep the popcount GEMM, so the floats stay the reference's. So do
            # narrow layers: below 64 outputs the transposes cost more than the faster popcounts
            # save (256 -> 40 over 1024 rows: 0.50 ms against 0.33; 512 -> 512 over 300: 0.58 vs 1.27).
            if (
                KERNEL["use_c"]
                and _xnor is not None
                and hasattr(_xnor, "bconv2d")
                and not self.mean_abs
                and self.gain is None
                and self.cout >= LINEAR_PACKED_MIN_OUT
            ):
                self.packed_linear = channel_packed_weights(bits, shape[1], ())
            return
        self.kernel = tuple(shape[2:])
        self.stride, self.dilation = tuple(a["stride"]), tuple(a["dilation"])
        self.pads = [list(p) for p in a["pads"]]
        self.pad_value = int(a["pad_value"])
        self.padded = any(b or e for b, e in self.pads)
        self._corr: dict[tuple[int, ...], np.ndarray] = {}
        self._corr_classes: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        if self.pad_value == 0 and self.padded:
            signs = unpack_signs(bits, self.k).reshape(self.cout, shape[1], -1)
            self.tap_sums = signs.sum(axis=1, dtype=np.int32)  # (C_out, taps)
        # The channel-packed C conv (kernels/bconv.c) when built; groups > 1 keep the GEMM path.
        if KERNEL["use_c"] and _xnor is not None and self.groups == 1 and hasattr(_xnor, "bconv2d"):
            self.packed = channel_packed_weights(bits, shape[1], self.kernel)

    def correction(self, spatial: tuple[int, ...], out: tuple[int, ...]) -> np.ndarray:
        """(P, C_out) int32: sum of weight signs over each output position's padded taps."""
        corr = self._corr.get(spatial)
        if corr is None:
            mask = pad_spatial(np.zeros(spatial, np.int32), self.pads, 1)
            taps = windows(mask, self.kernel, self.stride, self.dilation, out).reshape(math.prod(out), -1)
            corr = self._corr[spatial] = np.ascontiguousarray(taps @ self.tap_sums.T)
        return corr

    def correction_classes(
        self, spatial: tuple[int, ...], out: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The zero-padding correction as (P,) class ids and a (C_out, classes) int32 table.

        A position's correction depends only on which kernel rows and columns fall in the
        padding, so positions group into a few classes; class 0 pads nothing (correction 0).
        """
        found = self._corr_classes.get(spatial)
        if found is not None:
            return found
        kernel = self.kernel if len(self.kernel) == 2 else (1,) + self.kernel
        size2 = spatial if len(spatial) == 2 else (1,) + spatial
        out2 = out if len(out) == 2 else (1,) + out
        pads = self.pads if len(self.pads) == 2 else [[0, 0]] + self.pads
        stride = self.stride if len(self.stride) == 2 else (1,) + self.stride
        dilation = self.dilation if len(self.dilation) == 2 else (1,) + self.dilation
        ids, sets = [], []
        for size, (before, _), k, s, d, o in zip(size2, pads, kernel, stride, dilation, out2):
            keys = [
                frozenset(t for t in range(k) if not before <= i * s + t * d < before + size)
                for i in range(o)
            ]
            uniq: list[frozenset[int]] = [frozenset()] + sorted({key for key in keys if key}, key=sorted)
            ids.append(np.array([uniq.index(key) for key in keys], np.int32))
            sets.append(uniq)
        sums = self.tap_sums.reshape(self.cout, *kernel)
        table = np.zeros((self.cout, len(sets[0]), len(sets[1])), np.int32)
        for i, rows in enumerate(sets[0]):
            for j, cols in enumerate(sets[1]):
                padded = np.zeros(kernel, bool)
                padded[sorted(rows), :] = True
                padded[:, sorted(cols)] = True
                table[:, i, j] = sums[:, padded].sum(axis=1)
        cls = (ids[0][:, None] * len(sets[1]) + ids[1][None, :]).reshape(-1).astype(np.int32)
        found = self._corr_classes[spatial] = (
            np.ascontiguousarray(cls),
            np.ascontiguousarray(table.reshape(self.cout, -1)),
        )
        return found

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.packed is not None and self.kind != "linear":
            return cast(np.ndarray, self._conv_packed(x))  # float in, no bits_for: floats out
        if self.packed_linear is not None:
            return self._linear_packed(x)
        if self.kind == "linear":
            y = self._linear(x)
        else:
            y = self._conv(x)
        if self.alpha is not None:
            y *= self.alpha.reshape(self._cview(y))
        if self.mean_abs:
            axes = -1 if self.kind == "linear" else tuple(range(1, x.ndim))
            y *= np.abs(x).mean(axis=axes, keepdims=True)
        if self.channel_scale is not None:
            y *= self.channel_scale.reshape(self._cview(y))
        if self.gain is not None:
            y *= self.gain
        if self.bias is not None:
            y += self.bias.reshape(self._cview(y))
        return y

    def _cview(self, y: np.ndarray) -> tuple[int, ...]:
        return (self.cout,) if self.kind == "linear" else (1, self.cout) + (1,) * (y.ndim - 2)

    def _signs(self, x: np.ndarray) -> np.ndarray:
        """True where the binarized input is -1: not (x + shift >= 0), so NaN -> -1."""
        if self.shift is None:
            return ~(x >= 0)
        view = (self.shift.size,) if self.kind == "linear" else (1, self.shift.size) + (1,) * (x.ndim - 2)
        return ~((x + self.shift.reshape(view)) >= 0)

    def _linear(self, x: np.ndarray) -> np.ndarray:
        neg = self._signs(x).reshape(-1, x.shape[-1])
        out = np.empty((neg.shape[0], self.cout), np.float32)
        step = max(1, CHUNK_BYTES // max(x.shape[-1], 8 * self.cout))
        for r0 in range(0, neg.shape[0], step):
            out[r0 : r0 + step] = xnor_dot(
                pack_rows(neg[r0 : r0 + step]), self.weights_rows[0], self.weights_t[0], self.k
            )
        return out.reshape(*x.shape[:-1], self.cout)

    def _linear_packed(self, x: np.ndarray) -> np.ndarray:
        """A binary linear through the channel-packed conv: rows become the positions of one
        1x1 conv (one transpose each way), so it gets every popcount path and thread."""
        rows = math.prod(x.shape[:-1])
        planar = np.ascontiguousarray(x.reshape(rows, x.shape[-1]).T, dtype=np.float32).reshape(
            1, x.shape[-1], 1, rows
        )
        y = np.empty((1, self.cout, 1, rows), np.float32)
        _xnor.bconv2d(
            planar,
            self.packed_linear,
            y,
            (1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0),
            self.shift,
            None,
            None,
            self.alpha,
            self.channel_scale,
            self.bias,
            None,
            KERNEL["isa"],
            KERNEL["threads"],
        )
        return np.ascontiguousarray(y.reshape(self.cout, rows).T).reshape(*x.shape[:-1], self.cout)

    def _conv_packed(
        self,
        x: np.ndarray | PackedActs,
        post: PostOps | None = None,
        residual: np.ndarray | None = None,
        bits_for: BinaryConv | None = None,
    ) -> np.ndarray | PackedActs:
        """The whole layer in C: sign + pad + pack, popcount GEMM, correction and epilogue.

        Same float32 sequence as the numpy path (alpha, beta, channel scale, gain, bias), so
        the outputs are identical; a spatial gain is applied here, between scale and bias.
        `post` (only without a gain) are the fused next nodes, run in the same epilogue.
        x may be PackedActs (the previous conv wrote this conv's packed input); with
        `bits_for`, the output is the sign bits that conv would pack from the floats.
        """
        spatial = tuple(x.shape[2:])
        n = x.shape[0]
        out = out_spatial(spatial, self.pads, self.kernel, self.stride, self.dilation)
        two_d = len(spatial) == 2
        kh, kw = self.kernel if two_d else (1, self.kernel[0])
        sh, sw = self.stride if two_d else (1, self.stride[0])
        dh, dw = self.dilation if two_d else (1, self.dilation[0])
        (pt, pb), (pl, pr) = self.pads if two_d else ((0, 0), self.pads[0])
        y = np.empty((n, self.cout, *(out if two_d else (1, out[0]))), np.float32)
        cls, table = (
            self.correction_classes(spatial, out) if self.pad_value == 0 and self.padded else (None, None)
        )
        packed_in = isinstance(x, PackedActs)
        x4 = planes_in = beta = None
        if isinstance(x, PackedActs):
            if self.mean_abs or not two_d:
                raise ValueError("packed input reached a conv that needs the float input")
            planes_in = (x.planes, *x.shape[1:])
        else:
            x4 = np.ascontiguousarray(x if two_d else x[:, :, None, :], dtype=np.float32)
            if self.mean_abs:
                beta = (
                    np.abs(x)
                    .mean(axis=tuple(range(1, x.ndim)), keepdims=True)
                    .reshape(-1)
                    .astype(np.float32, copy=False)
                )
        bias = self.bias if self.gain is None else None
        bits = result = None
        if bits_for is not None:
            (npt, npb), (npl, npr) = bits_for.pads
            planes = np.empty((n, n_words(self.cout), out[0] + npt + npb, out[1] + npl + npr), np.uint64)
            bits = (planes, bits_for.shift, npt, npl, int(bits_for.pad_value == -1))
            result = PackedActs(planes, (n, self.cout, *out))
        extra: tuple[Any, ...] = ()
        if post is not None or packed_in or bits is not None:
            post = post or PostOps()
            if residual is not None:
                if residual.shape != (n, self.cout, *out):  # a broadcasting add: the nodes one by one
                    return post.apply(cast(np.ndarray, self._conv_packed(x)), residual)
                residual = np.ascontiguousarray(residual, dtype=np.float32).reshape(y.shape)
            extra = ((post.scale, post.shift, residual, post.clamp, bits, planes_in),)
        _xnor.bconv2d(
            x4,
            self.packed,
            y,
            (kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, int(self.pad_value == -1)),
            self.shift,
            cls,
            table,
            self.alpha,
            self.channel_scale,
            bias,
            beta,
            KERNEL["isa"],
            KERNEL["threads"],
            *extra,
        )
        if result is not None:
            return result
        y = y.reshape(n, self.cout, *out)
        if self.gain is not None:
            y *= self.gain
            if self.bias is not None:
                y += self.bias.reshape(self._cview(y))
        return y

    def _conv(self, x: np.ndarray) -> np.ndarray:
        n, c = x.shape[:2]
        spatial = tuple(x.shape[2:])
        out = out_spatial(spatial, self.pads, self.kernel, self.stride, self.dilation)
        negp = pad_spatial(self._signs(x), self.pads, self.pad_value == -1)
        view = windows(negp, self.kernel, self.stride, self.dilation, out)  # (N, C, *out, *k)
        nd = len(out)
        view = view.transpose(0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))  # (N, *out, C, *k)
        y = np.empty((n, self.cout, math.prod(out)), np.float32)
        cg_in, cg_out = c // self.groups, self.cout // self.groups
        corr = self.correction(spatial, out) if self.pad_value == 0 and self.padded else None
        inner = math.prod(out[1:])
        fused = nd == 2 and KERNEL["use_c"] and _xnor is not None
        if fused:
            negp = np.ascontiguousarray(negp).view(np.uint8)
        for b in range(n):
            for h0, h1 in _blocks(out, max(self.k, 8 * cg_out)):  # bit patches, then int32 dots
                rows = slice(h0 * inner, h1 * inner)
                for g in range(self.groups):
                    if fused:  # straight from the padded sign map to packed words, in C
                        acts = np.empty(((h1 - h0) * out[1], n_words(self.k)), np.uint64)
                        _xnor.pack_patches2d(
                            negp[b],
                            acts,
                            g * cg_in,
                            cg_in,
                            *self.kernel,
                            *self.stride,
                            *self.dilation,
                            h0,
                            h1,
                            out[1],
                        )
                    else:
                        patch = view[
                            (b, slice(h0, h1), Ellipsis, slice(g * cg_in, (g + 1) * cg_in))
                            + (slice(None),) * nd
                        ]
                        acts = pack_rows(patch.reshape(-1, self.k))
                    dot = xnor_dot(acts, self.weights_rows[g], self.weights_t[g], self.k)
                    if corr is not None:
                        dot -= corr[rows, g * cg_out : (g + 1) * cg_out]
                    y[b, g * cg_out : (g + 1) * cg_out, rows] = dot.T
        return y.reshape(n, self.cout, *out)


@dataclass(frozen=True)
class PostOps:
    """Nodes the engine fused after a binary conv, run in this order in its epilogue, each
    computing what its own node would: channel_affine, add (of the fused node's second
    input), hardtanh. Each is optional."""

    scale: np.ndarray | None = None
    shift: np.ndarray | None = None
    residual: bool = False
    clamp: tuple[float, float] | None = None

    def apply(self, y: np.ndarray, residual: np.ndarray | None) -> np.ndarray:
        """The same nodes one at a time (the reference the fused epilogue must equal)."""
        if self.scale is not None and self.shift is not None:  # an affine has both
            y = channel_affine(y, self.scale, self.shift)
        if self.residual:
            y = np.add(y, cast(np.ndarray, residual))
        if self.clamp is not None:
            y = clamp(y, np.float32(self.clamp[0]), np.float32(self.clamp[1]))
        return y


@dataclass(frozen=True)
class PackedActs:
    """A binary conv's input already binarized and packed by the conv before it: planes
    (N, ceil(C/64), H + pad_t + pad_b, W + pad_l + pad_r) in kernels/bconv.c's layout, with
    that conv's padding; `shape` is the float tensor's (N, C, H, W) it stands for."""

    planes: np.ndarray
    shape: tuple[int, ...]


# -- full precision ------------------------------------------------------------------------
class Conv:
    """conv: zero-padded Conv1d/Conv2d, im2col + float32 matmul, per group."""

    def __init__(self, a: dict, t: dict):
        w = t[a["weight"]]
        self.groups = int(a["groups"])
        self.cout, cg = w.shape[0], w.shape[1]
        self.kernel = tuple(w.shape[2:])
        self.w = np.ascontiguousarray(
            w.reshape(self.groups, self.cout // self.groups, cg * math.prod(self.kernel))
        )
        self.bias = None if a.get("bias") is None else t[a["bias"]]
        self.stride, self.dilation, self.pads = (
            tuple(a["stride"]),
            tuple(a["dilation"]),
            [list(p) for p in a["pads"]],
        )
        # Few input channels (a stem): the direct AVX-512 kernel beats im2col + sgemm (K is tiny and
        # the im2col copies the input kh*kw/stride^2 times). Weights as (ceil(C_out/8), C, kh, kw, 8).
        # Below PARALLEL_MACS at 2+ threads: im2col + our OpenMP GEMM (weights (ceil(C_out/8), K, 8)),
        # which uses every thread without a Python hand-off; OpenBLAS would run on one.
        self.gemm_w = self.direct = None
        if (
            len(self.kernel) == 2
            and self.groups == 1
            and KERNEL["use_c"]
            and _xnor is not None
            and _xnor.conv2d_direct_supported()
        ):
            padded = np.zeros((-(-self.cout // 8) * 8, cg * math.prod(self.kernel)), np.float32)
            padded[: self.cout] = w.reshape(self.cout, -1)  # K in (c, ky, kx) order
            blocks = np.ascontiguousarray(
                padded.reshape(-1, 8, padded.shape[1]).transpose(0, 2, 1)
            )  # (blocks, K, 8)
            if cg <= DIRECT_MAX_CHANNELS:
                self.direct = blocks.reshape(-1, cg, *self.kernel, 8)
            else:
                self.gemm_w = blocks

    def out_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        return out_spatial(x_shape[2:], self.pads, self.kernel, self.stride, self.dilation)

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
            _xnor.conv2d_direct(x[b], self.direct, self.bias, y[b], geom, KERNEL["threads"], *extra)
        return y

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n, c = x.shape[:2]
        nd = len(self.kernel)
        out = self.out_shape(x.shape)
        if self.direct is not None:
            return self.direct_call(x)
        kg = self.w.shape[2]
        y = np.empty((n, self.groups, self.cout // self.groups, math.prod(out)), np.float32)
        inner = math.prod(out[1:])

        fast = nd == 2 and KERNEL["use_c"] and _xnor is not None
        if fast:  # (the window view below costs ~0.08 ms of Python: built only where it is used)
            x = np.ascontiguousarray(x, dtype=np.float32)
            geom = geometry2d(self.kernel, self.stride, self.dilation, self.pads)
        else:
            view = windows(
                pad_spatial(x, self.pads, 0.0), self.kernel, self.stride, self.dilation, out
            )  # (N, C, *out, *k)
            view = view.transpose(0, 1, *range(2 + nd, 2 + 2 * nd), *range(2, 2 + nd))  # (N, C, *k, *out)

        def block(b: int, h0: int, h1: int) -> None:
            # contiguous columns: numpy's matmul only calls BLAS sgemm on BLAS-compatible
            # strides and otherwise loops in C (measured ~15x slower on a strided 1x1 conv)
            if fast:
                cols = np.empty((c * math.prod(self.kernel), (h1 - h0) * out[1]), np.float32)
                _xnor.im2col2d(x[b], cols, geom, out[1], h0, h1)
                cols = cols.reshape(self.groups, kg, -1)
            else:
                cols = np.ascontiguousarray(
                    view[(b,) + (slice(None),) * (1 + nd) + (slice(h0, h1),)]
                ).reshape(self.groups, kg, -1)
            np.matmul(self.w, cols, out=y[b, :, :, h0 * inner : h1 * inner])

        threads = KERNEL["threads"]
        split = threads if threads > 1 and self.w.size * math.prod(out) >= PARALLEL_MACS else 1
        if fast and split == 1 and threads > 1 and self.gemm_w is not None:
            for b in range(n):
                cols = np.empty((self.w.shape[2], math.prod(out)), np.float32)
                _xnor.im2col2d(x[b], cols, geom, out[1], 0, out[0], threads)
                _xnor.fp_gemm(self.gemm_w, cols, self.bias, y[b, 0], threads)
            return y.reshape(n, self.cout, *out)  # the bias is added in the GEMM
        jobs = [
            (b, h0, h1)
            for b in range(n)
            for h0, h1 in _blocks(out, 4 * max(c * math.prod(self.kernel), self.cout), COLS_BYTES, split)
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


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    y = (x.reshape(-1, x.shape[-1]) @ weight.T).reshape(*x.shape[:-1], weight.shape[0])
    if bias is not None:
        y += bias
    return y


def channel_affine(
    x: np.ndarray, scale: np.ndarray, shift: np.ndarray, clamp_to: tuple[float, float] | None = None
) -> np.ndarray:
    """fma(x, scale, shift) per channel (axis 1), one rounding like torch's batch norm;
    then clamped to `clamp_to` when a Hardtanh was fused into it.

    C: fmaf. numpy: the float64 product of two float32 is exact, so a float64 multiply-add
    then one rounding to float32 equals a float32 fma except in (vanishingly rare)
    double-rounding ties.
    """
    if KERNEL["use_c"] and _xnor is not None and x.ndim >= 2:
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.empty_like(x)
        _xnor.channel_fma(
            x,
            scale.astype(np.float32, copy=False),
            shift.astype(np.float32, copy=False),
            y,
            None if clamp_to is None else (float(clamp_to[0]), float(clamp_to[1])),
            KERNEL["threads"],
        )
        return y
    view = (1, scale.size) + (1,) * (x.ndim - 2)
    s, h = scale.astype(np.float64).reshape(view), shift.astype(np.float64).reshape(view)
    y = np.empty(x.shape, np.float32)
    for b in range(x.shape[0]):  # per sample bounds the float64 temporary
        y[b] = x[b] * s[0] + h[0]
    return y if clamp_to is None else clamp(y, np.float32(clamp_to[0]), np.float32(clamp_to[1]))


class ChannelAffine:
    """The channel_affine node (a class, so the engine can fuse a following Hardtanh into it)."""

    def __init__(self, scale: np.ndarray, shift: np.ndarray, clamp_to: tuple[float, float] | None = None):
        self.scale, self.shift, self.clamp_to = scale, shift, clamp_to

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return channel_affine(x, self.scale, self.shift, self.clamp_to)


class Clamp:
    """The hardtanh node."""

    def __init__(self, lo: np.float32, hi: np.float32):
        self.lo, self.hi = lo, hi

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return clamp(x, self.lo, self.hi)


def clamp(x: np.ndarray, lo: np.float32, hi: np.float32) -> np.ndarray:
    """np.clip with NaN kept, without numpy's temporaries when the C kernels are built."""
    if KERNEL["use_c"] and _xnor is not None and x.dtype == np.float32:
        x = np.ascontiguousarray(x)
        y = np.empty_like(x)
        _xnor.clamp(x, float(lo), float(hi), y, KERNEL["threads"])
        return y
    y = np.maximum(x, lo)
    return np.minimum(y, hi, out=y)


def prelu(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    w = weight.reshape((1, weight.size) + (1,) * (x.ndim - 2)) if weight.size > 1 else weight.reshape(())
    return np.where(x > 0, x, w * x).astype(np.float32, copy=False)


class MaxPool:
    """The max_pool node (a class, so the engine can fuse it into a stem conv)."""

    def __init__(self, kernel, stride, pads, dilation):
        self.kernel, self.stride, self.pads, self.dilation = (
            tuple(kernel),
            tuple(stride),
            [list(p) for p in pads],
            tuple(dilation),
        )

    def out_shape(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        return out_spatial(spatial, self.pads, self.kernel, self.stride, self.dilation)

    def geometry(self) -> tuple[int, ...]:
        """(kh, kw, sh, sw, dh, dw, pt, pl), as the C kernels take it (2-D)."""
        return geometry2d(self.kernel, self.stride, self.dilation, self.pads)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return max_pool(x, self.kernel, self.stride, self.pads, self.dilation)


def max_pool(x: np.ndarray, kernel, stride, pads, dilation) -> np.ndarray:
    out = out_spatial(x.shape[2:], pads, kernel, stride, dilation)
    if KERNEL["use_c"] and _xnor is not None and x.ndim == 4:
        pooled = np.empty(x.shape[:2] + out, np.float32)
        _xnor.max_pool2d(
            np.ascontiguousarray(x, dtype=np.float32),
            pooled,
            geometry2d(kernel, stride, dilation, pads),
            KERNEL["threads"],
            KERNEL["isa"],
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
