"""daBNN's runtime limits: shapes on which it would assert, compute wrong values or corrupt memory.

Each check raises `Refuse` with the limit's reason (docs/dabnn-format.md has the facts).
"""

from __future__ import annotations

import numpy as np

from .values import Refuse, Val


def square(node: str, what: str, pair: list[int] | tuple[int, ...]) -> int:
    if len(pair) != 2 or pair[0] != pair[1]:
        raise Refuse(
            f"nonsquare-{what}",
            f"a non-square {what} {list(pair)} (node {node}): daBNN swaps H and W internally, "
            "so only square maps, kernels, strides and symmetric pads are exact",
        )
    return int(pair[0])


def sym_pad(node: str, pads: list[list[int]]) -> int:
    flat = [int(p) for pair in pads for p in pair]
    if len(pads) != 2 or len(set(flat)) != 1:
        raise Refuse(
            "nonsquare-pads",
            f"asymmetric padding {pads} (node {node}): daBNN supports only one pad value on every side",
        )
    return flat[0]


def aligned_rows(v: Val, node: str, layer: str) -> None:
    h, w, c = v.hwc
    if (w * c) % 4 and w * c != 1:
        raise Refuse(
            "align",
            f"{layer} reading a map of width {w} with {c} channels (node {node}): daBNN asserts "
            "'Not align' unless width * channels is a multiple of 4",
        )


def channels(node: str, x: Val, arr: np.ndarray, what: str) -> None:
    if len(x.shape) not in (2, 4) or arr.size != x.shape[1]:
        raise Refuse(
            "shape", f"a {what} of {arr.size} channels on a tensor of shape {list(x.shape)} (node {node})"
        )


def check_binconv(node: str, cin: int, cout: int, k: int, s: int, p: int, width: int) -> None:
    kk = cin * k * k
    out = (width + 2 * p - k) // s + 1
    if kk >= 60000:
        raise Refuse(
            "limits",
            f"a binary conv with {kk} bits per filter (node {node}): daBNN's im2col asserts "
            "KH*KW*Cin < 60000",
        )
    if cin == 64 and width % 2:
        raise Refuse(
            "limits",
            f"a 64-channel binary conv on a map of odd width {width} (node {node}): daBNN's "
            "64-channel kernels pack rows of an even width only",
        )
    direct = k == 3 and cin in (64, 128, 256, 512, 1024)
    if direct and cin == 64 and ((out * out) % 2 or cout % 2):
        raise Refuse(
            "limits",
            f"a 3x3 64-channel binary conv with {cout} outputs on a {out}x{out} output (node "
            f"{node}): daBNN's aarch64 direct kernel asserts an even output size and an even Cout",
        )
    if direct and cin != 64 and not (cin == 128 and cout == 128) and cout % 128:
        raise Refuse(
            "limits",
            f"a 3x3 binary conv {cin} -> {cout} channels (node {node}): daBNN's aarch64 direct "
            "kernel asserts Cout % 128 == 0 for this input width",
        )
    if not (cin == 64 and k == 3) and out * out * min(2 * -(-kk // 128), 32) > 128000:
        raise Refuse(
            "limits",
            f"a binary conv with a {out}x{out} output and {kk}-bit filters (node {node}): it "
            "overflows daBNN's static BGEMM buffer (out_H*out_W*min(words, 32) must be <= 128000)",
        )
