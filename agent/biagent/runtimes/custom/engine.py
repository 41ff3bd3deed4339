"""Load and run "custom" artifacts (the format: `biformats.custom`), numpy and our C kernels.

`load_artifact(bytes, settings)` validates everything before anything runs: the zip,
graph.json, the format name and version, every op, attr and tensor (dtype and shape), and
that the shapes chain from the declared input through every node (inferred at the declared
batch size). Any problem is a `ModelLoadError` that names the node or tensor. Every op is
built with `settings` (KernelSettings: C or numpy, ISA, threads), so a graph carries its
own. `Graph.run(inputs)` then accepts any batch size; a failure while running is an
`InvokeError` naming the node.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np

from biformats import FormatError
from biformats import custom as custom_format

from ..base import InvokeError, ModelLoadError
from . import fusion, ops
from .settings import KernelSettings


@dataclass
class Node:
    op: str
    name: str
    inputs: list[str]
    output: str
    fn: Callable[..., np.ndarray]


@dataclass(frozen=True)
class ValueSpec:
    name: str
    shape: tuple[int, ...]  # at the declared batch size
    dtype: str = "float32"


class Graph:
    """A validated graph, ready to run."""

    def __init__(
        self,
        inputs: list[ValueSpec],
        outputs: list[ValueSpec],
        nodes: list[Node],
        shapes: dict[str, tuple[int, ...]] | None = None,
    ):
        self.inputs, self.outputs, self.nodes = inputs, outputs, nodes
        self.shapes = dict(shapes or {})  # every value's shape at the declared batch size
        self._last_use: dict[str, int] = {}
        for i, node in enumerate(nodes):
            for v in node.inputs:
                self._last_use[v] = i
        for spec in outputs:
            self._last_use[spec.name] = len(nodes)

    def check_inputs(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """The inputs as arrays, each float32 with the declared shape at any batch size; an
        InvokeError names the first that is not (the per-node path and the executor share it)."""
        if len(inputs) != len(self.inputs):
            raise InvokeError(f"expected {len(self.inputs)} input(s), got {len(inputs)}")
        arrays = []
        for spec, arr in zip(self.inputs, inputs):
            arr = np.asarray(arr)
            if arr.dtype != np.dtype(spec.dtype):
                raise InvokeError(f"input {spec.name} must be {spec.dtype}, got {arr.dtype}")
            if arr.ndim != len(spec.shape) or arr.shape[1:] != spec.shape[1:] or arr.shape[0] < 1:
                want = ("N",) + spec.shape[1:]
                raise InvokeError(
                    f"input {spec.name} must have shape {want} (any batch N >= 1), got {arr.shape}"
                )
            arrays.append(arr)
        return arrays

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        values = {spec.name: arr for spec, arr in zip(self.inputs, self.check_inputs(inputs))}
        for i, node in enumerate(self.nodes):
            try:
                values[node.output] = node.fn(*(values[v] for v in node.inputs))
            except Exception as exc:  # a kernel failure on these inputs (shapes, memory)
                raise InvokeError(
                    f"node {node.name} ({node.op}) failed: {type(exc).__name__}: {exc}"
                ) from exc
            for v in set(node.inputs):
                if self._last_use.get(v) == i:
                    del values[v]
        return [values[spec.name] for spec in self.outputs]


# -- loading ---------------------------------------------------------------------------
INPUT_DTYPES = ("float32", "int64")  # int64: token ids, which only an embedding reads


def load_artifact(data: bytes, settings: KernelSettings, fuse: bool = True) -> Graph:
    """Parse and validate an artifact; every failure is a ModelLoadError with a reason.

    settings: the kernels every op runs (the runtime builds them, see settings.py).
    fuse: rewrite node chains into fused kernels (fusion.py; the same floats). False
    keeps one kernel call per node, the reference the tests compare against."""
    try:
        return _load(data, settings, fuse)
    except ModelLoadError:
        raise
    except Exception as exc:  # anything unforeseen in a malformed file is still a load error
        raise ModelLoadError(f"invalid custom artifact: {type(exc).__name__}: {exc}") from exc


def _load(data: bytes, settings: KernelSettings, fuse: bool) -> Graph:
    try:
        artifact = custom_format.read_artifact(data)
    except FormatError as exc:
        raise ModelLoadError(str(exc)) from exc
    return _build(artifact.doc, artifact.tensors, settings, fuse)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ModelLoadError(msg)


def _build(doc: dict, tensors: dict[str, np.ndarray], settings: KernelSettings, fuse: bool) -> Graph:
    # untrusted JSON: each value's type is checked below before it is used
    raw_inputs: Any = doc.get("inputs")
    raw_outputs: Any = doc.get("outputs")
    raw_nodes: Any = doc.get("nodes")
    _check(
        isinstance(raw_inputs, list) and len(raw_inputs) >= 1, "graph.json 'inputs' must be a non-empty list"
    )
    _check(
        isinstance(raw_outputs, list) and len(raw_outputs) >= 1,
        "graph.json 'outputs' must be a non-empty list",
    )
    _check(isinstance(raw_nodes, list), "graph.json 'nodes' must be a list")
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}  # every value is float32 but token ids (int64, read by an embedding)
    inputs = []
    for i, spec in enumerate(raw_inputs):
        _check(
            isinstance(spec, dict) and isinstance(spec.get("name"), str),
            f"input #{i} must have a string name",
        )
        name, shape = spec["name"], spec.get("shape")
        _check(
            isinstance(shape, list) and len(shape) >= 1 and all(type(d) is int and d >= 1 for d in shape),
            f"input {name}: shape must be a list of positive ints with the batch axis first, got {shape!r}",
        )
        _check(
            spec.get("dtype") in INPUT_DTYPES,
            f"input {name}: dtype must be one of {', '.join(INPUT_DTYPES)}, got {spec.get('dtype')!r}",
        )
        _check(name not in shapes, f"input name {name!r} is used twice")
        shapes[name] = tuple(shape)
        dtypes[name] = spec["dtype"]
        inputs.append(ValueSpec(name, tuple(shape), spec["dtype"]))
    nodes = []
    for i, raw in enumerate(raw_nodes):
        _check(isinstance(raw, dict), f"node #{i} must be a JSON object")
        name = raw.get("name")
        _check(isinstance(name, str) and name != "", f"node #{i} has no name")
        op, ins, outs, attrs = raw.get("op"), raw.get("inputs"), raw.get("outputs"), raw.get("attrs", {})
        _check(op in _OPS, f"node {name}: unknown op {op!r} (known ops: {', '.join(sorted(_OPS))})")
        _check(
            isinstance(ins, list) and all(isinstance(v, str) for v in ins),
            f"node {name}: inputs must be a list of names",
        )
        _check(
            isinstance(outs, list) and len(outs) == 1 and isinstance(outs[0], str),
            f"node {name}: must have exactly one output",
        )
        _check(isinstance(attrs, dict), f"node {name}: attrs must be an object")
        for v in ins:
            _check(
                v in shapes, f"node {name}: input {v!r} is not produced by an earlier node or a graph input"
            )
        _check(outs[0] not in shapes, f"node {name}: output {outs[0]!r} is produced twice")
        want = "int64" if op == "embedding" else "float32"
        for v in ins:
            _check(dtypes[v] == want, f"node {name} ({op}): input {v!r} is {dtypes[v]}, it takes {want}")
        ctx = _Ctx(name, op, attrs, tensors, settings)
        out_shape, fn = _OPS[op](ctx, [shapes[v] for v in ins])
        _check(all(d >= 1 for d in out_shape), f"node {name} ({op}): output shape {out_shape} is empty")
        shapes[outs[0]] = tuple(int(d) for d in out_shape)
        dtypes[outs[0]] = "float32"
        nodes.append(Node(op, name, list(ins), outs[0], fn))
    outputs = []
    for out in raw_outputs:
        _check(
            isinstance(out, str) and out in shapes,
            f"graph output {out!r} is not produced by any node or input",
        )
        outputs.append(ValueSpec(out, shapes[out]))
    if fuse:
        nodes = fusion.fuse(nodes, [spec.name for spec in outputs], shapes, Node)
    return Graph(inputs, outputs, nodes, shapes)


class _Ctx:
    """One node's attrs and tensors, with checks that name the node, and the model's settings."""

    def __init__(
        self, name: str, op: str, attrs: dict, tensors: dict[str, np.ndarray], settings: KernelSettings
    ):
        self.name, self.op, self.attrs, self.tensors = name, op, attrs, tensors
        self.settings = settings

    def fail(self, msg: str) -> ModelLoadError:
        return ModelLoadError(f"node {self.name} ({self.op}): {msg}")

    def check(self, cond: bool, msg: str) -> None:
        if not cond:
            raise self.fail(msg)

    def has(self, key: str) -> bool:
        return self.attrs.get(key) is not None

    def get(self, key: str, kind: type | tuple, default: Any = ...) -> Any:
        if key not in self.attrs:
            if default is ...:
                raise self.fail(f"missing attr {key!r}")
            return default
        v = self.attrs[key]
        ok = isinstance(v, kind) and not (
            isinstance(v, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
        )
        self.check(ok, f"attr {key!r} has the wrong type ({type(v).__name__})")
        return v

    def ints(self, key: str, n: int, minimum: int = 0) -> list[int]:
        v = self.get(key, list)
        self.check(
            len(v) == n and all(type(i) is int and i >= minimum for i in v),
            f"attr {key!r} must be {n} int(s) >= {minimum}, got {v!r}",
        )
        return v

    def int_list(self, key: str, minimum: int = 0) -> list[int]:
        """A list of ints >= minimum of any length (a shape, a permutation)."""
        v = self.get(key, list)
        self.check(
            all(type(i) is int and i >= minimum for i in v),
            f"attr {key!r} must be ints >= {minimum}, got {v!r}",
        )
        return v

    def axis(self, key: str, rank: int) -> int:
        """An axis after the batch axis of a rank-`rank` input."""
        v = self.get(key, int)
        self.check(1 <= v < rank, f"attr {key!r} must be an axis in 1..{rank - 1}, got {v!r}")
        return v

    def finite(self, key: str) -> float:
        v = float(self.get(key, (int, float)))
        self.check(math.isfinite(v) and abs(v) <= 3.4e38, f"attr {key!r} must be a finite float32, got {v!r}")
        return v

    def pads(self, n: int) -> list[list[int]]:
        v = self.get("pads", list)
        self.check(
            len(v) == n
            and all(
                isinstance(p, list) and len(p) == 2 and all(type(i) is int and i >= 0 for i in p) for p in v
            ),
            f"attr 'pads' must be {n} [before, after] pairs of ints >= 0, got {v!r}",
        )
        return v

    def axes(self, rank: int) -> list[int]:
        v = self.get("axes", list)
        self.check(
            len(v) >= 1 and all(type(a) is int and 0 <= a < rank for a in v) and len(set(v)) == len(v),
            f"attr 'axes' must be distinct axes of a rank-{rank} input, got {v!r}",
        )
        return v

    @overload
    def tensor(
        self, key: str, dtype: str = ..., shape: tuple | None = ..., optional: Literal[False] = ...
    ) -> np.ndarray: ...

    @overload
    def tensor(
        self, key: str, dtype: str = ..., shape: tuple | None = ..., *, optional: Literal[True]
    ) -> np.ndarray | None: ...

    def tensor(
        self, key: str, dtype: str = "float32", shape: tuple | None = None, optional: bool = False
    ) -> np.ndarray | None:
        if optional and not self.has(key):
            return None
        ref = self.get(key, str)
        if ref not in self.tensors:
            raise self.fail(f"tensor {ref!r} (attr {key!r}) is missing from tensors.npz")
        arr = self.tensors[ref]
        want = np.dtype(np.float32 if dtype == "float32" else np.uint64)
        self.check(
            arr.dtype.kind == want.kind and arr.dtype.itemsize == want.itemsize,
            f"tensor {ref!r} must be {dtype}, got {arr.dtype}",
        )
        if shape is not None:
            self.check(
                arr.shape == tuple(shape), f"tensor {ref!r} must have shape {tuple(shape)}, got {arr.shape}"
            )
        return np.ascontiguousarray(arr.astype(want, copy=False))  # native byte order

    def arity(self, ins: list, n: int | None, at_least: int = 1) -> None:
        if n is not None:
            self.check(len(ins) == n, f"takes {n} input(s), got {len(ins)}")
        self.check(len(ins) >= at_least, f"takes at least {at_least} input(s), got {len(ins)}")


def _spatial_out(ctx: _Ctx, spatial, kernel, stride, dilation, pads) -> tuple[int, ...]:
    out = tuple(
        ops.out_size(i, tuple(p), k, s, d) for i, p, k, s, d in zip(spatial, pads, kernel, stride, dilation)
    )
    ctx.check(
        all(o >= 1 for o in out),
        f"input spatial size {tuple(spatial)} is too small for kernel {tuple(kernel)}",
    )
    return out


def _op_binary_conv(ctx: _Ctx, ins):
    ctx.arity(ins, 1)
    (x,) = ins
    kind = ctx.get("kind", str)
    ctx.check(kind in ("conv1d", "conv2d", "linear"), f"unknown kind {kind!r}")
    nd = {"conv1d": 1, "conv2d": 2, "linear": 0}[kind]
    wshape = ctx.ints("weight_shape", 2 + nd, 1)
    k = ctx.get("k", int)
    ctx.check(
        k == math.prod(wshape[1:]),
        f"k={k} but weight_shape {wshape} has {math.prod(wshape[1:])} bits per output channel",
    )
    cout = wshape[0]
    bits = ctx.tensor("weight_bits", "uint64", (cout, ops.n_words(k)))
    tail = k % 64
    if tail:
        ctx.check(not np.any(bits[:, -1] >> np.uint64(tail)), "weight_bits has nonzero padding bits past k")
    attrs = dict(ctx.attrs)
    if kind == "linear":
        ctx.check(
            len(x) >= 2 and x[-1] == wshape[1], f"input shape {x} does not end with {wshape[1]} features"
        )
        cin, out = wshape[1], x[:-1] + (cout,)
    else:
        ctx.check(len(x) == 2 + nd, f"{kind} needs a rank-{2 + nd} input, got shape {x}")
        groups = ctx.get("groups", int)
        ctx.check(
            groups >= 1 and cout % groups == 0 and x[1] == wshape[1] * groups,
            f"input has {x[1]} channels; weight_shape {wshape} with groups={groups} needs {wshape[1] * groups}",
        )
        stride, dilation = ctx.ints("stride", nd, 1), ctx.ints("dilation", nd, 1)
        pads = ctx.pads(nd)
        pv = ctx.get("pad_value", (int, float))
        ctx.check(pv in (0, 1, -1), f"pad_value must be 0, 1 or -1, got {pv!r}")
        attrs["pad_value"] = int(pv)
        cin = x[1]
        out = (x[0], cout) + _spatial_out(ctx, x[2:], wshape[2:], stride, dilation, pads)
    scale = ctx.get("input_scale", (str, type(None)), None)
    ctx.check(scale in (None, "mean_abs"), f"unknown input_scale {scale!r}")
    t = {attrs["weight_bits"]: bits}
    for key, n in (("input_shift", cin), ("weight_scale", cout), ("channel_scale", cout), ("bias", cout)):
        arr = ctx.tensor(key, shape=(n,), optional=True)
        if arr is not None:
            t[attrs[key]] = arr
    gain = ctx.tensor("output_gain", optional=True)
    if gain is not None:
        ok = gain.ndim <= len(out) - 1
        try:
            ok = ok and np.broadcast_shapes(gain.shape, out[1:]) == out[1:]
        except ValueError:
            ok = False
        ctx.check(ok, f"output_gain of shape {gain.shape} does not broadcast over the output {out[1:]}")
        t[attrs["output_gain"]] = gain
    return out, ops.make_binary_conv(ops.BinaryLayer.from_attrs(attrs, t), ctx.settings)


def _op_conv(ctx: _Ctx, ins):
    ctx.arity(ins, 1)
    (x,) = ins
    ctx.check(len(x) in (3, 4), f"conv needs a rank-3 or rank-4 input, got shape {x}")
    nd = len(x) - 2
    w = ctx.tensor("weight")
    ctx.check(
        w.ndim == 2 + nd and all(d >= 1 for d in w.shape),
        f"weight shape {w.shape} does not fit a rank-{len(x)} input",
    )
    groups = ctx.get("groups", int)
    ctx.check(
        groups >= 1 and w.shape[0] % groups == 0 and x[1] == w.shape[1] * groups,
        f"input has {x[1]} channels; weight {w.shape} with groups={groups} needs {w.shape[1] * groups}",
    )
    stride, dilation, pads = ctx.ints("stride", nd, 1), ctx.ints("dilation", nd, 1), ctx.pads(nd)
    bias = ctx.tensor("bias", shape=(w.shape[0],), optional=True)
    t = {ctx.attrs["weight"]: w} | ({ctx.attrs["bias"]: bias} if bias is not None else {})
    out = (x[0], w.shape[0]) + _spatial_out(ctx, x[2:], w.shape[2:], stride, dilation, pads)
    return out, ops.make_conv(ctx.attrs, t, ctx.settings)


def _op_linear(ctx: _Ctx, ins):
    ctx.arity(ins, 1)
    (x,) = ins
    w = ctx.tensor("weight")
    ctx.check(
        w.ndim == 2 and len(x) >= 2 and x[-1] == w.shape[1], f"weight {w.shape} does not fit input shape {x}"
    )
    b = ctx.tensor("bias", shape=(w.shape[0],), optional=True)
    return x[:-1] + (w.shape[0],), ops.Linear(w, b, ctx.settings)


def _channels(ctx: _Ctx, x, n: int) -> None:
    ctx.check(len(x) >= 2 and x[1] == n, f"per-channel tensors of size {n} do not fit input shape {x}")


def _op_channel_affine(ctx: _Ctx, ins):
    ctx.arity(ins, 1)
    scale = ctx.tensor("scale")
    ctx.check(scale.ndim == 1, f"scale must be 1-D, got {scale.shape}")
    shift = ctx.tensor("shift", shape=scale.shape)
    _channels(ctx, ins[0], scale.size)
    return ins[0], ops.ChannelAffine(scale, shift, ctx.settings)


def _op_prelu(ctx: _Ctx, ins):
    ctx.arity(ins, 1)
    w = ctx.tensor("weight")
    ctx.check(w.ndim == 1, f"weight must be 1-D, got {w.shape}")
    if w.size != 1:
        _channels(ctx, ins[0], w.size)
    return ins[0], ops.PRelu(w)


def _op_relu(ctx: _Ctx, ins):
    ctx.arity(ins, 1)
    return ins[0], ops.Relu()


def _op_hardtanh(ctx: _Ctx, ins):
    ctx.arity(ins, 1)
    raw = [ctx.get(k, (int, float)) for k in ("min_val", "max_val")]
    ctx.check(
        all(math.isfinite(v) and abs(v) <= 3.4e38 for v in raw),
        f"min_val/max_val must be finite float32, got {raw}",
    )
    lo, hi = (np.float32(v) for v in raw)
    ctx.check(bool(lo <= hi), f"min_val {lo} > max_val {hi}")
    return ins[0], ops.Clamp(lo, hi, ctx.settings)


def _pool(ctx: _Ctx, ins, with_dilation: bool):
    ctx.arity(ins, 1)
    (x,) = ins
    ctx.check(len(x) in (3, 4), f"pooling needs a rank-3 or rank-4 input, got shape {x}")
    nd = len(x) - 2
    kernel, stride, pads = ctx.ints("kernel", nd, 1), ctx.ints("stride", nd, 1), ctx.pads(nd)
    dilation = ctx.ints("dilation", nd, 1) if with_dilation else [1] * nd
    ctx.check(
        all(2 * max(p) <= k for p, k in zip(pads, kernel)), f"pads {pads} exceed half the kernel {kernel}"
    )
    return x[:2] + _spatial_out(ctx, x[2:], kernel, stride, dilation, pads), (kernel, stride, pads, dilation)


def _op_max_pool(ctx: _Ctx, ins):
    out, (k, s, p, d) = _pool(ctx, ins, True)
    return out, ops.MaxPool(k, s, p, d, ctx.settings)


def _op_avg_pool(ctx: _Ctx, ins):
    out, (k, s, p, _) = _pool(ctx, ins, False)
    include = ctx.get("count_include_pad", bool)
    return out, ops.AvgPool(tuple(k), tuple(s), tuple((int(a), int(b)) for a, b in p), include)


def _reduce(ctx: _Ctx, ins, kind: Literal["mean", "max"]):
    ctx.arity(ins, 1)
    (x,) = ins
    axes, keep = tuple(ctx.axes(len(x))), ctx.get("keepdims", bool)
    out = (
        tuple(1 if i in axes else d for i, d in enumerate(x))
        if keep
        else tuple(d for i, d in enumerate(x) if i not in axes)
    )
    return out, ops.Reduce(kind, axes, keep)


def _op_flatten(ctx: _Ctx, ins):
    ctx.arity(ins, 1)
    (x,) = ins
    start, end = ctx.get("start", int), ctx.get("end", int)
    ctx.check(0 <= start <= end < len(x), f"start={start}, end={end} do not fit a rank-{len(x)} input")
    out = x[:start] + (math.prod(x[start : end + 1]),) + x[end + 1 :]
    return out, ops.Flatten(start, end)


def _op_add(ctx: _Ctx, ins):
    ctx.arity(ins, 2)
    try:
        out = np.broadcast_shapes(ins[0], ins[1])
    except ValueError:
        raise ctx.fail(f"input shapes {ins[0]} and {ins[1]} do not broadcast") from None
    return out, ops.Add()


def _op_concat(ctx: _Ctx, ins):
    ctx.arity(ins, None)
    axis = ctx.get("axis", int)
    first = ins[0]
    ctx.check(0 <= axis < len(first), f"axis {axis} does not fit a rank-{len(first)} input")
    for s in ins[1:]:
        ctx.check(
            len(s) == len(first) and all(a == b for i, (a, b) in enumerate(zip(s, first)) if i != axis),
            f"input shapes {ins} differ outside axis {axis}",
        )
    out = first[:axis] + (sum(s[axis] for s in ins),) + first[axis + 1 :]
    return out, ops.Concat(axis)


def _op_identity(ctx: _Ctx, ins):
    ctx.arity(ins, 1)
    return ins[0], ops.Identity()


def _op_constant(ctx: _Ctx, ins):
    ctx.arity(ins, 0, at_least=0)
    value = ctx.tensor("value")
    return value.shape, ops.Constant(value)


def _op_embedding(ctx: _Ctx, ins):
    ctx.arity(ins, 1)
    w = ctx.tensor("weight")
    ctx.check(w.ndim == 2 and w.shape[0] >= 1, f"weight must be (vocab, dim), got {w.shape}")
    return ins[0] + (w.shape[1],), ops.Embedding(w)


def _op_layer_norm(ctx: _Ctx, ins):
    ctx.arity(ins, 1)
    (x,) = ins
    ns = tuple(ctx.int_list("normalized_shape", 1))
    ctx.check(
        1 <= len(ns) < len(x) and x[-len(ns) :] == ns,
        f"normalized_shape {list(ns)} does not end input shape {x}",
    )
    eps = ctx.finite("eps")
    ctx.check(eps >= 0, f"eps must be >= 0, got {eps}")
    w = ctx.tensor("weight", shape=ns, optional=True)
    b = ctx.tensor("bias", shape=ns, optional=True)
    return x, ops.LayerNorm(len(ns), w, b, eps, ctx.settings)


def _op_gelu(ctx: _Ctx, ins):
    ctx.arity(ins, 1)
    approximate = ctx.get("approximate", str)
    ctx.check(approximate in ("none", "tanh"), f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return ins[0], ops.Gelu(approximate, ctx.settings)


def _op_tanh(ctx: _Ctx, ins):
    ctx.arity(ins, 1)
    return ins[0], ops.Tanh(ctx.settings)


def _op_softmax(ctx: _Ctx, ins):
    ctx.arity(ins, 1)
    return ins[0], ops.Softmax(ctx.axis("axis", len(ins[0])), ctx.settings)


_SCALAR_FNS = ("add", "sub", "mul", "div", "rsub", "rdiv")


def _op_scalar(ctx: _Ctx, ins):
    ctx.arity(ins, 1)
    fn = ctx.get("fn", str)
    ctx.check(fn in _SCALAR_FNS, f"fn must be one of {', '.join(_SCALAR_FNS)}, got {fn!r}")
    return ins[0], ops.Scalar(fn, ctx.finite("value"))


def _op_matmul(ctx: _Ctx, ins):
    ctx.arity(ins, 2)
    a, b = ins
    ctx.check(
        len(a) >= 3 and len(b) >= 3, f"takes inputs of rank >= 3 (batch, ..., rows, cols), got {a} and {b}"
    )
    ctx.check(a[-1] == b[-2], f"input shapes {a} and {b} do not chain ({a[-1]} != {b[-2]})")
    try:
        lead = np.broadcast_shapes(a[:-2], b[:-2])
    except ValueError:
        raise ctx.fail(f"the leading axes of {a} and {b} do not broadcast") from None
    return (*lead, a[-2], b[-1]), ops.MatMul(ctx.settings)


def _op_reshape(ctx: _Ctx, ins):
    ctx.arity(ins, 1)
    (x,) = ins
    shape = tuple(ctx.int_list("shape", 1))
    ctx.check(
        math.prod(shape) == math.prod(x[1:]),
        f"shape {list(shape)} does not hold the {math.prod(x[1:])} values of {x}",
    )
    return (x[0], *shape), ops.Reshape(shape)


def _op_transpose(ctx: _Ctx, ins):
    ctx.arity(ins, 1)
    (x,) = ins
    perm = tuple(ctx.int_list("perm"))
    ctx.check(
        sorted(perm) == list(range(len(x))) and perm[:1] == (0,),
        f"perm {list(perm)} must permute the {len(x)} axes and keep axis 0 first",
    )
    return tuple(x[p] for p in perm), ops.Transpose(perm)


def _op_expand(ctx: _Ctx, ins):
    ctx.arity(ins, 1)
    (x,) = ins
    shape = tuple(ctx.int_list("shape", 1))
    ctx.check(
        len(shape) == len(x) - 1 and all(d in (1, s) for d, s in zip(x[1:], shape)),
        f"input shape {x} does not broadcast to (N, {', '.join(map(str, shape))})",
    )
    return (x[0], *shape), ops.Expand(shape)


def _op_slice(ctx: _Ctx, ins):
    ctx.arity(ins, 1)
    (x,) = ins
    axis = ctx.axis("axis", len(x))
    start, stop, step = (ctx.get(k, int) for k in ("start", "stop", "step"))
    ctx.check(
        step >= 1 and 0 <= start < stop <= x[axis],
        f"start={start}, stop={stop}, step={step} is not a non-empty forward slice of size {x[axis]}",
    )
    return x[:axis] + (len(range(start, stop, step)),) + x[axis + 1 :], ops.Slice(axis, start, stop, step)


def _op_select(ctx: _Ctx, ins):
    ctx.arity(ins, 1)
    (x,) = ins
    axis = ctx.axis("axis", len(x))
    index = ctx.get("index", int)
    ctx.check(0 <= index < x[axis], f"index {index} is outside axis {axis} of size {x[axis]}")
    return x[:axis] + x[axis + 1 :], ops.Select(axis, index)


_OPS: dict[str, Callable[[_Ctx, list], tuple[tuple[int, ...], Callable[..., np.ndarray]]]] = {
    "binary_conv": _op_binary_conv,
    "conv": _op_conv,
    "linear": _op_linear,
    "channel_affine": _op_channel_affine,
    "relu": _op_relu,
    "hardtanh": _op_hardtanh,
    "prelu": _op_prelu,
    "max_pool": _op_max_pool,
    "avg_pool": _op_avg_pool,
    "reduce_mean": lambda ctx, ins: _reduce(ctx, ins, "mean"),
    "reduce_max": lambda ctx, ins: _reduce(ctx, ins, "max"),
    "flatten": _op_flatten,
    "add": _op_add,
    "concat": _op_concat,
    "identity": _op_identity,
    "constant": _op_constant,
    "embedding": _op_embedding,
    "layer_norm": _op_layer_norm,
    "gelu": _op_gelu,
    "tanh": _op_tanh,
    "softmax": _op_softmax,
    "scalar": _op_scalar,
    "matmul": _op_matmul,
    "reshape": _op_reshape,
    "transpose": _op_transpose,
    "expand": _op_expand,
    "slice": _op_slice,
    "select": _op_select,
}
