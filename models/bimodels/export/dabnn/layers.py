"""daBNN lowerings of the IR's float ops: FpConv2D, Affine, Relu, PRelu, Add, Concat, pools, aliases.

In-place layers (Affine, Relu, PRelu, Add into input1) are grouped with the value they
overwrite, for `schedule`. Hardtanh, which daBNN lacks, is five in-place layers where it
cannot be dropped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from biformats.dabnn import DabLayer

from ..ir import Node
from .limits import aligned_rows, channels, square, sym_pad
from .lowering import Lowering, lowers
from .values import Refuse, Val


def alias(
    lw: Lowering, n: Node, src: Val, shape: tuple[int, ...], flat_of: tuple[int, int, int] | None = None
) -> None:
    out = n.output
    lw.vals[out] = Val(src.dab, tuple(shape), src.root, flat_of, src.relu_of)


@lowers("identity")
def lower_identity(lw: Lowering, n: Node, i: int) -> None:
    src = lw.val(n.inputs[0], n.name, flat_ok=True)
    alias(lw, n, src, src.shape, src.flat_of)


@lowers("flatten")
def lower_flatten(lw: Lowering, n: Node, i: int) -> None:
    src = lw.val(n.inputs[0], n.name)
    start, end = n.attrs["start"], n.attrs["end"]
    rank = len(src.shape)
    if start == end:
        return alias(lw, n, src, src.shape)
    if rank != 4 or start != 1 or end != 3:
        raise Refuse(
            "flatten",
            f"flatten of axes {start}..{end} of a rank-{rank} tensor (node {n.name}): only "
            "flattening a whole [1, C, H, W] map is a daBNN no-op",
        )
    _, c, h, w = src.shape
    alias(lw, n, src, (1, c * h * w), None if h * w == 1 else (c, h, w))


@lowers("conv")
def lower_conv(lw: Lowering, n: Node, i: int) -> None:
    a, node = n.attrs, n.name
    weight = lw.tensor(a["weight"])
    if weight.ndim != 4:
        raise Refuse(
            "conv1d", f"a {weight.ndim - 2}-D convolution (node {node}): daBNN runs 2-D image convs only"
        )
    x = lw.val(n.inputs[0], node)
    if a["groups"] != 1:
        raise Refuse(
            "groups", f"a grouped convolution (groups={a['groups']}, node {node}): daBNN has no groups"
        )
    if list(a["dilation"]) != [1, 1]:
        raise Refuse(
            "dilation",
            f"a dilated convolution (dilation={a['dilation']}, node {node}): daBNN's FpConv2D "
            "ignores dilation",
        )
    fp_conv(lw, n, x, weight, lw.tensor(a["bias"]), a["stride"], a["pads"])


def fp_conv(
    lw: Lowering,
    n: Node,
    x: Val,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: list[int],
    pads: list[list[int]],
) -> None:
    node = n.name
    o, _, kh, kw = weight.shape
    k = square(node, "kernel", (kh, kw))
    s = square(node, "stride", stride)
    p = sym_pad(node, pads)
    h, w, c = x.hwc
    square(node, "map", (h, w))
    if weight.shape[1] != c:
        raise Refuse(
            "shape", f"a conv with {weight.shape[1]} input channels on a {c}-channel map (node {node})"
        )
    oh = (h + 2 * p - k) // s + 1
    wname = lw.const(f"{node}.weight", weight.transpose(0, 2, 3, 1), [o, k, k, c])
    bname = lw.const(f"{node}.bias", np.zeros(o, np.float32) if bias is None else bias.reshape(-1))
    out = n.output
    shape = (1, o) if len(lw.vals[n.inputs[0]].shape) == 2 else (1, o, oh, oh)
    v = lw.define(out, shape)
    lw.group(
        node,
        [n.inputs[0]],
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


@lowers("linear")
def lower_linear(lw: Lowering, n: Node, i: int) -> None:
    node = n.name
    x = lw.val(n.inputs[0], node, flat_ok=True)
    if len(x.shape) != 2:
        raise Refuse(
            "linear",
            f"a linear layer on a rank-{len(x.shape)} tensor (node {node}): daBNN can express a "
            "linear only on a flattened map (as a conv covering it)",
        )
    weight = lw.tensor(n.attrs["weight"])
    h, w, c = x.hwc
    if weight.shape[1] != h * w * c:
        raise Refuse("shape", f"a linear with {weight.shape[1]} inputs on {h * w * c} features (node {node})")
    if x.flat_of is not None:
        wt = weight.reshape(weight.shape[0], c, h, w)  # torch flattens (C, H, W)
    else:
        wt = weight.reshape(weight.shape[0], c, 1, 1)
    fp_conv(lw, n, x, wt, lw.tensor(n.attrs["bias"]), [1, 1], [[0, 0], [0, 0]])
    lw.vals[n.output].shape = (1, weight.shape[0])


def in_place(lw: Lowering, n: Node, x_name: str, ltype: str, params: dict[str, Any], **kw: Any) -> Val:
    node = n.name
    x = lw.val(x_name, node)
    out = n.output
    v = lw.define(out, x.shape, **kw)
    lw.group(
        node,
        list(n.inputs),
        out,
        [DabLayer(ltype, {**params, "output": v.dab}, node)],
        clobbers=x_name,
        clobber_op=ltype,
    )
    return v


@lowers("channel_affine")
def lower_channel_affine(lw: Lowering, n: Node, i: int) -> None:
    node = n.name
    x = lw.val(n.inputs[0], node)
    scale, shift = lw.tensor(n.attrs["scale"]), lw.tensor(n.attrs["shift"])
    channels(node, x, scale, "channel_affine")
    aligned_rows(x, node, "Affine")
    in_place(
        lw,
        n,
        n.inputs[0],
        "Affine",
        {
            "input": x.dab,
            "a": lw.const(f"{node}.a", scale.reshape(-1)),
            "b": lw.const(f"{node}.b", shift.reshape(-1)),
        },
    )


@lowers("relu")
def lower_relu(lw: Lowering, n: Node, i: int) -> None:
    x = lw.val(n.inputs[0], n.name)
    total = int(np.prod(x.shape))
    if total % 4:
        raise Refuse(
            "align",
            f"a ReLU on {total} values (node {n.name}): daBNN's NEON ReLU skips the last total % 4 values",
        )
    in_place(lw, n, n.inputs[0], "Relu", {"input": x.dab}, relu_of=n.name)


@lowers("prelu")
def lower_prelu(lw: Lowering, n: Node, i: int) -> None:
    node = n.name
    x = lw.val(n.inputs[0], node)
    slope = lw.tensor(n.attrs["weight"]).reshape(-1)
    if slope.size != 1:
        channels(node, x, slope, "PReLU")
    in_place(lw, n, n.inputs[0], "PRelu", {"input": x.dab, "slope": lw.const(f"{node}.slope", slope)})


@lowers("hardtanh")
def lower_hardtanh(lw: Lowering, n: Node, i: int) -> None:
    node, out = n.name, n.output
    readers = lw.readers.get(out, [])
    ops = {m.name: m.op for m in lw.ir.nodes}
    others = [r for r in readers if ops.get(r) != "binary_conv"]
    x_name = n.inputs[0]
    x = lw.val(x_name, node)
    if readers and not others and out != lw.output:
        # sign(hardtanh(x)) = sign(x) (the clip keeps the sign, 0 included): binary convs
        # alone read it, so it is dropped and they binarize x directly
        return alias(lw, n, x, x.shape)
    # Others read the clipped values (residual adds, pools, the classifier): daBNN has no
    # clip layer, but clip(x, lo, hi) = hi - relu((hi - lo) - relu(x - lo)) is five in-place
    # layers, each reading only the previous one, so no copy of x is needed.
    lo, hi = float(n.attrs["min_val"]), float(n.attrs["max_val"])
    if len(x.shape) not in (2, 4):
        raise Refuse("hardtanh", f"hardtanh on a tensor of shape {list(x.shape)} (node {node})")
    total, c = int(np.prod(x.shape)), x.shape[1]
    if total % 4:
        raise Refuse(
            "align",
            f"a hardtanh on {total} values (node {node}): its ReLUs would skip the last "
            "total % 4 values on NEON",
        )
    aligned_rows(x, node, "Affine")
    v = lw.define(out, x.shape)
    steps = [
        ("Affine", 1.0, -lo),
        ("Relu", None, None),
        ("Affine", -1.0, hi - lo),
        ("Relu", None, None),
        ("Affine", -1.0, hi),
    ]
    layers, src = [], x.dab
    for k, (ltype, a, b) in enumerate(steps):
        dst = v.dab if k == len(steps) - 1 else lw.fresh(f"{node}_clip{k}")
        params: dict[str, Any] = {"input": src, "output": dst}
        if ltype == "Affine":
            params |= {
                "a": lw.const(f"{node}.clip{k}_a", np.full(c, a, np.float32)),
                "b": lw.const(f"{node}.clip{k}_b", np.full(c, b, np.float32)),
            }
        layers.append(DabLayer(ltype, params, node))
        src = dst
    lw.extra["Hardtanh as Affine/Relu/Affine/Relu/Affine"] += 1
    lw.group(node, [x_name], out, layers, clobbers=x_name, clobber_op="Hardtanh (Affine/Relu chain)")


@lowers("add")
def lower_add(lw: Lowering, n: Node, i: int) -> None:
    node = n.name
    a_name, b_name = n.inputs
    a, b = lw.val(a_name, node), lw.val(b_name, node)
    if a.shape != b.shape:
        raise Refuse(
            "broadcast",
            f"an add of shapes {list(a.shape)} and {list(b.shape)} (node {node}): daBNN's Add "
            "does not broadcast",
        )
    aligned_rows(a, node, "Add")

    def free(name: str) -> bool:  # nobody else reads it: safe to overwrite in place
        v = lw.vals[name]
        others = [
            r
            for alias, av in lw.vals.items()
            if av.root == v.root
            for r in lw.readers.get(alias, [])
            if r != node
        ]
        return not others and v.root not in lw.protected()

    first, second = (a_name, b_name) if free(a_name) or not free(b_name) else (b_name, a_name)
    x1, x2 = lw.vals[first], lw.vals[second]
    in_place(lw, n, first, "Add", {"input1": x1.dab, "input2": x2.dab})


@lowers("concat")
def lower_concat(lw: Lowering, n: Node, i: int) -> None:
    node = n.name
    if len(n.inputs) != 2:
        raise Refuse(
            "concat",
            f"a concat of {len(n.inputs)} tensors (node {node}): daBNN's Concat takes exactly 2",
        )
    a, b = (lw.val(v, node) for v in n.inputs)
    if len(a.shape) not in (2, 4) or n.attrs["axis"] != 1 or a.shape != b.shape:
        raise Refuse(
            "concat",
            f"a concat of shapes {list(a.shape)} and {list(b.shape)} on axis {n.attrs['axis']} "
            f"(node {node}): daBNN concatenates two tensors of equal channel count on the channel axis only",
        )
    shape = (1, 2 * a.shape[1], *a.shape[2:])
    v = lw.define(n.output, shape, relu_of=a.relu_of or b.relu_of)
    lw.group(
        node,
        list(n.inputs),
        n.output,
        [DabLayer("Concat", {"inputs": [a.dab, b.dab], "axis": 3, "output": v.dab}, node)],
    )


def pool(lw: Lowering, n: Node, ltype: str, kernel: list[int], stride: list[int], pad: int) -> None:
    node = n.name
    x = lw.val(n.inputs[0], node)
    if len(x.shape) != 4:
        raise Refuse(
            "pool", f"a pool on a rank-{len(x.shape)} tensor (node {node}): daBNN pools 2-D maps only"
        )
    h, w, c = x.hwc
    square(node, "map", (h, w))
    k, s = square(node, "kernel", kernel), square(node, "stride", stride)
    aligned_rows(x, node, ltype)
    if ltype == "MaxPool" and k in (2, 3) and (c % 4 or c < 4):
        raise Refuse(
            "align",
            f"a {k}x{k} max pool on {c} channels (node {node}): daBNN's NEON max pool needs a "
            "multiple of 4 channels",
        )
    oh = (h + 2 * pad - k) // s + 1
    keep = n.attrs.get("keepdims", True)
    shape = (1, c, oh, oh) if keep else (1, c)
    v = lw.define(n.output, shape, relu_of=x.relu_of)
    lw.group(
        node,
        [n.inputs[0]],
        n.output,
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


@lowers("max_pool")
def lower_max_pool(lw: Lowering, n: Node, i: int) -> None:
    a = n.attrs
    if len(a["kernel"]) != 2:
        raise Refuse("conv1d", f"a 1-D pool (node {n.name}): daBNN pools 2-D maps only")
    if list(a["dilation"]) != [1, 1]:
        raise Refuse("dilation", f"a dilated max pool (node {n.name})")
    pool(lw, n, "MaxPool", a["kernel"], a["stride"], sym_pad(n.name, a["pads"]))


@lowers("avg_pool")
def lower_avg_pool(lw: Lowering, n: Node, i: int) -> None:
    a = n.attrs
    if len(a["kernel"]) != 2:
        raise Refuse("conv1d", f"a 1-D pool (node {n.name}): daBNN pools 2-D maps only")
    if sym_pad(n.name, a["pads"]):
        raise Refuse(
            "avgpad",
            f"a padded average pool (node {n.name}): daBNN's AvePool kernels disagree on "
            "padded windows (one divides by the valid cells, the NEON 2x2 one by 4); use padding=0",
        )
    pool(lw, n, "AvePool", a["kernel"], a["stride"], 0)


def reduce(lw: Lowering, n: Node, ltype: str) -> None:
    x = lw.val(n.inputs[0], n.name)
    if len(x.shape) != 4 or list(n.attrs["axes"]) != [2, 3]:
        raise Refuse(
            "reduce",
            f"a reduction over axes {n.attrs['axes']} of a rank-{len(x.shape)} tensor "
            f"(node {n.name}): daBNN can only pool a map over H and W",
        )
    h, w, _ = x.hwc
    pool(lw, n, ltype, [h, w], [1, 1], 0)


@lowers("reduce_mean")
def lower_reduce_mean(lw: Lowering, n: Node, i: int) -> None:
    reduce(lw, n, "AvePool")


@lowers("reduce_max")
def lower_reduce_max(lw: Lowering, n: Node, i: int) -> None:
    reduce(lw, n, "MaxPool")
