"""The daBNN lowering of a binary conv: [Affine (input shift)] -> BinConv2D -> Affine -> Affine.

BinConv2D counts mismatching bits m; the first Affine makes the dot product K - 2m exactly,
the second carries every per-channel factor and the following batch norm when only this
conv reads it (two affines, not one: see the comment at the end).
"""

from __future__ import annotations

import numpy as np

from biformats.bits import pack_dabnn_filters, unpack_sign_rows
from biformats.dabnn import DabLayer, DabTensor

from ..ir import Node
from .limits import aligned_rows, channels, check_binconv, square, sym_pad
from .lowering import Lowering, lowers
from .values import Refuse


@lowers("binary_conv")
def lower_binary_conv(lw: Lowering, n: Node, i: int) -> None:
    a, node = n.attrs, n.name
    algo = lw.ir_algorithm(node)
    if a["kind"] != "conv2d":
        raise Refuse(
            "binary-kind",
            f"a binary {a['kind']} (node {node}): daBNN's BinConv2D binarizes 2-D convs only; "
            "keep that layer full precision",
        )
    x_name = n.inputs[0]
    x = lw.val(x_name, node)
    if a["groups"] != 1:
        raise Refuse(
            "groups", f"a grouped binary conv (groups={a['groups']}, node {node}): daBNN has no groups"
        )
    if list(a["dilation"]) != [1, 1]:
        raise Refuse(
            "dilation",
            f"a dilated binary conv (dilation={a['dilation']}, node {node}): daBNN's BinConv2D "
            "ignores dilation",
        )
    o, cin, kh, kw = a["weight_shape"]
    k = square(node, "kernel", (kh, kw))
    s = square(node, "stride", a["stride"])
    p = sym_pad(node, a["pads"])
    h, w, c = x.hwc
    square(node, "map", (h, w))
    if p and a["pad_value"] != -1:
        what = "zero padding (the reference)" if a["pad_value"] == 0 else "+1 padding"
        raise Refuse(
            "padding",
            f"a padded binary conv with {what} (node {node}): daBNN pads binarized inputs with "
            "-1; binarize the model with pad_value=-1 (bimodels.binarize(model, algo, pad_value=-1)), which "
            "daBNN runs exactly",
        )
    if a["input_scale"] is not None:
        raise Refuse(
            "input_scale",
            f"input_scale={a['input_scale']!r} (XNOR-Net's activation scale beta, algorithm "
            f"{algo}, node {node}): daBNN has no layer that scales a binary conv by mean|x| of its input",
        )
    gain = lw.tensor(a["output_gain"])
    if gain is not None and (gain.ndim > 3 or ((1,) * (3 - gain.ndim) + gain.shape)[1:] != (1, 1)):
        raise Refuse(
            "output_gain",
            f"output_gain of shape {list(gain.shape)} (XNOR-Net++'s spatial scale Gamma, "
            f"algorithm {algo}, node {node}): it varies over H and W, and daBNN's Affine is per channel only",
        )
    if x.relu_of is not None:
        raise Refuse(
            "relu-sign",
            f"a binary conv reading the output of ReLU {x.relu_of} (node {node}): our sign maps "
            "the ReLU's zeros to +1, daBNN's x > 0 binarization to -1, so the results would differ",
        )
    if c != cin:
        raise Refuse("shape", f"a binary conv with {cin} input channels on a {c}-channel map (node {node})")
    check_binconv(node, c, o, k, s, p, h)
    kk = cin * k * k
    # the IR's rows are (c, kh, kw) with bit 1 = -1; daBNN wants (kh, kw, c) with bit 1 = +1
    signs = unpack_sign_rows(lw.tensor(a["weight_bits"]), a["k"]).reshape(o, cin, k, k)
    signs = signs.transpose(0, 2, 3, 1).reshape(o, kk)
    aligned = not (cin == 64 and k == 3)
    bits, _ = pack_dabnn_filters(signs, aligned)
    wname = lw.fresh(f"{node}.weight")
    lw.inits.append(DabTensor(wname, [o, k, k, cin], bin_data=bits, align_hwc_to_128=aligned))

    layers: list[DabLayer] = []
    reads, clobbers, clobber_op = [x_name], None, ""
    src = x.dab
    shift = lw.tensor(a["input_shift"])
    if shift is not None:  # sign(x + b): an in-place Affine(a=1, b=shift) on x, then the conv
        channels(node, x, shift.reshape(-1), "input_shift")
        aligned_rows(x, node, "Affine")
        src = lw.fresh(f"{node}_shifted")
        layers.append(
            DabLayer(
                "Affine",
                {
                    "input": x.dab,
                    "a": lw.const(f"{node}.shift_a", np.ones(cin, np.float32)),
                    "b": lw.const(f"{node}.shift_b", shift.reshape(-1)),
                    "output": src,
                },
                node,
            )
        )
        clobbers, clobber_op = x_name, f"Affine (the input_shift of algorithm {algo})"

    g = np.ones(o, np.float64)
    for key in ("weight_scale", "channel_scale"):
        t = lw.tensor(a[key])
        if t is not None:
            g = g * t.reshape(-1).astype(np.float64)
    if gain is not None:  # (C, 1, 1) or (1, 1, 1): per channel
        g = g * gain.reshape(-1).astype(np.float64)
    bias = lw.tensor(a["bias"])
    bias = np.zeros(o) if bias is None else bias.reshape(-1).astype(np.float64)

    out = n.output
    s_bn, t_bn, final, final_node = np.ones(o), np.zeros(o), out, node
    readers = lw.readers.get(out, [])
    nxt = lw.ir.nodes[i + 1] if i + 1 < len(lw.ir.nodes) else None
    if (
        nxt is not None
        and nxt.op == "channel_affine"
        and readers == [nxt.name]
        and nxt.inputs == [out]
        and out != lw.output
    ):
        s_bn = lw.tensor(nxt.attrs["scale"]).reshape(-1).astype(np.float64)
        t_bn = lw.tensor(nxt.attrs["shift"]).reshape(-1).astype(np.float64)
        final, final_node = nxt.output, nxt.name
        lw.skip.add(nxt.name)
    oh = (h + 2 * p - k) // s + 1
    raw = lw.fresh(f"{node}_mismatches")
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
    v = lw.define(final, (1, o, oh, oh))
    aligned_rows(v, node, "Affine")
    # Two affines, not one: K - 2m first, an integer float32 holds exactly, then the float
    # scale and shift. Folded into one a*m + b, a large b cancels against a*m and the
    # rounding can flip the sign the next binary layer takes of a value near zero.
    dot = lw.fresh(f"{node}_dot")
    layers.append(
        DabLayer(
            "Affine",
            {
                "input": raw,
                "a": lw.const(f"{node}.dot_a", np.full(o, -2.0, np.float32)),
                "b": lw.const(f"{node}.dot_b", np.full(o, float(kk), np.float32)),
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
                "a": lw.const(f"{final_node}.a", s_bn * g),
                "b": lw.const(f"{final_node}.b", t_bn + s_bn * bias),
                "output": v.dab,
            },
            final_node,
        )
    )
    lw.group(
        node if final_node == node else f"{node}+{final_node}", reads, final, layers, clobbers, clobber_op
    )
