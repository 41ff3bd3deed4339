"""The graph every exporter lowers from: typed nodes over a declared op set.

`bimodels.export.trace` turns a deploy-form model into an `IR`. The custom format stores it
as it is (its op list is documented in `biformats.custom`), while LCE and daBNN lower it op
by op. The ops and each op's attributes are declared once, in `OPS`. A node is checked
against that declaration when it is built, so a lowering never meets an op or an attribute
it was not told about. This module imports no torch: an IR can be built, checked and stored
without one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import numpy as np

from biformats.custom import write_artifact

#: how an attribute's value is typed: a tensor key (``?``: or None), an int, a list of ints
#: (one per spatial axis), pads ([[before, after]] per spatial axis), a float, a bool, a string
AttrKind = Literal["tensor", "tensor?", "int", "ints", "pads", "float", "bool", "str", "str?"]


class IRError(ValueError):
    """A node or graph that breaks the declared op set (a bug in a tracer or a pass, not in a model)."""


@dataclass(frozen=True)
class OpSpec:
    """One op of the IR: its inputs and its attributes."""

    name: str
    attrs: Mapping[str, AttrKind]
    arity: int | None = 1  # None: one or more inputs
    optional: frozenset[str] = frozenset()  # attributes that only some forms carry
    doc: str = ""


_BINARY: dict[str, AttrKind] = {
    "kind": "str",
    "weight_bits": "tensor",
    "weight_shape": "ints",
    "k": "int",
    "stride": "ints",
    "dilation": "ints",
    "pads": "pads",
    "groups": "int",
    "pad_value": "int",
    "input_shift": "tensor?",
    "input_scale": "str?",
    "weight_scale": "tensor?",
    "channel_scale": "tensor?",
    "output_gain": "tensor?",
    "bias": "tensor?",
}

OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec(
            "binary_conv",
            _BINARY,
            optional=frozenset({"stride", "dilation", "pads", "groups", "pad_value"}),  # absent for linear
            doc="a binarized conv1d/conv2d/linear in its deploy form (signs packed, per-channel factors)",
        ),
        OpSpec(
            "conv",
            {
                "weight": "tensor",
                "bias": "tensor?",
                "stride": "ints",
                "dilation": "ints",
                "pads": "pads",
                "groups": "int",
            },
            doc="a full-precision Conv1d/Conv2d with zero padding",
        ),
        OpSpec("linear", {"weight": "tensor", "bias": "tensor?"}, doc="x @ weight.T + bias, last axis"),
        OpSpec("channel_affine", {"scale": "tensor", "shift": "tensor"}, doc="eval batch norm on axis 1"),
        OpSpec("relu", {}),
        OpSpec("hardtanh", {"min_val": "float", "max_val": "float"}),
        OpSpec("prelu", {"weight": "tensor"}),
        OpSpec("max_pool", {"kernel": "ints", "stride": "ints", "pads": "pads", "dilation": "ints"}),
        OpSpec("avg_pool", {"kernel": "ints", "stride": "ints", "pads": "pads", "count_include_pad": "bool"}),
        OpSpec("reduce_mean", {"axes": "ints", "keepdims": "bool"}),
        OpSpec("reduce_max", {"axes": "ints", "keepdims": "bool"}),
        OpSpec("flatten", {"start": "int", "end": "int"}),
        OpSpec("add", {}, arity=2, doc="numpy broadcasting"),
        OpSpec("concat", {"axis": "int"}, arity=None),
        OpSpec("identity", {}),
        OpSpec("constant", {"value": "tensor"}, arity=0, doc="a value the input does not change, folded"),
        OpSpec("embedding", {"weight": "tensor"}, doc="weight[ids]: int64 ids of any shape -> (*ids, dim)"),
        OpSpec(
            "layer_norm",
            {"normalized_shape": "ints", "weight": "tensor?", "bias": "tensor?", "eps": "float"},
            doc="normalise over the trailing axes named by normalized_shape",
        ),
        OpSpec("gelu", {"approximate": "str"}, doc="'none' (erf) or 'tanh'"),
        OpSpec("tanh", {}),
        OpSpec("softmax", {"axis": "int"}),
        OpSpec("scalar", {"fn": "str", "value": "float"}, doc="x (op) value, or value (op) x for rsub/rdiv"),
        OpSpec("matmul", {}, arity=2, doc="numpy matmul: batched over leading axes, broadcasting"),
        OpSpec("reshape", {"shape": "ints"}, doc="to (N, *shape): the batch axis stays"),
        OpSpec("transpose", {"perm": "ints"}, doc="axes permuted; perm[0] is 0 (the batch axis stays)"),
        OpSpec("expand", {"shape": "ints"}, doc="broadcast to (N, *shape)"),
        OpSpec("slice", {"axis": "int", "start": "int", "stop": "int", "step": "int"}),
        OpSpec("select", {"axis": "int", "index": "int"}, doc="one index of an axis, the axis removed"),
    )
}


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_attr(kind: AttrKind, value: Any) -> bool:
    if kind.endswith("?") and value is None:
        return True
    base = kind.rstrip("?")
    if base in ("tensor", "str"):
        return isinstance(value, str)
    if base == "int":
        return _is_int(value)
    if base == "ints":
        return isinstance(value, list) and all(_is_int(v) for v in value)
    if base == "pads":
        return isinstance(value, list) and all(
            isinstance(p, list) and len(p) == 2 and all(_is_int(v) for v in p) for p in value
        )
    if base == "float":
        return isinstance(value, (float, int)) and not isinstance(value, bool)
    return isinstance(value, bool)  # "bool"


@dataclass
class Node:
    """One op applied to named values, producing one new value."""

    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = OPS.get(self.op)
        if spec is None:
            raise IRError(f"node {self.name}: op {self.op!r} is not in the IR's op set ({', '.join(OPS)})")
        if len(self.outputs) != 1:
            raise IRError(f"node {self.name}: an IR node produces exactly one value, not {self.outputs}")
        if (spec.arity is None and not self.inputs) or (
            spec.arity is not None and len(self.inputs) != spec.arity
        ):
            want = "one or more" if spec.arity is None else spec.arity
            raise IRError(f"node {self.name}: {self.op} takes {want} inputs, got {len(self.inputs)}")
        unknown = set(self.attrs) - set(spec.attrs)
        missing = set(spec.attrs) - set(self.attrs) - spec.optional
        if unknown or missing:
            raise IRError(
                f"node {self.name}: {self.op} attributes unknown {sorted(unknown)}, missing {sorted(missing)}"
            )
        for key, value in self.attrs.items():
            if not _check_attr(spec.attrs[key], value):
                raise IRError(f"node {self.name}: {self.op}.{key} = {value!r} is not a {spec.attrs[key]}")

    @property
    def output(self) -> str:
        return self.outputs[0]

    def tensor_keys(self) -> list[str]:
        spec = OPS[self.op]
        return [v for k, v in self.attrs.items() if spec.attrs[k].startswith("tensor") and isinstance(v, str)]

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "name": self.name,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "attrs": dict(self.attrs),
        }


@dataclass
class ValueInfo:
    """A graph input: its name, the example input's shape (axis 0 is the batch axis) and its
    dtype ("float32", or "int64" for token ids, which only an embedding reads)."""

    name: str
    shape: list[int]
    dtype: str = "float32"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class IR:
    """A traced model: inputs, nodes in execution order, outputs, and the tensors nodes name."""

    inputs: list[ValueInfo]
    outputs: list[str]
    nodes: list[Node]
    tensors: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Every value defined once before it is read, every tensor an attribute names present."""
        defined = {v.name for v in self.inputs}
        for n in self.nodes:
            for v in n.inputs:
                if v not in defined:
                    raise IRError(f"node {n.name} reads {v!r} before anything defines it")
            if n.output in defined:
                raise IRError(f"node {n.name} redefines the value {n.output!r}")
            defined.add(n.output)
            for key in n.tensor_keys():
                if key not in self.tensors:
                    raise IRError(f"node {n.name} names the tensor {key!r}, which the graph does not hold")
        for out in self.outputs:
            if out not in defined:
                raise IRError(f"the graph's output {out!r} is never defined")

    @overload
    def tensor(self, key: str) -> np.ndarray: ...

    @overload
    def tensor(self, key: None) -> None: ...

    def tensor(self, key: str | None) -> np.ndarray | None:
        """The tensor an attribute names (None for an absent optional one)."""
        return None if key is None else self.tensors[key]

    def readers(self) -> dict[str, list[Node]]:
        """Value name -> the nodes that read it, in order."""
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for v in n.inputs:
                out.setdefault(v, []).append(n)
        return out

    def to_artifact(self) -> bytes:
        """The graph as the custom format's artifact (the custom format is the IR, stored)."""
        return write_artifact(
            [v.to_json() for v in self.inputs],
            list(self.outputs),
            [n.to_json() for n in self.nodes],
            self.tensors,
        )


__all__ = ["IR", "OPS", "AttrKind", "IRError", "Node", "OpSpec", "ValueInfo"]
