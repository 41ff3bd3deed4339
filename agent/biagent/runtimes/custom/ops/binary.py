"""The binary_conv op (conv1d / conv2d / linear on packed bits): a numpy reference and C classes.

A node's attrs and tensors are parsed once into a `BinaryLayer` (geometry, packed weights,
scales); `make_binary_conv` then picks the class that runs it from the KernelSettings:

* `BinaryConvReference`: numpy. Sign, im2col, pack, XNOR-popcount dot (ops.xnor), the
  zero-padding correction, then the float epilogue (alpha, beta, channel scale, gain, bias).
  The reference every C path must equal bit for bit, and the fallback where nothing is built.
* `BinaryConvGemm`: the same algorithm with its packing and its dot in C (xnor_gemm.c), for
  the layers the channel-packed kernel does not take (grouped convs; XNOR's, gained or
  narrow linears).
* `BinaryConvC`: the whole layer in one C pass (bconv.c): sign + pad + pack, popcount GEMM
  on AVX-512 / AVX2 / NEON / POPCNT / portable code, correction and epilogue, optionally
  with the graph's next nodes fused (PostOps) and its output written as the next conv's
  packed input bits (PackedActs). The float32 sequence is the reference's, so are the floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from biagent.kernels import _xnor
from biformats.bits import n_words, pack_rows, unpack_signs

from ..settings import KernelSettings
from .common import CHUNK_BYTES, compiled, out_spatial, pad_spatial, row_blocks, windows
from .elementwise import channel_affine, clamp
from .xnor import channel_packed_weights, xnor_gemm, xnor_popcount_dot

LINEAR_PACKED_MIN_OUT = 64  # binary linears this wide run on the channel-packed conv (see make_binary_conv)


@dataclass(frozen=True, eq=False)
class BinaryLayer:
    """One binary_conv node, parsed (see the format docstring): what every path shares."""

    kind: str  # conv1d, conv2d or linear
    k: int  # bits per output channel
    cout: int
    cin: int  # input channels per group (features, for a linear)
    groups: int
    bits: np.ndarray  # (C_out, W) uint64: the exported weight_bits
    shift: np.ndarray | None = None  # input_shift, added before the sign
    alpha: np.ndarray | None = None  # weight_scale
    channel_scale: np.ndarray | None = None
    gain: np.ndarray | None = None  # output_gain (broadcasts over the output)
    bias: np.ndarray | None = None
    mean_abs: bool = False  # XNOR's per-sample beta = mean |x|
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    pads: list[list[int]] = field(default_factory=list)
    pad_value: int = 0
    tap_sums: np.ndarray | None = None  # (C_out, taps) weight sign sums: the zero-padding correction's

    @property
    def padded(self) -> bool:
        return any(b or e for b, e in self.pads)

    @classmethod
    def from_attrs(cls, a: dict, t: dict) -> BinaryLayer:
        """From a node's (validated) attrs and its tensors by name."""
        kind = a["kind"]
        k = int(a["k"])
        shape = [int(v) for v in a["weight_shape"]]
        bits = np.ascontiguousarray(t[a["weight_bits"]].astype(np.uint64))
        get = lambda key: None if a.get(key) is None else t[a[key]]  # noqa: E731
        common: dict[str, Any] = dict(
            kind=kind,
            k=k,
            cout=shape[0],
            cin=shape[1],
            groups=int(a.get("groups", 1) or 1),
            bits=bits,
            shift=get("input_shift"),
            alpha=get("weight_scale"),
            channel_scale=get("channel_scale"),
            gain=get("output_gain"),
            bias=get("bias"),
            mean_abs=a.get("input_scale") == "mean_abs",
        )
        if kind == "linear":
            return cls(**common)
        pads = [list(p) for p in a["pads"]]
        pad_value = int(a["pad_value"])
        tap_sums = None
        if pad_value == 0 and any(b or e for b, e in pads):
            signs = unpack_signs(bits, k).reshape(shape[0], shape[1], -1)
            tap_sums = signs.sum(axis=1, dtype=np.int32)  # (C_out, taps)
        return cls(
            **common,
            kernel=tuple(shape[2:]),
            stride=tuple(a["stride"]),
            dilation=tuple(a["dilation"]),
            pads=pads,
            pad_value=pad_value,
            tap_sums=tap_sums,
        )


@dataclass(frozen=True)
class PostOps:
    """Nodes the engine fused after a binary conv, run in this order in its epilogue, each
    computing what its own node would: channel_affine, add (of the fused node's second
    input), hardtanh. Each is optional."""

    scale: np.ndarray | None = None
    shift: np.ndarray | None = None
    residual: bool = False
    clamp: tuple[float, float] | None = None

    def apply(self, y: np.ndarray, residual: np.ndarray | None, settings: KernelSettings) -> np.ndarray:
        """The same nodes one at a time (the reference the fused epilogue must equal)."""
        if self.scale is not None and self.shift is not None:  # an affine has both
            y = channel_affine(y, self.scale, self.shift, settings)
        if self.residual:
            y = np.add(y, cast(np.ndarray, residual))
        if self.clamp is not None:
            y = clamp(y, np.float32(self.clamp[0]), np.float32(self.clamp[1]), settings)
        return y


@dataclass(frozen=True)
class PackedActs:
    """A binary conv's input already binarized and packed by the conv before it: planes
    (N, ceil(C/64), H + pad_t + pad_b, W + pad_l + pad_r) in kernels/bconv.c's layout, with
    that conv's padding; `shape` is the float tensor's (N, C, H, W) it stands for."""

    planes: np.ndarray
    shape: tuple[int, ...]


class BinaryConv:
    """binary_conv: the base of every path. The layer's fields are attributes (read-only
    by convention: a layer is parsed once; build another op to change one)."""

    packed: np.ndarray | None = None  # the channel-packed conv's weights (BinaryConvC, conv kinds)
    packed_linear: np.ndarray | None = None  # the same for a linear run as a 1x1 conv (BinaryConvC)

    def __init__(self, layer: BinaryLayer, settings: KernelSettings):
        self.layer, self.settings = layer, settings
        self.kind, self.k, self.cout, self.groups = layer.kind, layer.k, layer.cout, layer.groups
        self.shift, self.alpha, self.channel_scale = layer.shift, layer.alpha, layer.channel_scale
        self.gain, self.bias, self.mean_abs = layer.gain, layer.bias, layer.mean_abs
        self.kernel, self.stride, self.dilation = layer.kernel, layer.stride, layer.dilation
        self.pads, self.pad_value, self.padded = layer.pads, layer.pad_value, layer.padded
        cg = self.cout // self.groups
        # the exported bits of each group's output channels (views when groups == 1)
        self.weights_rows = [
            np.ascontiguousarray(layer.bits[g * cg : (g + 1) * cg]) for g in range(self.groups)
        ]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _cview(self, y: np.ndarray) -> tuple[int, ...]:
        return (self.cout,) if self.kind == "linear" else (1, self.cout) + (1,) * (y.ndim - 2)


class BinaryConvReference(BinaryConv):
    """numpy: sign, im2col, pack, XNOR-popcount dot per group, correction, float epilogue."""

    def __init__(self, layer: BinaryLayer, settings: KernelSettings):
        super().__init__(layer, settings)
        cg = self.cout // self.groups
        self.weights_t = [
            np.ascontiguousarray(layer.bits[g * cg : (g + 1) * cg].T) for g in range(self.groups)
        ]
        self._corr: dict[tuple[int, ...], np.ndarray] = {}

    def __call__(self, x: np.ndarray) -> np.ndarray:
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

    # -- the two steps a C subclass replaces -----------------------------------------------
    def _dot(self, acts: np.ndarray, g: int) -> np.ndarray:
        """(rows, C_out/groups) int32 dots of packed rows with group g's weights."""
        return xnor_popcount_dot(acts, self.weights_t[g], self.k)

    def _patches(self, negp: np.ndarray, out: tuple[int, ...]) -> Any:
        """What `_pack` reads: here the (N, *out, C, *k) window view of the padded signs."""
        nd = len(out)
        view = windows(negp, self.kernel, self.stride, self.dilation, out)  # (N, C, *out, *k)
        return view.transpose(0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))  # (N, *out, C, *k)

    def _pack(self, patches: Any, b: int, g: int, h0: int, h1: int, out: tuple[int, ...]) -> np.ndarray:
        """Packed patch rows of sample b, group g, output rows [h0, h1)."""
        cg_in = self.layer.cin
        patch = patches[
            (b, slice(h0, h1), Ellipsis, slice(g * cg_in, (g + 1) * cg_in)) + (slice(None),) * len(out)
        ]
        return pack_rows(patch.reshape(-1, self.k))

    # ----------------------------------------------------------------------------------------
    def correction(self, spatial: tuple[int, ...], out: tuple[int, ...]) -> np.ndarray:
        """(P, C_out) int32: sum of weight signs over each output position's padded taps."""
        corr = self._corr.get(spatial)
        if corr is None:
            assert self.layer.tap_sums is not None  # zero-padded layers have them
            mask = pad_spatial(np.zeros(spatial, np.int32), self.pads, 1)
            taps = windows(mask, self.kernel, self.stride, self.dilation, out).reshape(math.prod(out), -1)
            corr = self._corr[spatial] = np.ascontiguousarray(taps @ self.layer.tap_sums.T)
        return corr

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
            out[r0 : r0 + step] = self._dot(pack_rows(neg[r0 : r0 + step]), 0)
        return out.reshape(*x.shape[:-1], self.cout)

    def _conv(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        spatial = tuple(x.shape[2:])
        out = out_spatial(spatial, self.pads, self.kernel, self.stride, self.dilation)
        negp = pad_spatial(self._signs(x), self.pads, self.pad_value == -1)
        patches = self._patches(negp, out)
        y = np.empty((n, self.cout, math.prod(out)), np.float32)
        cg_out = self.cout // self.groups
        corr = self.correction(spatial, out) if self.pad_value == 0 and self.padded else None
        inner = math.prod(out[1:])
        for b in range(n):
            for h0, h1 in row_blocks(out, max(self.k, 8 * cg_out)):  # bit patches, then int32 dots
                rows = slice(h0 * inner, h1 * inner)
                for g in range(self.groups):
                    dot = self._dot(self._pack(patches, b, g, h0, h1, out), g)
                    if corr is not None:
                        dot -= corr[rows, g * cg_out : (g + 1) * cg_out]
                    y[b, g * cg_out : (g + 1) * cg_out, rows] = dot.T
        return y.reshape(n, self.cout, *out)


class BinaryConvGemm(BinaryConvReference):
    """The reference's algorithm with its dot (and, for 2-D convs, its packing: straight from
    the padded sign map to packed words) in C, kernels/xnor_gemm.c; the same integers."""

    def _dot(self, acts: np.ndarray, g: int) -> np.ndarray:
        return xnor_gemm(acts, self.weights_rows[g], self.k, self.settings.threads)

    def _patches(self, negp: np.ndarray, out: tuple[int, ...]) -> Any:
        if len(out) != 2:
            return super()._patches(negp, out)
        return np.ascontiguousarray(negp).view(np.uint8)  # (N, C, Hp, Wp)

    def _pack(self, patches: Any, b: int, g: int, h0: int, h1: int, out: tuple[int, ...]) -> np.ndarray:
        if len(out) != 2:
            return super()._pack(patches, b, g, h0, h1, out)
        cg_in = self.layer.cin
        acts = np.empty(((h1 - h0) * out[1], n_words(self.k)), np.uint64)
        _xnor.pack_patches2d(
            patches[b], acts, g * cg_in, cg_in, *self.kernel, *self.stride, *self.dilation, h0, h1, out[1]
        )
        return acts


class BinaryConvC(BinaryConv):
    """The channel-packed C conv (kernels/bconv.c): the whole layer in one pass, floats or
    the next conv's packed bits out. Conv kinds with groups == 1, and wide linears (run as
    a 1x1 conv over their rows); make_binary_conv says which."""

    def __init__(self, layer: BinaryLayer, settings: KernelSettings):
        super().__init__(layer, settings)
        self._corr_classes: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        if self.kind == "linear":
            self.packed_linear = channel_packed_weights(layer.bits, layer.cin, ())
        else:
            self.packed = channel_packed_weights(layer.bits, layer.cin, self.kernel)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "linear":
            return self._linear_packed(x)
        return cast(np.ndarray, self.run(x))  # float in, no bits_for: floats out

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
        assert self.layer.tap_sums is not None  # zero-padded layers have them
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
        sums = self.layer.tap_sums.reshape(self.cout, *kernel)
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
            self.settings.isa,
            self.settings.threads,
        )
        return np.ascontiguousarray(y.reshape(self.cout, rows).T).reshape(*x.shape[:-1], self.cout)

    def run(
        self,
        x: np.ndarray | PackedActs,
        post: PostOps | None = None,
        residual: np.ndarray | None = None,
        bits_for: BinaryConv | None = None,
    ) -> np.ndarray | PackedActs:
        """The whole conv layer in C: sign + pad + pack, popcount GEMM, correction and epilogue.

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
                    return post.apply(cast(np.ndarray, self.run(x)), residual, self.settings)
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
            self.settings.isa,
            self.settings.threads,
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


def make_binary_conv(layer: BinaryLayer, settings: KernelSettings) -> BinaryConv:
    """The class that runs `layer` under `settings` (the conditions the C kernels need)."""
    if not compiled(settings):
        return BinaryConvReference(layer, settings)
    channel_packed = hasattr(_xnor, "bconv2d")
    if layer.kind == "linear":
        # XNOR's per-row beta sits between alpha and the channel scale, and a gain broadcasts
        # over rows: those keep the popcount GEMM, so the floats stay the reference's. So do
        # narrow layers: below 64 outputs the transposes cost more than the faster popcounts
        # save (256 -> 40 over 1024 rows: 0.50 ms against 0.33; 512 -> 512 over 300: 0.58 vs 1.27).
        if (
            channel_packed
            and not layer.mean_abs
            and layer.gain is None
            and layer.cout >= LINEAR_PACKED_MIN_OUT
        ):
            return BinaryConvC(layer, settings)
    elif channel_packed and layer.groups == 1:  # groups > 1 keep the GEMM path
        return BinaryConvC(layer, settings)
    return BinaryConvGemm(layer, settings)
