"""The daBNN lowering's state and walk: names, values, refusals, and one lowering per IR op.

Each IR op's lowering is a function registered with `@lowers(op)` (`layers` for the float
layers, `binconv` for the binary conv); `Lowering.run` walks the IR in order, collects every
refusal, and hands the layer groups to `schedule`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, overload

import numpy as np

from biformats.dabnn import DabLayer, DabTensor

from .. import ExportError
from ..ir import Node
from .schedule import schedule
from .values import RUNTIME, Group, Refuse, Val

#: names daBNN derives from layer outputs / weights for its own buffers
_RESERVED_PREFIXES = ("binaized_for_", "pad_for_", "col_for_", "trans_")

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

LowerFn = Callable[["Lowering", Node, int], None]
#: IR op -> its lowering (the node and its index in the IR)
LOWERINGS: dict[str, LowerFn] = {}


def lowers(op: str) -> Callable[[LowerFn], LowerFn]:
    def decorator(fn: LowerFn) -> LowerFn:
        LOWERINGS[op] = fn
        return fn

    return decorator


def _unknown(lw: Lowering, n: Node, i: int) -> None:
    raise Refuse(f"op-{n.op}", f"the op {n.op} (node {n.name}): daBNN has no such layer")


class Lowering:
    def __init__(self, ir, algos: dict[str, str] | None = None):
        self.ir = ir
        self.algos = algos or {}  # IR node -> the algorithm that binarized it (for messages)
        self.vals: dict[str, Val] = {}
        self.groups: list[Group] = []
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
            for v in n.inputs:
                self.readers.setdefault(v, []).append(n.name)
            self.ir_names.update(n.outputs)
        self.ir_names.add(ir.inputs[0].name)
        self.output = ir.outputs[0]

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

    def val(self, name: str, node: str, *, flat_ok: bool = False) -> Val:
        v = self.vals[name]
        if v.flat_of is not None and not flat_ok:
            c, h, w = v.flat_of
            raise Refuse(
                "flatten",
                f"an op other than linear on a flattened {h}x{w} map (node {node}): daBNN keeps "
                "maps NHWC, so only a linear (a conv covering the map) may read a flattened map",
            )
        return v

    def define(self, name: str, shape: tuple[int, ...], dab: str | None = None, **kw: Any) -> Val:
        v = Val(dab or self.own(name), tuple(int(s) for s in shape), name, **kw)
        self.vals[name] = v
        return v

    def group(
        self,
        node: str,
        reads: list[str],
        writes: str,
        layers: list[DabLayer],
        clobbers: str | None = None,
        clobber_op: str = "",
    ) -> None:
        self.groups.append(Group(node, reads, writes, layers, clobbers, clobber_op))

    def run(self) -> None:
        """Lower every node, then schedule: fills `layers`, `inits`, `input_dab`, `input_shape`."""
        spec = self.ir.inputs[0]
        shape = spec.shape
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
        self.input_dab = self.define(spec.name, tuple(shape)).dab
        for i, n in enumerate(self.ir.nodes):
            if n.name in self.skip:
                continue
            if any(v in self.broken for v in n.inputs):  # downstream of a refused node
                self.broken.update(n.outputs)
            try:
                LOWERINGS.get(n.op, _unknown)(self, n, i)
            except Refuse as exc:
                secondary = exc.key in _SECONDARY and any(v in self.broken for v in n.inputs)
                if not secondary:
                    self.problems.setdefault(exc.key, []).append(str(exc))
                first = self.vals.get(n.inputs[0]) if n.inputs else None
                for out in n.outputs:  # later nodes read it as if it existed
                    self.broken.add(out)
                    if out not in self.vals:
                        self.vals[out] = Val(out, first.shape if first else (1, 1, 1, 1), out)
        self.raise_problems()
        self.layers: list[DabLayer] = schedule(self)
        self.input_shape = [1, h, w, c]

    def raise_problems(self) -> None:
        if not self.problems:
            return
        parts = []
        for msgs in self.problems.values():
            more = f" (and {len(msgs) - 1} more like it)" if len(msgs) > 1 else ""
            parts.append(msgs[0] + more)
        also = f"; also: {'; '.join(parts[1:])}" if len(parts) > 1 else ""
        raise ExportError(f"{RUNTIME} cannot express {parts[0]}{also}")

    def protected(self) -> set[str]:
        roots = {self.ir.inputs[0].name}
        if self.output in self.vals:
            roots.add(self.vals[self.output].root)
        return roots

    def ir_algorithm(self, node: str) -> str:
        return self.algos.get(node, "?")
