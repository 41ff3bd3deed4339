"""Export to daBNN (JDAI-CV/dabnn): its FlatBuffers ``.dab`` model, written directly.

The model is traced with `trace_ir(..., runtime="daBNN")` (the op list of
`bimodels.export.custom`) and lowered op by op to daBNN layers. The file's tables, its
writer and its reader are `biformats.dabnn`, shared with the agent's runtime. The facts
about the format and the runtime this relies on are in docs/dabnn-format.md.

Lowering (x = an IR value; daBNN activations are float32 NHWC with N = 1)
-----------------------------------------------------------------------
* input ``[1, C, H, W]`` -> ``Input`` ``[1, H, W, C]`` named ``input``; batch 1 only.
* ``conv`` -> ``FpConv2D``: weight OHWI ``[O, KH, KW, I]``, 1-D bias (zeros when the conv has
  none), pads ``[p, p, p, p]``, strides ``[s, s]``, dilations ``[1, 1]``.
* ``binary_conv`` (conv2d) -> ``BinConv2D`` then two ``Affine`` layers. The BinConv2D weight is a
  Bit tensor of logical shape ``[O, KH, KW, I]``: each filter flattened in (kh, kw, c) order
  (the IR packs (c, kh, kw): reordered here), bit 1 = +1, LSB first in 64-bit words; layout
  "unaligned" (K/64 words a filter) only for I == 64 with a 3x3 kernel and equal strides,
  otherwise "aligned" (each filter zero-padded to a multiple of 128 bits). BinConv2D returns
  the number of mismatching bits m, so the dot product is K - 2m (K = KH*KW*I): the first
  Affine (``a = -2``, ``b = K``) makes that integer exactly, the second carries ``a = s*g``,
  ``b = t + s*bias`` (one fused ``a*m + b`` cancels a large b against a*m, and its rounding
  flips signs the next binary layer takes near zero), where g is the product of the layer's
  per-channel factors (weight_scale alpha, channel_scale, and output_gain when it is
  per-channel) and (s, t) the following ``channel_affine`` (batch norm) when only this conv
  reads the conv's output, else (1, 0).
* ``channel_affine`` -> ``Affine``; ``relu`` -> ``Relu``; ``prelu`` -> ``PRelu``;
  ``add`` -> ``Add`` (input1 is the operand overwritten: the new branch, input2 the
  shortcut); ``concat`` of exactly two equal-channel maps on the channel axis -> ``Concat``
  (axis 3); ``max_pool`` -> ``MaxPool``; ``avg_pool`` (no padding) -> ``AvePool``;
  ``reduce_mean`` / ``reduce_max`` over H, W -> ``AvePool`` / ``MaxPool`` with kernel
  ``[H, W]``, stride ``[1, 1]``, pads 0 (daBNN's "global" form hangs, so it is never written).
* ``flatten`` and ``identity`` are aliases. ``linear`` -> ``FpConv2D`` whose kernel covers the
  map it reads: ``[O, 1, 1, C]`` after global pooling, ``[O, H, W, C]`` (reordered from
  PyTorch's C*H*W flatten order) after flattening an H x W map.
* The model ends at its logits (no Softmax: daBNN cannot run one).

Semantics and refusals (an ExportError names the operator and the node)
-----------------------------------------------------------------------
* daBNN binarizes ``x > 0 -> +1``, so an exact 0 becomes -1 where this project's sign gives +1
  (``sign(0) = +1``). Results agree on every input without exact zeros reaching a binary
  conv. A binary conv reading a ReLU's output (whose zeros are the common case) is refused.
* daBNN pads binary-conv inputs with -1. A binary conv with padding must be binarized with
  ``pad_value=-1`` (``bimodels.binarize(model, algo, pad_value=-1)``): exact. Zero padding
  (the reference) and +1 padding are refused.
* No daBNN layer for: Hardtanh (the binarized ResNets/VGG's activation; dropped where binary
  convs alone read it, since sign(hardtanh(x)) = sign(x); otherwise refused, and the
  compatibility matrix records those models as unsupported on daBNN), XNOR-Net's activation
  scale beta (``input_scale``), XNOR-Net++'s spatial gain Gamma (``output_gain`` varying over
  H, W), 1-D convs, grouped or dilated convs, binary linears, non-square maps/kernels/
  strides/pads, batch > 1.
* In-place layers (Affine, Relu, PRelu, Add into input1) overwrite their input's buffer. The
  layers are scheduled so that every other reader of that value runs first; when that is
  impossible (e.g. ReActNet's threshold, written as an in-place ``Affine(a=1, b=shift)``, on
  a tensor its shortcut also reads), or the value is the model input or output, the export
  is refused (no copies are inserted).
* Runtime limits that would assert, compute wrong values or corrupt memory (see
  docs/dabnn-format.md): the input and the tensors read by Affine/Add/pools need rows of
  W*C % 4 == 0 floats; a ReLU needs a multiple of 4 values; 2x2/3x3 max pools need C % 4 == 0;
  64-channel binary convs need an even map width; the aarch64 3x3 direct kernel's channel
  asserts; the BGEMM buffer size; the im2col size.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
from torch import Tensor, nn

from biformats.bits import pack_dabnn_filters, unpack_sign_rows
from biformats.dabnn import (
    LAYER_TYPES,
    PARAM_FIELDS,
    VERSION,
    DabLayer,
    DabTensor,
    read_dab,
    write_dab,
)

from ..layers import DeployedBinaryLayer, is_binary
from . import ExportError, ExportResult, register_exporter
from .custom import trace_ir

RUNTIME = "daBNN"

#: names daBNN derives from layer outputs / weights for its own buffers
_RESERVED_PREFIXES = ("binaized_for_", "pad_for_", "col_for_", "trans_")
_IN_PLACE = {"Affine": "input", "Relu": "input", "PRelu": "input", "Add": "input1"}


# -- lowering --------------------------------------------------------------------------------
#: refusals that a refused node upstream may have caused (its placeholder has a guessed shape)
_SECONDARY = {
    "shape",
    "broadcast",
    "concat",
    "align",
    "nonsquare-map",
    "flatten",
    "linear",
    "pool",
    "reduce",
    "limits",
}


class _Refuse(Exception):
    """One thing daBNN cannot express (collected per kind, then raised as one ExportError)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@dataclass
class _Val:
    """An IR value as daBNN holds it."""

    dab: str  # the daBNN blob name
    shape: tuple[int, ...]  # the torch shape (batch 1)
    root: str  # the IR value whose buffer this is an alias of (flatten / identity)
    flat_of: tuple[int, int, int] | None = None  # (C, H, W) when a flatten of an H x W map, H*W > 1
    relu_of: str | None = None  # the ReLU node whose zeros this value may carry

    @property
    def hwc(self) -> tuple[int, int, int]:
        if self.flat_of is not None:
            c, h, w = self.flat_of
            return h, w, c
        if len(self.shape) == 4:
            return self.shape[2], self.shape[3], self.shape[1]
        return 1, 1, self.shape[1]


@dataclass
class _Group:
    """The daBNN layers of one IR node (or a binary conv fused with its batch norm)."""

    node: str
    reads: list[str]
    writes: str
    layers: list[DabLayer]
    clobbers: str | None = None  # IR value whose buffer the first in-place layer overwrites
    clobber_op: str = ""
    index: int = 0
    deps: set[int] = field(default_factory=set)


def _square(node: str, what: str, pair: list[int] | tuple[int, ...]) -> int:
    if len(pair) != 2 or pair[0] != pair[1]:
        raise _Refuse(
            f"nonsquare-{what}",
            f"a non-square {what} {list(pair)} (node {node}): daBNN swaps H and W internally, "
            "so only square maps, kernels, strides and symmetric pads are exact",
        )
    return int(pair[0])


def _sym_pad(node: str, pads: list[list[int]]) -> int:
    flat = [int(p) for pair in pads for p in pair]
    if len(pads) != 2 or len(set(flat)) != 1:
        raise _Refuse(
            "nonsquare-pads",
            f"asymmetric padding {pads} (node {node}): daBNN supports only one pad value on every side",
        )
    return flat[0]


class _Lowering:
    def __init__(self, ir, algos: dict[str, str] | None = None):
        self.ir = ir
        self.algos = algos or {}  # IR node -> the algorithm that binarized it (for messages)
        self.vals: dict[str, _Val] = {}
        self.groups: list[_Group] = []
        self.inits: list[DabTensor] = []
        self.ir_names: set[str] = set()  # IR value names: each keeps its own name in the .dab
        self.used: set[str] = set()  # daBNN names given out
        self.broken: set[str] = set()  # outputs of refused nodes (placeholders)
        self.problems: dict[str, list[str]] = {}  # kind -> messages, in IR order
        self.readers: dict[str, list[str]] = {}  # IR value -> IR nodes reading it
        self.skip: set[str] = set()  # IR nodes folded into an earlier group
        self.extra: Counter[str] = (
            Counter()
        )  # what had to be composed of several daBNN layers -> how many times
        for n in ir.nodes:
            for v in n["inputs"]:
                self.readers.setdefault(v, []).append(n["name"])
            self.ir_names.update(n["outputs"])
        self.ir_names.add(ir.inputs[0]["name"])
        self.output = ir.outputs[0]

    # names and tensors ------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        """A new daBNN name: unused, no IR value's, none of daBNN's internal buffer names."""
        name = f"v_{base}" if base.startswith(_RESERVED_PREFIXES) else base
        stem, i = name, 1
        while name in self.used or name in self.ir_names:
            name, i = f"{stem}_{i}", i + 1
        self.used.add(name)
        return name

    def own(self, ir_name: str) -> str:
        """The daBNN name of an IR value: its own name unless daBNN reserves it."""
        if ir_name.startswith(_RESERVED_PREFIXES) or ir_name in self.used:
            return self.fresh(f"v_{ir_name}")
        self.used.add(ir_name)
        return ir_name

    def const(self, base: str, arr: np.ndarray, shape: list[int] | None = None) -> str:
        arr = np.ascontiguousarray(arr, dtype="<f4")
        shape = list(arr.shape) if shape is None else shape
        if len(shape) not in (1, 4):  # daBNN silently drops 2-D and 3-D float tensors
            raise AssertionError(f"float initializer {base} must be 1-D or 4-D, got {shape}")
        name = self.fresh(base)
        self.inits.append(DabTensor(name, shape, float32_data=arr.reshape(-1)))
        return name

    @overload
    def tensor(self, key: str) -> np.ndarray: ...

    @overload
    def tensor(self, key: None) -> None: ...

    def tensor(self, key: str | None) -> np.ndarray | None:
        return None if key is None else np.asarray(self.ir.tensors[key])

    # values ------------------------------------------------------------------------------
    def val(self, name: str, node: str, *, flat_ok: bool = False) -> _Val:
        v = self.vals[name]
        if v.flat_of is not None and not flat_ok:
            c, h, w = v.flat_of
            raise _Refuse(
                "flatten",
                f"an op other than linear on a flattened {h}x{w} map (node {node}): daBNN keeps "
                "maps NHWC, so only a linear (a conv covering the map) may read a flattened map",
            )
        return v

    def define(self, name: str, shape: tuple[int, ...], dab: str | None = None, **kw: Any) -> _Val:
        v = _Val(dab or self.own(name), tuple(int(s) for s in shape), name, **kw)
        self.vals[name] = v
        return v

    def aligned_rows(self, v: _Val, node: str, layer: str) -> None:
        h, w, c = v.hwc
        if (w * c) % 4 and w * c != 1:
            raise _Refuse(
                "align",
                f"{layer} reading a map of width {w} with {c} channels (node {node}): daBNN asserts "
                "'Not align' unless width * channels is a multiple of 4",
            )

    def group(
        self,
        node: str,
        reads: list[str],
        writes: str,
        layers: list[DabLayer],
        clobbers: str | None = None,
        clobber_op: str = "",
    ) -> None:
        self.groups.append(_Group(node, reads, writes, layers, clobbers, clobber_op))

    # the walk ------------------------------------------------------------------------------
    def run(self) -> tuple[list[DabLayer], list[DabTensor], list[int]]:
        spec = self.ir.inputs[0]
        shape = spec["shape"]
        if len(shape) != 4:
            raise ExportError(
                f"{RUNTIME} takes one image input [1, C, H, W] (NCHW, fed as NHWC); this model's input "
                f"has shape {shape}"
            )
        if shape[0] != 1:
            raise ExportError(
                f"{RUNTIME} runs batch 1 only (its input is [1, H, W, C] and it has no batch axis); "
                f"the example input has batch {shape[0]}: export with a batch-1 example input"
            )
        _, c, h, w = shape
        if h != w:
            raise ExportError(
                f"{RUNTIME} needs a square input map (daBNN swaps H and W internally); the input is {h}x{w}"
            )
        if (w * c) % 4:
            raise ExportError(
                f"{RUNTIME} pads input rows of width*channels ({w}*{c}) to a multiple of 4 floats; "
                "the caller's NHWC buffer would be misread"
            )
        self.input_dab = self.define(spec["name"], tuple(shape)).dab
        for i, n in enumerate(self.ir.nodes):
            if n["name"] in self.skip:
                continue
            if any(v in self.broken for v in n["inputs"]):  # downstream of a refused node
                self.broken.update(n["outputs"])
            try:
                getattr(self, f"op_{n['op']}", self.op_unknown)(n, i)
            except _Refuse as exc:
                secondary = exc.key in _SECONDARY and any(v in self.broken for v in n["inputs"])
                if not secondary:
                    self.problems.setdefault(exc.key, []).append(str(exc))
                first = self.vals.get(n["inputs"][0]) if n["inputs"] else None
                for out in n["outputs"]:  # later nodes read it as if it existed
                    self.broken.add(out)
                    if out not in self.vals:
                        self.vals[out] = _Val(out, first.shape if first else (1, 1, 1, 1), out)
        self.raise_problems()
        layers = self.schedule()
        return layers, self.inits, [1, h, w, c]

    def raise_problems(self) -> None:
        if not self.problems:
            return
        parts = []
        for msgs in self.problems.values():
            more = f" (and {len(msgs) - 1} more like it)" if len(msgs) > 1 else ""
            parts.append(msgs[0] + more)
        also = f"; also: {'; '.join(parts[1:])}" if len(parts) > 1 else ""
        raise ExportError(f"{RUNTIME} cannot express {parts[0]}{also}")

    def op_unknown(self, n: dict, i: int) -> None:
        raise _Refuse(f"op-{n['op']}", f"the op {n['op']} (node {n['name']}): daBNN has no such layer")

    # aliases -----------------------------------------------------------------------------
    def alias(
        self, n: dict, src: _Val, shape: tuple[int, ...], flat_of: tuple[int, int, int] | None = None
    ) -> None:
        out = n["outputs"][0]
        self.vals[out] = _Val(src.dab, tuple(shape), src.root, flat_of, src.relu_of)

    def op_identity(self, n: dict, i: int) -> None:
        src = self.val(n["inputs"][0], n["name"], flat_ok=True)
        self.alias(n, src, src.shape, src.flat_of)

    def op_flatten(self, n: dict, i: int) -> None:
        src = self.val(n["inputs"][0], n["name"])
        start, end = n["attrs"]["start"], n["attrs"]["end"]
        rank = len(src.shape)
        if start == end:
            return self.alias(n, src, src.shape)
        if rank != 4 or start != 1 or end != 3:
            raise _Refuse(
                "flatten",
                f"flatten of axes {start}..{end} of a rank-{rank} tensor (node {n['name']}): only "
                "flattening a whole [1, C, H, W] map is a daBNN no-op",
            )
        _, c, h, w = src.shape
        self.alias(n, src, (1, c * h * w), None if h * w == 1 else (c, h, w))

    # full-precision layers -------------------------------------------------------------------
    def op_conv(self, n: dict, i: int) -> None:
        a, node = n["attrs"], n["name"]
        weight = self.tensor(a["weight"])
        if weight.ndim != 4:
            raise _Refuse(
                "conv1d", f"a {weight.ndim - 2}-D convolution (node {node}): daBNN runs 2-D image convs only"
            )
        x = self.val(n["inputs"][0], node)
        if a["groups"] != 1:
            raise _Refuse(
                "groups", f"a grouped convolution (groups={a['groups']}, node {node}): daBNN has no groups"
            )
        if list(a["dilation"]) != [1, 1]:
            raise _Refuse(
                "dilation",
                f"a dilated convolution (dilation={a['dilation']}, node {node}): daBNN's FpConv2D "
                "ignores dilation",
            )
        self.fp_conv(n, x, weight, self.tensor(a["bias"]), a["stride"], a["pads"])

    def fp_conv(
        self,
        n: dict,
        x: _Val,
        weight: np.ndarray,
        bias: np.ndarray | None,
        stride: list[int],
        pads: list[list[int]],
    ) -> None:
        node = n["name"]
        o, _, kh, kw = weight.shape
        k = _square(node, "kernel", (kh, kw))
        s = _square(node, "stride", stride)
        p = _sym_pad(node, pads)
        h, w, c = x.hwc
        _square(node, "map", (h, w))
        if weight.shape[1] != c:
            raise _Refuse(
                "shape", f"a conv with {weight.shape[1]} input channels on a {c}-channel map (node {node})"
            )
        oh = (h + 2 * p - k) // s + 1
        wname = self.const(f"{node}.weight", weight.transpose(0, 2, 3, 1), [o, k, k, c])
        bname = self.const(f"{node}.bias", np.zeros(o, np.float32) if bias is None else bias.reshape(-1))
        out = n["outputs"][0]
        shape = (1, o) if len(self.vals[n["inputs"][0]].shape) == 2 else (1, o, oh, oh)
        v = self.define(out, shape)
        self.group(
            node,
            [n["inputs"][0]],
            out,
            [
                DabLayer(
                    "FpConv2D",
                    {
                        "input": x.dab,
                        "weight": wname,
                        "bias": bname,
                        "pads": [p, p, p, p],
                        "strides": [s, s],
                        "dilations": [1, 1],
                        "output": v.dab,
                    },
                    node,
                )
            ],
        )

    def op_linear(self, n: dict, i: int) -> None:
        node = n["name"]
        x = self.val(n["inputs"][0], node, flat_ok=True)
        if len(x.shape) != 2:
            raise _Refuse(
                "linear",
                f"a linear layer on a rank-{len(x.shape)} tensor (node {node}): daBNN can express a "
                "linear only on a flattened map (as a conv covering it)",
            )
        weight = self.tensor(n["attrs"]["weight"])
        h, w, c = x.hwc
        if weight.shape[1] != h * w * c:
            raise _Refuse(
                "shape", f"a linear with {weight.shape[1]} inputs on {h * w * c} features (node {node})"
            )
        if x.flat_of is not None:
            wt = weight.reshape(weight.shape[0], c, h, w)  # torch flattens (C, H, W)
        else:
            wt = weight.reshape(weight.shape[0], c, 1, 1)
        self.fp_conv(n, x, wt, self.tensor(n["attrs"]["bias"]), [1, 1], [[0, 0], [0, 0]])
        self.vals[n["outputs"][0]].shape = (1, weight.shape[0])

    # in-place layers ------------------------------------------------------------------------
    def in_place(self, n: dict, x_name: str, ltype: str, params: dict[str, Any], **kw: Any) -> _Val:
        node = n["name"]
        x = self.val(x_name, node)
        out = n["outputs"][0]
        v = self.define(out, x.shape, **kw)
        self.group(
            node,
            list(n["inputs"]),
            out,
            [DabLayer(ltype, {**params, "output": v.dab}, node)],
            clobbers=x_name,
            clobber_op=ltype,
        )
        return v

    def op_channel_affine(self, n: dict, i: int) -> None:
        node = n["name"]
        x = self.val(n["inputs"][0], node)
        scale, shift = self.tensor(n["attrs"]["scale"]), self.tensor(n["attrs"]["shift"])
        self.channels(node, x, scale, "channel_affine")
        self.aligned_rows(x, node, "Affine")
        self.in_place(
            n,
            n["inputs"][0],
            "Affine",
            {
                "input": x.dab,
                "a": self.const(f"{node}.a", scale.reshape(-1)),
                "b": self.const(f"{node}.b", shift.reshape(-1)),
            },
        )

    def channels(self, node: str, x: _Val, arr: np.ndarray, what: str) -> None:
        if len(x.shape) not in (2, 4) or arr.size != x.shape[1]:
            raise _Refuse(
                "shape", f"a {what} of {arr.size} channels on a tensor of shape {list(x.shape)} (node {node})"
            )

    def op_relu(self, n: dict, i: int) -> None:
        x = self.val(n["inputs"][0], n["name"])
        total = int(np.prod(x.shape))
        if total % 4:
            raise _Refuse(
                "align",
                f"a ReLU on {total} values (node {n['name']}): daBNN's NEON ReLU skips the last "
                "total % 4 values",
            )
        self.in_place(n, n["inputs"][0], "Relu", {"input": x.dab}, relu_of=n["name"])

    def op_prelu(self, n: dict, i: int) -> None:
        node = n["name"]
        x = self.val(n["inputs"][0], node)
        slope = self.tensor(n["attrs"]["weight"]).reshape(-1)
        if slope.size != 1:
            self.channels(node, x, slope, "PReLU")
        self.in_place(
            n, n["inputs"][0], "PRelu", {"input": x.dab, "slope": self.const(f"{node}.slope", slope)}
        )

    def op_hardtanh(self, n: dict, i: int) -> None:
        node, out = n["name"], n["outputs"][0]
        readers = self.readers.get(out, [])
        ops = {m["name"]: m["op"] for m in self.ir.nodes}
        others = [r for r in readers if ops.get(r) != "binary_conv"]
        x_name = n["inputs"][0]
        x = self.val(x_name, node)
        if readers and not others and out != self.output:
            # sign(hardtanh(x)) = sign(x) (the clip keeps the sign, 0 included): binary convs
            # alone read it, so it is dropped and they binarize x directly
            return self.alias(n, x, x.shape)
        # Others read the clipped values (residual adds, pools, the classifier): daBNN has no
        # clip layer, but clip(x, lo, hi) = hi - relu((hi - lo) - relu(x - lo)) is five in-place
        # layers, each reading only the previous one, so no copy of x is needed.
        lo, hi = float(n["attrs"]["min_val"]), float(n["attrs"]["max_val"])
        if len(x.shape) not in (2, 4):
            raise _Refuse("hardtanh", f"hardtanh on a tensor of shape {list(x.shape)} (node {node})")
        total, c = int(np.prod(x.shape)), x.shape[1]
        if total % 4:
            raise _Refuse(
                "align",
                f"a hardtanh on {total} values (node {node}): its ReLUs would skip the last "
                "total % 4 values on NEON",
            )
        self.aligned_rows(x, node, "Affine")
        v = self.define(out, x.shape)
        steps = [
            ("Affine", 1.0, -lo),
            ("Relu", None, None),
            ("Affine", -1.0, hi - lo),
            ("Relu", None, None),
            ("Affine", -1.0, hi),
        ]
        layers, src = [], x.dab
        for k, (ltype, a, b) in enumerate(steps):
            dst = v.dab if k == len(steps) - 1 else self.fresh(f"{node}_clip{k}")
            params: dict[str, Any] = {"input": src, "output": dst}
            if ltype == "Affine":
                params |= {
                    "a": self.const(f"{node}.clip{k}_a", np.full(c, a, np.float32)),
                    "b": self.const(f"{node}.clip{k}_b", np.full(c, b, np.float32)),
                }
            layers.append(DabLayer(ltype, params, node))
            src = dst
        self.extra["Hardtanh as Affine/Relu/Affine/Relu/Affine"] += 1
        self.group(node, [x_name], out, layers, clobbers=x_name, clobber_op="Hardtanh (Affine/Relu chain)")

    def op_add(self, n: dict, i: int) -> None:
        node = n["name"]
        a_name, b_name = n["inputs"]
        a, b = self.val(a_name, node), self.val(b_name, node)
        if a.shape != b.shape:
            raise _Refuse(
                "broadcast",
                f"an add of shapes {list(a.shape)} and {list(b.shape)} (node {node}): daBNN's Add "
                "does not broadcast",
            )
        self.aligned_rows(a, node, "Add")

        def free(name: str) -> bool:  # nobody else reads it: safe to overwrite in place
            v = self.vals[name]
            others = [
                r
                for alias, av in self.vals.items()
                if av.root == v.root
                for r in self.readers.get(alias, [])
                if r != node
            ]
            return not others and v.root not in self.protected()

        first, second = (a_name, b_name) if free(a_name) or not free(b_name) else (b_name, a_name)
        x1, x2 = self.vals[first], self.vals[second]
        self.in_place(n, first, "Add", {"input1": x1.dab, "input2": x2.dab})

    def protected(self) -> set[str]:
        roots = {self.ir.inputs[0]["name"]}
        if self.output in self.vals:
            roots.add(self.vals[self.output].root)
        return roots

    # other layers ---------------------------------------------------------------------------
    def op_concat(self, n: dict, i: int) -> None:
        node = n["name"]
        if len(n["inputs"]) != 2:
            raise _Refuse(
                "concat",
                f"a concat of {len(n['inputs'])} tensors (node {node}): daBNN's Concat takes exactly 2",
            )
        a, b = (self.val(v, node) for v in n["inputs"])
        if len(a.shape) not in (2, 4) or n["attrs"]["axis"] != 1 or a.shape != b.shape:
            raise _Refuse(
                "concat",
                f"a concat of shapes {list(a.shape)} and {list(b.shape)} on axis {n['attrs']['axis']} "
                f"(node {node}): daBNN concatenates two tensors of equal channel count on the channel axis only",
            )
        shape = (1, 2 * a.shape[1], *a.shape[2:])
        v = self.define(n["outputs"][0], shape, relu_of=a.relu_of or b.relu_of)
        self.group(
            node,
            list(n["inputs"]),
            n["outputs"][0],
            [DabLayer("Concat", {"inputs": [a.dab, b.dab], "axis": 3, "output": v.dab}, node)],
        )

    def pool(self, n: dict, ltype: str, kernel: list[int], stride: list[int], pad: int) -> None:
        node = n["name"]
        x = self.val(n["inputs"][0], node)
        if len(x.shape) != 4:
            raise _Refuse(
                "pool", f"a pool on a rank-{len(x.shape)} tensor (node {node}): daBNN pools 2-D maps only"
            )
        h, w, c = x.hwc
        _square(node, "map", (h, w))
        k, s = _square(node, "kernel", kernel), _square(node, "stride", stride)
        self.aligned_rows(x, node, ltype)
        if ltype == "MaxPool" and k in (2, 3) and (c % 4 or c < 4):
            raise _Refuse(
                "align",
                f"a {k}x{k} max pool on {c} channels (node {node}): daBNN's NEON max pool needs a "
                "multiple of 4 channels",
            )
        oh = (h + 2 * pad - k) // s + 1
        keep = n["attrs"].get("keepdims", True)
        shape = (1, c, oh, oh) if keep else (1, c)
        v = self.define(n["outputs"][0], shape, relu_of=x.relu_of)
        self.group(
            node,
            [n["inputs"][0]],
            n["outputs"][0],
            [
                DabLayer(
                    ltype,
                    {
                        "input": x.dab,
                        "kernel_shape": [k, k],
                        "pads": [pad, pad, pad, pad],
                        "strides": [s, s],
                        "output": v.dab,
                    },
                    node,
                )
            ],
        )

    def op_max_pool(self, n: dict, i: int) -> None:
        a = n["attrs"]
        if len(a["kernel"]) != 2:
            raise _Refuse("conv1d", f"a 1-D pool (node {n['name']}): daBNN pools 2-D maps only")
        if list(a["dilation"]) != [1, 1]:
            raise _Refuse("dilation", f"a dilated max pool (node {n['name']})")
        self.pool(n, "MaxPool", a["kernel"], a["stride"], _sym_pad(n["name"], a["pads"]))

    def op_avg_pool(self, n: dict, i: int) -> None:
        a = n["attrs"]
        if len(a["kernel"]) != 2:
            raise _Refuse("conv1d", f"a 1-D pool (node {n['name']}): daBNN pools 2-D maps only")
        if _sym_pad(n["name"], a["pads"]):
            raise _Refuse(
                "avgpad",
                f"a padded average pool (node {n['name']}): daBNN's AvePool kernels disagree on "
                "padded windows (one divides by the valid cells, the NEON 2x2 one by 4); use padding=0",
            )
        self.pool(n, "AvePool", a["kernel"], a["stride"], 0)

    def reduce(self, n: dict, ltype: str) -> None:
        x = self.val(n["inputs"][0], n["name"])
        if len(x.shape) != 4 or list(n["attrs"]["axes"]) != [2, 3]:
            raise _Refuse(
                "reduce",
                f"a reduction over axes {n['attrs']['axes']} of a rank-{len(x.shape)} tensor "
                f"(node {n['name']}): daBNN can only pool a map over H and W",
            )
        h, w, _ = x.hwc
        self.pool(n, ltype, [h, w], [1, 1], 0)

    def op_reduce_mean(self, n: dict, i: int) -> None:
        self.reduce(n, "AvePool")

    def op_reduce_max(self, n: dict, i: int) -> None:
        self.reduce(n, "MaxPool")

    # the binary conv ---------------------------------------------------------------------
    def op_binary_conv(self, n: dict, i: int) -> None:
        a, node = n["attrs"], n["name"]
        algo = self.ir_algorithm(node)
        if a["kind"] != "conv2d":
            raise _Refuse(
                "binary-kind",
                f"a binary {a['kind']} (node {node}): daBNN's BinConv2D binarizes 2-D convs only; "
                "keep that layer full precision",
            )
        x_name = n["inputs"][0]
        x = self.val(x_name, node)
        if a["groups"] != 1:
            raise _Refuse(
                "groups", f"a grouped binary conv (groups={a['groups']}, node {node}): daBNN has no groups"
            )
        if list(a["dilation"]) != [1, 1]:
            raise _Refuse(
                "dilation",
                f"a dilated binary conv (dilation={a['dilation']}, node {node}): daBNN's BinConv2D "
                "ignores dilation",
            )
        o, cin, kh, kw = a["weight_shape"]
        k = _square(node, "kernel", (kh, kw))
        s = _square(node, "stride", a["stride"])
        p = _sym_pad(node, a["pads"])
        h, w, c = x.hwc
        _square(node, "map", (h, w))
        if p and a["pad_value"] != -1:
            what = "zero padding (the reference)" if a["pad_value"] == 0 else "+1 padding"
            raise _Refuse(
                "padding",
                f"a padded binary conv with {what} (node {node}): daBNN pads binarized inputs with "
                "-1; binarize the model with pad_value=-1 (bimodels.binarize(model, algo, pad_value=-1)), which "
                "daBNN runs exactly",
            )
        if a["input_scale"] is not None:
            raise _Refuse(
                "input_scale",
                f"input_scale={a['input_scale']!r} (XNOR-Net's activation scale beta, algorithm "
                f"{algo}, node {node}): daBNN has no layer that scales a binary conv by mean|x| of its input",
            )
        gain = self.tensor(a["output_gain"])
        if gain is not None and (gain.ndim > 3 or ((1,) * (3 - gain.ndim) + gain.shape)[1:] != (1, 1)):
            raise _Refuse(
                "output_gain",
                f"output_gain of shape {list(gain.shape)} (XNOR-Net++'s spatial scale Gamma, "
                f"algorithm {algo}, node {node}): it varies over H and W, and daBNN's Affine is per channel only",
            )
        if x.relu_of is not None:
            raise _Refuse(
                "relu-sign",
                f"a binary conv reading the output of ReLU {x.relu_of} (node {node}): our sign maps "
                "the ReLU's zeros to +1, daBNN's x > 0 binarization to -1, so the results would differ",
            )
        if c != cin:
            raise _Refuse(
                "shape", f"a binary conv with {cin} input channels on a {c}-channel map (node {node})"
            )
        self.check_binconv(node, c, o, k, s, p, h)
        kk = cin * k * k
        # the IR's rows are (c, kh, kw) with bit 1 = -1; daBNN wants (kh, kw, c) with bit 1 = +1
        signs = unpack_sign_rows(self.tensor(a["weight_bits"]), a["k"]).reshape(o, cin, k, k)
        signs = signs.transpose(0, 2, 3, 1).reshape(o, kk)
        aligned = not (cin == 64 and k == 3)
        bits, _ = pack_dabnn_filters(signs, aligned)
        wname = self.fresh(f"{node}.weight")
        self.inits.append(DabTensor(wname, [o, k, k, cin], bin_data=bits, align_hwc_to_128=aligned))

        layers: list[DabLayer] = []
        reads, clobbers, clobber_op = [x_name], None, ""
        src = x.dab
        shift = self.tensor(a["input_shift"])
        if shift is not None:  # sign(x + b): an in-place Affine(a=1, b=shift) on x, then the conv
            self.channels(node, x, shift.reshape(-1), "input_shift")
            self.aligned_rows(x, node, "Affine")
            src = self.fresh(f"{node}_shifted")
            layers.append(
                DabLayer(
                    "Affine",
                    {
                        "input": x.dab,
                        "a": self.const(f"{node}.shift_a", np.ones(cin, np.float32)),
                        "b": self.const(f"{node}.shift_b", shift.reshape(-1)),
                        "output": src,
                    },
                    node,
                )
            )
            clobbers, clobber_op = x_name, f"Affine (the input_shift of algorithm {algo})"

        g = np.ones(o, np.float64)
        for key in ("weight_scale", "channel_scale"):
            t = self.tensor(a[key])
            if t is not None:
                g = g * t.reshape(-1).astype(np.float64)
        if gain is not None:  # (C, 1, 1) or (1, 1, 1): per channel
            g = g * gain.reshape(-1).astype(np.float64)
        bias = self.tensor(a["bias"])
        bias = np.zeros(o) if bias is None else bias.reshape(-1).astype(np.float64)

        out = n["outputs"][0]
        s_bn, t_bn, final, final_node = np.ones(o), np.zeros(o), out, node
        readers = self.readers.get(out, [])
        nxt = self.ir.nodes[i + 1] if i + 1 < len(self.ir.nodes) else None
        if (
            nxt is not None
            and nxt["op"] == "channel_affine"
            and readers == [nxt["name"]]
            and nxt["inputs"] == [out]
            and out != self.output
        ):
            s_bn = self.tensor(nxt["attrs"]["scale"]).reshape(-1).astype(np.float64)
            t_bn = self.tensor(nxt["attrs"]["shift"]).reshape(-1).astype(np.float64)
            final, final_node = nxt["outputs"][0], nxt["name"]
            self.skip.add(nxt["name"])
        oh = (h + 2 * p - k) // s + 1
        raw = self.fresh(f"{node}_mismatches")
        layers.append(
            DabLayer(
                "BinConv2D",
                {
                    "input": src,
                    "weight": wname,
                    "pads": [p, p, p, p],
                    "strides": [s, s],
                    "dilations": [1, 1],
                    "output": raw,
                },
                node,
            )
        )
        v = self.define(final, (1, o, oh, oh))
        self.aligned_rows(v, node, "Affine")
        # Two affines, not one: K - 2m first, an integer float32 holds exactly, then the float
        # scale and shift. Folded into one a*m + b, a large b cancels against a*m and the
        # rounding can flip the sign the next binary layer takes of a value near zero.
        dot = self.fresh(f"{node}_dot")
        layers.append(
            DabLayer(
                "Affine",
                {
                    "input": raw,
                    "a": self.const(f"{node}.dot_a", np.full(o, -2.0, np.float32)),
                    "b": self.const(f"{node}.dot_b", np.full(o, float(kk), np.float32)),
                    "output": dot,
                },
                node,
            )
        )
        layers.append(
            DabLayer(
                "Affine",
                {
                    "input": dot,
                    "a": self.const(f"{final_node}.a", s_bn * g),
                    "b": self.const(f"{final_node}.b", t_bn + s_bn * bias),
                    "output": v.dab,
                },
                final_node,
            )
        )
        self.group(
            node if final_node == node else f"{node}+{final_node}", reads, final, layers, clobbers, clobber_op
        )

    def blocked(
        self, pending: list[_Group], readers_of_root: dict[str, list[int]], done: set[int]
    ) -> tuple[_Group, list[str]]:
        """The in-place group that can never run: another reader of its input depends on it."""
        groups = self.groups
        data_deps = {g.index: {producer for producer in g.deps} for g in groups}

        def depends_on(j: int, target: int) -> bool:
            seen, stack = set(), [j]
            while stack:
                k = stack.pop()
                if k == target:
                    return True
                if k not in seen:
                    seen.add(k)
                    stack.extend(d for d in data_deps[k] if d not in done)
            return False

        for g in pending:
            if g.clobbers is None:
                continue
            others = [
                j for j in readers_of_root[self.vals[g.clobbers].root] if j != g.index and j not in done
            ]
            late = [groups[j].node for j in others if depends_on(j, g.index)]
            if late:
                return g, late
        g = next(g for g in pending if g.clobbers is not None)
        clobbered = self.vals[g.clobbers].root if g.clobbers is not None else ""  # (never "": found above)
        return g, [groups[j].node for j in readers_of_root[clobbered] if j != g.index and j not in done]

    def ir_algorithm(self, node: str) -> str:
        return self.algos.get(node, "?")

    def check_binconv(self, node: str, cin: int, cout: int, k: int, s: int, p: int, width: int) -> None:
        kk = cin * k * k
        out = (width + 2 * p - k) // s + 1
        if kk >= 60000:
            raise _Refuse(
                "limits",
                f"a binary conv with {kk} bits per filter (node {node}): daBNN's im2col asserts "
                "KH*KW*Cin < 60000",
            )
        if cin == 64 and width % 2:
            raise _Refuse(
                "limits",
                f"a 64-channel binary conv on a map of odd width {width} (node {node}): daBNN's "
                "64-channel kernels pack rows of an even width only",
            )
        direct = k == 3 and cin in (64, 128, 256, 512, 1024)
        if direct and cin == 64 and ((out * out) % 2 or cout % 2):
            raise _Refuse(
                "limits",
                f"a 3x3 64-channel binary conv with {cout} outputs on a {out}x{out} output (node "
                f"{node}): daBNN's aarch64 direct kernel asserts an even output size and an even Cout",
            )
        if direct and cin != 64 and not (cin == 128 and cout == 128) and cout % 128:
            raise _Refuse(
                "limits",
                f"a 3x3 binary conv {cin} -> {cout} channels (node {node}): daBNN's aarch64 direct "
                "kernel asserts Cout % 128 == 0 for this input width",
            )
        if not (cin == 64 and k == 3) and out * out * min(2 * -(-kk // 128), 32) > 128000:
            raise _Refuse(
                "limits",
                f"a binary conv with a {out}x{out} output and {kk}-bit filters (node {node}): it "
                "overflows daBNN's static BGEMM buffer (out_H*out_W*min(words, 32) must be <= 128000)",
            )

    # scheduling -------------------------------------------------------------------------------
    def schedule(self) -> list[DabLayer]:
        """Order the groups so each in-place layer runs after every other reader of its input."""
        groups = self.groups
        producer = {g.writes: j for j, g in enumerate(groups)}
        for j, g in enumerate(groups):
            g.index = j
            g.deps = {producer[self.vals[r].root] for r in g.reads if self.vals[r].root in producer}
        # drop groups nothing needs
        needed: set[int] = set()
        stack: list[int | None] = [producer.get(self.vals[self.output].root)]
        while stack:
            top = stack.pop()
            if top is None or top in needed:
                continue
            needed.add(top)
            stack.extend(groups[top].deps)
        if not needed:
            raise ExportError(f"{RUNTIME} has nothing to run: the model's output is its input")
        live = [g for g in groups if g.index in needed]
        readers_of_root: dict[str, list[int]] = {}
        for g in live:
            for r in set(g.reads):
                readers_of_root.setdefault(self.vals[r].root, []).append(g.index)
        protected = self.protected()
        for g in live:
            if g.clobbers is None:
                continue
            root = self.vals[g.clobbers].root
            if root in protected:
                what = (
                    "the model's input (the caller's buffer)"
                    if root == self.ir.inputs[0]["name"]
                    else "the model's output"
                )
                self.problems.setdefault("in-place", []).append(
                    f"an in-place {g.clobber_op} (node {g.node}) that would overwrite {what}: daBNN has no copy op"
                )
                continue
            g.deps |= {j for j in readers_of_root.get(root, []) if j != g.index}
        self.raise_problems()
        done: set[int] = set()
        order: list[_Group] = []
        pending = sorted(live, key=lambda g: g.index)
        while pending:
            ready = next((g for g in pending if g.deps <= done), None)
            if ready is None:
                g, others = self.blocked(pending, readers_of_root, done)
                raise ExportError(
                    f"{RUNTIME} cannot express an in-place {g.clobber_op} (node {g.node}) on '{g.clobbers}': daBNN "
                    f"overwrites its input, which {', '.join(others)} also read(s) after it; daBNN has no copy op and "
                    "the export inserts none"
                )
            order.append(ready)
            done.add(ready.index)
            pending.remove(ready)
        layers = [layer for g in order for layer in g.layers]
        last = layers[-1].params["output"]
        if last != self.vals[self.output].dab:
            raise ExportError(
                f"{RUNTIME} reads the last layer's output, but the model's output is written earlier"
            )
        return layers


def _algorithms(model: nn.Module) -> dict[str, str]:
    """fx node name of each binary layer -> its algorithm (for messages)."""
    return {
        name.replace(".", "_"): m.algorithm
        for name, m in model.named_modules()
        if is_binary(m) or isinstance(m, DeployedBinaryLayer)
    }


def lower(model: nn.Module, example_input: Tensor) -> tuple[list[DabLayer], list[DabTensor], list[int], str]:
    """The daBNN layers, initializers, input shape [1, H, W, C] and input name of `model` (or ExportError)."""
    layers, inits, shape, input_name, _ = _lower(model, example_input)
    return layers, inits, shape, input_name


def _lower(model: nn.Module, example_input: Tensor):
    if isinstance(example_input, Tensor) and example_input.dim() >= 1 and example_input.shape[0] != 1:
        raise ExportError(
            f"{RUNTIME} runs batch 1 only (its input is [1, H, W, C] and it has no batch axis); the "
            f"example input has batch {example_input.shape[0]}: export with a batch-1 example input"
        )
    ir = trace_ir(model, example_input, runtime=RUNTIME)
    lowering = _Lowering(ir, _algorithms(model))
    layers, inits, shape = lowering.run()
    return layers, inits, shape, lowering.input_dab, dict(lowering.extra)


def export_dabnn_with_report(model: nn.Module, example_input: Tensor) -> tuple[bytes, dict[str, int]]:
    """The ``.dab`` and what had to be composed of several daBNN layers (-> layer count), for the
    deployability matrix's 'composite' cells."""
    layers, inits, input_shape, input_name, extra = _lower(model, example_input)
    return write_dab(layers, inits, input_name, input_shape), extra


def export_dabnn(model: nn.Module, example_input: Tensor) -> bytes:
    """The model as a daBNN ``.dab`` (FlatBuffers, flatbnn version 2); see the module docstring."""
    return export_dabnn_with_report(model, example_input)[0]


@register_exporter("dabnn")
def _export(model: nn.Module, example_input: Tensor) -> ExportResult:
    return ExportResult(*export_dabnn_with_report(model, example_input))


__all__ = [
    "DabLayer",
    "DabTensor",
    "LAYER_TYPES",
    "PARAM_FIELDS",
    "VERSION",
    "export_dabnn",
    "export_dabnn_with_report",
    "lower",
    "read_dab",
    "write_dab",
]
