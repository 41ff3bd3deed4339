"""The whole-graph executor: a loaded graph planned once per batch size, then run in one C call.

The per-node path (engine.Graph.run) calls Python between every node: checks, allocations,
views. On a small network that is most of the time (resnet20 at 32x32: ~30 nodes, a few
microseconds of arithmetic each). Here `plan()` walks the fused node list once and writes
each node as one or more steps for kernels/graph.c: which kernel, its parameters, the
tensors it reads and where its buffers lie. Every intermediate value gets a place in one
arena, reused as soon as no later step reads it (first fit over lifetimes); a flatten or an
identity is the same buffer under another shape. C checks every step against the buffers
and tensors it names before the plan is accepted (graph_build), and `NativeGraph.run` is
then one native call that runs all steps with the GIL released.

The steps call the kernels the per-node path calls (the binary conv with its fused
epilogue and packed outputs, the direct stem conv, the FP GEMM, fp_linear, fp_conv1d, the
affine, clamp and pools), and the reductions sum as numpy does, so the executor computes
the same floats bit for bit: the numerics check relies on it, since its probing instance
runs node by node. The tests compare every architecture and algorithm exactly.

What cannot be planned raises `Unplannable` with the node and the reason; the runtime
then keeps the per-node path for that model and says why (`CustomModel.executor`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from biagent.kernels import _xnor

from ..base import InvokeError
from . import ops
from .engine import Graph, Node
from .fusion import FusedBinaryConv, FusedStemConv
from .ops.common import out_spatial
from .ops.transformer import UNARY

SLOTS, FLOATS, P = 64, 4, 21  # kernels/graph.h: G_SLOTS, G_FLOATS, G_P
ARENA, INPUT, OUTPUT = 0, 1, 2
OP = {
    "bconv": 1,
    "conv": 2,
    "affine": 3,
    "clamp": 4,
    "maxpool": 5,
    "avgpool": 6,
    "reduce": 7,
    "add": 8,
    "copy": 9,
    "linear": 10,
    "prelu": 11,
    "gain": 12,
    "beta": 13,
    "transpose": 14,
    "conv1d": 15,
    "blinear": 16,
    "strided": 17,
    "matmul": 18,
    "layernorm": 19,
    "softmax": 20,
    "unary": 21,
    "gather": 22,
}
STRIDED_DIMS = 6  # kernels/graph.h: G_STRIDED_DIMS
ALIGN = 64
PLANS_KEPT = 4  # batch sizes whose plans (and arenas) a model keeps


class Unplannable(ValueError):
    """A node the executor has no step for; the model keeps the per-node path."""


def available() -> bool:
    """Whether the C extension has the executor (an older or failed build has not)."""
    return _xnor is not None and hasattr(_xnor, "graph_build")


@dataclass
class _Buffer:
    nbytes: int
    first: int  # the step that writes it (-1: a graph input)
    last: int  # the last step that reads it
    space: tuple[int, int] = (ARENA, 0)  # (space, index) for inputs and outputs
    offset: int = 0


@dataclass
class _Value:
    buffer: int
    shape: tuple[int, ...]  # the float tensor it stands for
    packed: bool = False  # the next binary conv's packed sign planes, not floats


@dataclass
class _Step:
    op: str
    refs: list[int | None]  # buffer ids: out, in0, in1, in2
    tensors: list[np.ndarray | None] = field(default_factory=list)
    ints: list[int] = field(default_factory=list)
    floats: list[float] = field(default_factory=list)


class Planner:
    """One plan: a graph at one batch size."""

    def __init__(self, graph: Graph, n: int):
        self.graph, self.n = graph, n
        # every value's shape at batch n (the planner's own names for a fused chain's inner values too)
        self.shapes = {name: (n, *shape[1:]) for name, shape in graph.shapes.items()}
        self.buffers: list[_Buffer] = []
        self.values: dict[str, _Value] = {}
        self.consts: dict[str, np.ndarray] = {}  # constant nodes: tensors, broadcast by their readers
        self.steps: list[_Step] = []
        for i, spec in enumerate(graph.inputs):
            shape = (n, *spec.shape[1:])
            b = self._buffer(np.dtype(spec.dtype).itemsize * math.prod(shape), first=-1)
            self.buffers[b].space = (INPUT, i)
            self.values[spec.name] = _Value(b, shape)

    # -- buffers and values ------------------------------------------------------------------
    def _buffer(self, nbytes: int, first: int | None = None) -> int:
        step = len(self.steps) if first is None else first
        self.buffers.append(_Buffer(int(nbytes), step, step))
        return len(self.buffers) - 1

    def shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def read(self, name: str, packed: bool = False) -> int:
        if name in self.consts:
            raise Unplannable(f"the constant {name} is read by an op that takes no constant")
        value = self.values[name]
        if value.packed != packed:
            raise Unplannable(
                f"value {name} is {'packed bits' if value.packed else 'floats'} where its reader needs the other"
            )
        self.buffers[value.buffer].last = max(self.buffers[value.buffer].last, len(self.steps))
        return value.buffer

    def write(
        self, name: str, shape: tuple[int, ...], nbytes: int | None = None, packed: bool = False
    ) -> int:
        b = self._buffer(4 * math.prod(shape) if nbytes is None else nbytes)
        self.values[name] = _Value(b, shape, packed)
        self.shapes[name] = shape
        return b

    def scratch(self, nbytes: int) -> int:
        return self._buffer(nbytes)

    def emit(self, step: _Step) -> None:
        """Append a step; every buffer it names lives at least until it has run."""
        for b in step.refs:
            if b is not None:
                self.buffers[b].last = max(self.buffers[b].last, len(self.steps))
        self.steps.append(step)

    # -- the plan ----------------------------------------------------------------------------
    def plan(self) -> None:
        for node in self.graph.nodes:
            try:
                _plan_node(self, node)
            except Unplannable as exc:
                raise Unplannable(f"node {node.name} ({node.op}): {exc}") from None
            except KeyError as exc:  # a value the executor holds no buffer for (a constant read directly)
                raise Unplannable(f"node {node.name} ({node.op}): reads {exc}, which has no buffer") from None
        for j, spec in enumerate(self.graph.outputs):  # copied out: outputs may alias anything
            shape = self.shape(spec.name)
            src = self.read(spec.name)
            out = self._buffer(4 * math.prod(shape))
            self.buffers[out].space = (OUTPUT, j)
            self.emit(
                _Step(
                    "copy",
                    [out, src, None, None],
                    ints=[1, math.prod(shape), math.prod(shape), math.prod(shape), 0],
                )
            )

    def layout(self) -> int:
        """Place every arena buffer (first fit over lifetimes); returns the arena's size."""
        placed: list[_Buffer] = []
        top = 0
        for buf in sorted(
            (b for b in self.buffers if b.space[0] == ARENA), key=lambda b: (b.first, -b.nbytes)
        ):
            size = -(-max(buf.nbytes, 1) // ALIGN) * ALIGN
            busy = sorted(
                (o.offset, o.offset + -(-max(o.nbytes, 1) // ALIGN) * ALIGN)
                for o in placed
                if o.first <= buf.last and buf.first <= o.last
            )
            offset = 0
            for lo, hi in busy:
                if offset + size <= lo:
                    break
                offset = max(offset, hi)
            buf.offset = offset
            placed.append(buf)
            top = max(top, offset + size)
        return top

    def tables(self) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
        steps = np.full((len(self.steps), SLOTS), 0, np.int64)
        floats = np.zeros((len(self.steps), FLOATS), np.float64)
        tensors: list[np.ndarray] = []
        index: dict[int, int] = {}
        for i, step in enumerate(self.steps):
            row = steps[i]
            row[0] = OP[step.op]
            for r in range(4):
                b = step.refs[r] if r < len(step.refs) else None
                if b is None:
                    row[1 + 2 * r], row[2 + 2 * r] = -1, 0
                else:
                    buf = self.buffers[b]
                    row[1 + 2 * r] = (buf.space[0] << 32) + buf.space[1]
                    row[2 + 2 * r] = buf.offset if buf.space[0] == ARENA else 0
            row[9:21] = -1
            for t, arr in enumerate(step.tensors):
                if arr is None:
                    continue
                if id(arr) not in index:
                    index[id(arr)] = len(tensors)
                    tensors.append(arr)
                row[9 + t] = index[id(arr)]
            row[P : P + len(step.ints)] = step.ints
            floats[i, : len(step.floats)] = step.floats
        return steps, floats, tuple(tensors)


# -- nodes to steps -------------------------------------------------------------------------------
def _f32(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.ascontiguousarray(a, dtype=np.float32)


def _plan_node(pl: Planner, node: Node) -> None:
    fn = node.fn
    if isinstance(fn, FusedBinaryConv):
        if fn.fused():
            _bconv(pl, node, fn.conv, fn.post, fn.bits_for)
        else:
            _bconv(pl, node, fn.conv, None, None, post_after=fn.post)
    elif isinstance(fn, ops.BinaryConv):
        _bconv(pl, node, fn, None, None)
    elif isinstance(fn, FusedStemConv):
        _conv(pl, node, fn.conv, fn.post)
    elif isinstance(fn, ops.Conv):
        _conv(pl, node, fn, None)
    elif isinstance(fn, ops.ChannelAffine):
        _affine(pl, node.inputs[0], node.output, fn.scale, fn.shift, fn.clamp_to)
    elif isinstance(fn, ops.Clamp):
        _clamp(pl, node.inputs[0], node.output, float(fn.lo), float(fn.hi))
    elif isinstance(fn, ops.Relu):
        _clamp(pl, node.inputs[0], node.output, 0.0, math.inf)
    elif isinstance(fn, ops.MaxPool):
        _maxpool(pl, node.inputs[0], node.output, fn)
    elif isinstance(fn, ops.AvgPool):
        _avgpool(pl, node, fn)
    elif isinstance(fn, ops.Reduce):
        _reduce(pl, node, fn)
    elif isinstance(fn, (ops.Flatten, ops.Identity, ops.Reshape)):  # the same buffer, another shape
        alias = pl.values[node.inputs[0]]
        if alias.packed:
            raise Unplannable("reshapes packed bits")
        pl.read(node.inputs[0])
        pl.values[node.output] = _Value(alias.buffer, pl.shape(node.output))
    elif isinstance(fn, ops.Add):
        _add(pl, node)
    elif isinstance(fn, ops.Constant):
        pl.consts[node.output] = np.ascontiguousarray(fn.value, dtype=np.float32)
        pl.shapes[node.output] = tuple(fn.value.shape)
    elif isinstance(fn, (ops.Transpose, ops.Expand, ops.Slice, ops.Select)):
        _layout(pl, node, fn)
    elif isinstance(fn, ops.MatMul):
        _matmul(pl, node)
    elif isinstance(fn, ops.LayerNorm):
        x = pl.shape(node.inputs[0])
        cols = math.prod(x[len(x) - fn.axes :])
        w = None if fn.weight is None else _f32(fn.weight.reshape(-1))
        b = None if fn.bias is None else _f32(fn.bias.reshape(-1))
        src = pl.read(node.inputs[0])
        out = pl.write(node.output, x)
        pl.emit(
            _Step("layernorm", [out, src, None, None], [w, b], [math.prod(x) // cols, cols], [float(fn.eps)])
        )
    elif isinstance(fn, ops.Softmax):
        x = pl.shape(node.inputs[0])
        dims = [math.prod(x[: fn.axis]), x[fn.axis], math.prod(x[fn.axis + 1 :])]
        src = pl.read(node.inputs[0])
        out = pl.write(node.output, x)
        pl.emit(_Step("softmax", [out, src, None, None], ints=dims))
    elif isinstance(fn, (ops.Gelu, ops.Tanh, ops.Scalar)):
        if isinstance(fn, ops.Gelu):
            kind, value = ("gelu" if fn.approximate == "none" else "gelu_tanh"), 0.0
        elif isinstance(fn, ops.Tanh):
            kind, value = "tanh", 0.0
        else:
            kind, value = fn.fn, float(np.float32(fn.value))
        x = pl.shape(node.inputs[0])
        src = pl.read(node.inputs[0])
        out = pl.write(node.output, x)
        pl.emit(_Step("unary", [out, src, None, None], ints=[math.prod(x), UNARY[kind]], floats=[value]))
    elif isinstance(fn, ops.Embedding):
        ids = pl.shape(node.inputs[0])
        vocab, dim = fn.weight.shape
        src = pl.read(node.inputs[0])
        out = pl.write(node.output, (*ids, dim))
        pl.emit(_Step("gather", [out, src, None, None], [_f32(fn.weight)], [math.prod(ids), vocab, dim]))
    elif isinstance(fn, ops.Concat):
        _concat(pl, node, fn.axis)
    elif isinstance(fn, ops.Linear):
        x = pl.shape(node.inputs[0])
        m, k = fn.weight.shape
        src = pl.read(node.inputs[0])
        out = pl.write(node.output, (*x[:-1], m))
        pl.emit(
            _Step(
                "linear", [out, src, None, None], [_f32(fn.weight), _f32(fn.bias)], [math.prod(x[:-1]), k, m]
            )
        )
    elif isinstance(fn, ops.PRelu):
        x = pl.shape(node.inputs[0])
        w = np.ascontiguousarray(fn.weight, dtype=np.float32).reshape(-1)
        c = x[1] if len(x) >= 2 else 1
        src = pl.read(node.inputs[0])
        out = pl.write(node.output, x)
        pl.emit(_Step("prelu", [out, src, None, None], [w], [x[0], c, math.prod(x[2:]), int(w.size > 1)]))
    else:
        raise Unplannable(f"no step for {type(fn).__name__}")


def _contiguous_strides(shape: tuple[int, ...]) -> list[int]:
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return strides[::-1]


def _strided(
    pl: Planner, out: int, src: int | None, tensor: np.ndarray | None, dims, strides, offset: int = 0
) -> None:
    """One G_STRIDED step: dims and element strides padded on the left to STRIDED_DIMS."""
    if len(dims) > STRIDED_DIMS:
        raise Unplannable(
            f"a layout op over {len(dims)} axes (the executor's strided copy takes {STRIDED_DIMS})"
        )
    pad = STRIDED_DIMS - len(dims)
    ints = [1] * pad + list(dims) + [0] * pad + list(strides) + [offset]
    pl.emit(_Step("strided", [out, src, None, None], [tensor], ints))


def _layout(pl: Planner, node: Node, fn) -> None:
    """Transpose, expand, slice and select as one strided copy each."""
    x = pl.shape(node.inputs[0])
    cs = _contiguous_strides(x)
    offset = 0
    if isinstance(fn, ops.Transpose):
        dims, strides = [x[p] for p in fn.perm], [cs[p] for p in fn.perm]
    elif isinstance(fn, ops.Expand):
        dims = [x[0], *fn.shape]
        strides = [cs[i] if x[i] == dims[i] else 0 for i in range(len(x))]
    elif isinstance(fn, ops.Slice):
        dims, strides = list(pl.shape(node.output)), list(cs)
        strides[fn.axis] *= fn.step
        offset = fn.start * cs[fn.axis]
    else:
        dims = [d for i, d in enumerate(x) if i != fn.axis]
        strides = [c for i, c in enumerate(cs) if i != fn.axis]
        offset = fn.index * cs[fn.axis]
    src = pl.read(node.inputs[0])
    out = pl.write(node.output, tuple(dims))
    _strided(pl, out, src, None, dims, strides, offset)


def _broadcast(pl: Planner, name: str, shape: tuple[int, ...]) -> int:
    """The buffer holding value or constant `name` at `shape` (numpy broadcasting), copied out
    where its own shape differs."""
    if name not in pl.consts and pl.shape(name) == shape:
        return pl.read(name)
    have = pl.consts[name].shape if name in pl.consts else pl.shape(name)
    if len(have) > len(shape):
        raise Unplannable(f"{name} of shape {have} broadcast to {shape}")
    have = (1,) * (len(shape) - len(have)) + tuple(have)
    cs = _contiguous_strides(have)
    strides = [c if h == d else 0 for h, c, d in zip(have, cs, shape)]
    if name in pl.consts:
        src, tensor = None, pl.consts[name].reshape(-1)
    else:
        src, tensor = pl.read(name), None
    out = pl.scratch(4 * math.prod(shape))
    _strided(pl, out, src, tensor, shape, strides)
    return out


def _add(pl: Planner, node: Node) -> None:
    shape = pl.shape(node.output)
    a, b = (_broadcast(pl, v, shape) for v in node.inputs)
    out = pl.write(node.output, shape)
    pl.emit(_Step("add", [out, a, b, None], ints=[math.prod(shape)]))


def _matmul(pl: Planner, node: Node) -> None:
    a, b = (pl.shape(v) for v in node.inputs)
    if a[:-2] != b[:-2]:
        raise Unplannable(f"a broadcasting matmul {a} @ {b}")
    m, k, n = a[-2], a[-1], b[-1]
    ins = [pl.read(v) for v in node.inputs]
    out = pl.write(node.output, (*a[:-2], m, n))
    pl.emit(_Step("matmul", [out, ins[0], ins[1], None], ints=[math.prod(a[:-2]), m, k, n]))


def _affine(pl: Planner, src_name: str, out_name: str, scale, shift, clamp) -> None:
    x = pl.shape(src_name)
    if len(x) < 2:
        raise Unplannable(f"a channel affine over shape {x}")
    src = pl.read(src_name)
    out = pl.write(out_name, x)
    lohi = [float(clamp[0]), float(clamp[1])] if clamp is not None else []
    pl.emit(
        _Step(
            "affine",
            [out, src, None, None],
            [_f32(scale), _f32(shift)],
            [x[0], x[1], math.prod(x[2:]), int(clamp is not None)],
            lohi,
        )
    )


def _clamp(pl: Planner, src_name: str, out_name: str, lo: float, hi: float) -> None:
    x = pl.shape(src_name)
    src = pl.read(src_name)
    out = pl.write(out_name, x)
    pl.emit(_Step("clamp", [out, src, None, None], ints=[math.prod(x)], floats=[lo, hi]))


def _maxpool(pl: Planner, src_name: str, out_name: str, pool: ops.MaxPool) -> None:
    x = pl.shape(src_name)
    if len(x) != 4:
        raise Unplannable(f"a max pool over shape {x}")
    oh, ow = pool.out_shape(x[2:])
    src = pl.read(src_name)
    out = pl.write(out_name, (x[0], x[1], oh, ow))
    pl.emit(
        _Step("maxpool", [out, src, None, None], ints=[x[0] * x[1], x[2], x[3], *pool.geometry(), oh, ow])
    )


def _avgpool(pl: Planner, node: Node, pool: ops.AvgPool) -> None:
    x = pl.shape(node.inputs[0])
    if len(x) != 4:
        raise Unplannable(f"an average pool over shape {x}")
    (pt, pb), (pll, pr) = pool.pads
    oh, ow = out_spatial(x[2:], pool.pads, pool.kernel, pool.stride, (1, 1))
    src = pl.read(node.inputs[0])
    out = pl.write(node.output, (x[0], x[1], oh, ow))
    geom = [*pool.kernel, *pool.stride, 1, 1, pt, pll, oh, ow, pb, pr, int(pool.count_include_pad)]
    pl.emit(_Step("avgpool", [out, src, None, None], ints=[x[0] * x[1], x[2], x[3], *geom]))


def _reduce(pl: Planner, node: Node, fn: ops.Reduce) -> None:
    x = pl.shape(node.inputs[0])
    axes = sorted(fn.axes)
    if 0 in axes or axes != list(range(axes[0], axes[-1] + 1)):
        raise Unplannable(
            f"a reduction over axes {fn.axes} (the executor reduces one block of axes after the batch)"
        )
    outer, red, inner = (
        math.prod(x[: axes[0]]),
        math.prod(x[axes[0] : axes[-1] + 1]),
        math.prod(x[axes[-1] + 1 :]),
    )
    src = pl.read(node.inputs[0])
    out = pl.write(node.output, pl.shape(node.output))
    pl.emit(_Step("reduce", [out, src, None, None], ints=[outer, red, inner, int(fn.kind == "max")]))


def _concat(pl: Planner, node: Node, axis: int) -> None:
    if axis == 0:
        raise Unplannable("a concat along the batch axis")
    shapes = [pl.shape(v) for v in node.inputs]
    out_shape = pl.shape(node.output)
    outer, inner = math.prod(out_shape[:axis]), math.prod(out_shape[axis + 1 :])
    srcs = [pl.read(v) for v in node.inputs]
    out = pl.write(node.output, out_shape)
    at = 0
    for shape, src in zip(shapes, srcs):
        chunk = shape[axis] * inner
        pl.emit(
            _Step("copy", [out, src, None, None], ints=[outer, chunk, chunk, out_shape[axis] * inner, at])
        )
        at += chunk


def _conv(pl: Planner, node: Node, conv: ops.Conv, post: ops.StemPost | None) -> None:
    x = pl.shape(node.inputs[0])
    if len(x) == 3 and isinstance(conv, ops.ConvC):
        _conv1d(pl, node, conv, post)
        return
    direct = isinstance(conv, ops.ConvC) and conv.direct is not None
    gemm = isinstance(conv, ops.ConvC) and conv.gemm_w is not None
    if len(x) != 4 or conv.groups != 1 or not (direct or gemm):
        raise Unplannable("a conv without a C kernel here (grouped, or neither AVX-512 nor AArch64)")
    oh, ow = out_spatial(x[2:], conv.pads, conv.kernel, conv.stride, conv.dilation)
    geom = [*conv.kernel, *conv.stride, *conv.dilation, conv.pads[0][0], conv.pads[1][0], oh, ow]
    head = [x[0], x[1], x[2], x[3], conv.cout]
    src = pl.read(node.inputs[0])
    bias = _f32(conv.bias)
    if direct:
        pool = post.pool if post is not None else None
        final = pool.out_shape((oh, ow)) if pool is not None else (oh, ow)
        out = pl.write(node.output, (x[0], conv.cout, *final))
        scale = _f32(post.scale) if post is not None else None
        shift = _f32(post.shift) if post is not None else None
        has_affine = scale is not None and shift is not None
        clamp = post.clamp if post is not None else None
        ints = [*head, *geom, 0, int(has_affine), int(clamp is not None), int(pool is not None)]
        ints += [*pool.geometry(), *final] if pool is not None else [0] * 10
        pl.emit(
            _Step(
                "conv",
                [out, src, None, None],
                [conv.direct, bias, scale, shift],
                ints,
                [float(clamp[0]), float(clamp[1])] if clamp is not None else [],
            )
        )
        return
    k = x[1] * math.prod(conv.kernel)
    cols = pl.scratch(4 * k * oh * ow)
    last = node.output if post is None else f"{node.output}#conv"
    out = pl.write(last, (x[0], conv.cout, oh, ow))
    pl.emit(_Step("conv", [out, src, None, cols], [conv.gemm_w, bias], [*head, *geom, 1, 0, 0, 0]))
    if post is not None:  # the stem's fused nodes, one step each
        _stem_post(pl, last, node.output, post)


def _conv1d(pl: Planner, node: Node, conv: ops.ConvC, post: ops.StemPost | None) -> None:
    """ConvC's 1-D path (fp_conv1d), any groups."""
    if post is not None:
        raise Unplannable("a 1-D conv with fused nodes")
    n, c, length = pl.shape(node.inputs[0])
    (out_len,) = out_spatial((length,), conv.pads, conv.kernel, conv.stride, conv.dilation)
    src = pl.read(node.inputs[0])
    out = pl.write(node.output, (n, conv.cout, out_len))
    w = np.ascontiguousarray(conv.w.reshape(conv.cout, conv.cg, conv.kernel[0]))
    geometry = [n, c, length, conv.cout, conv.groups, conv.kernel[0], conv.stride[0], conv.dilation[0]]
    pl.emit(
        _Step("conv1d", [out, src, None, None], [w, _f32(conv.bias)], [*geometry, conv.pads[0][0], out_len])
    )


def _stem_post(pl: Planner, src: str, final: str, post: ops.StemPost) -> None:
    """A FusedStemConv on the GEMM path: its fused nodes, one step each (StemPost.apply)."""
    stages = [
        k
        for k, on in (
            ("affine", post.scale is not None),
            ("clamp", post.clamp is not None),
            ("pool", post.pool is not None),
        )
        if on
    ]
    current = src
    for i, kind in enumerate(stages):
        name = final if i == len(stages) - 1 else f"{final}#{kind}"
        if kind == "affine":
            _affine(pl, current, name, post.scale, post.shift, None)
        elif kind == "clamp":
            assert post.clamp is not None
            _clamp(pl, current, name, float(post.clamp[0]), float(post.clamp[1]))
        else:
            assert post.pool is not None
            _maxpool(pl, current, name, post.pool)
        current = name


def _bconv(
    pl: Planner,
    node: Node,
    conv: ops.BinaryConv,
    post: ops.PostOps | None,
    bits_for: ops.BinaryConv | None,
    post_after: ops.PostOps | None = None,
) -> None:
    if isinstance(conv, ops.BinaryConvGemm) and conv.kind == "linear":
        if post_after is not None:
            raise Unplannable("a linear with fused nodes")
        _blinear(pl, node, conv)
        return
    if not isinstance(conv, ops.BinaryConvC):
        raise Unplannable(f"{type(conv).__name__} (a grouped binary conv keeps the per-node path)")
    if conv.kind == "linear":
        _bconv_linear(pl, node, conv)
        if post_after is not None:
            raise Unplannable("a linear with fused nodes")
        return
    name = node.inputs[0]
    value = pl.values[name]
    x = value.shape
    two_d = len(x) == 4
    n, c, h, w = (x[0], x[1], x[2], x[3]) if two_d else (x[0], x[1], 1, x[2])
    kh, kw = conv.kernel if two_d else (1, conv.kernel[0])
    sh, sw = conv.stride if two_d else (1, conv.stride[0])
    dh, dw = conv.dilation if two_d else (1, conv.dilation[0])
    (pt, pb), (pll, pr) = conv.pads if two_d else ((0, 0), conv.pads[0])
    spatial = tuple(x[2:])
    out = out_spatial(spatial, conv.pads, conv.kernel, conv.stride, conv.dilation)
    oh, ow = out if two_d else (1, out[0])
    out_shape = (n, conv.cout, *out)
    beta = None
    if conv.mean_abs:
        if value.packed:
            raise Unplannable("XNOR's input scale on packed input")
        src_b = pl.read(name)
        beta = pl.scratch(4 * n)
        pl.emit(_Step("beta", [beta, src_b, None, None], ints=[n, math.prod(x[1:])]))
    src = pl.read(name, packed=value.packed)
    cls = table = None
    if conv.pad_value == 0 and conv.padded:
        cls, table = conv.correction_classes(spatial, out)
    residual = None
    if post is not None and post.residual:
        other = [v for v in node.inputs[1:]]
        if len(other) != 1 or pl.shape(other[0]) != out_shape:
            raise Unplannable("a fused add whose second input is not the output's shape")
        residual = pl.read(other[0])
    bits = [0, 0, 0, 0, 0, 0]
    bits_shift = None
    if bits_for is not None:
        (npt, npb), (npl, npr) = bits_for.pads
        hp, wp = oh + npt + npb, ow + npl + npr
        nbytes = 8 * n * -(-conv.cout // 64) * hp * wp
        dst = pl.write(node.output, out_shape, nbytes=nbytes, packed=True)
        bits = [1, hp, wp, npt, npl, int(bits_for.pad_value == -1)]
        bits_shift = bits_for.shift
    else:
        final = node.output if post_after is None else f"{node.output}#bconv"
        dst = pl.write(final, out_shape)
    clamp = post.clamp if post is not None else None
    ints = [n, c, h, w, conv.cout, kh, kw, sh, sw, dh, dw, pt, pll, pb, pr, int(conv.pad_value == -1)]
    ints += [int(value.packed), *bits, int(clamp is not None), 0 if table is None else table.shape[1]]
    tensors = [
        conv.packed,
        _f32(conv.shift),
        cls,
        table,
        _f32(conv.alpha),
        _f32(conv.channel_scale),
        _f32(conv.bias) if conv.gain is None else None,
        _f32(post.scale) if post is not None else None,
        _f32(post.shift) if post is not None else None,
        _f32(bits_shift),
    ]
    pl.emit(
        _Step(
            "bconv",
            [dst, src, residual, beta],
            tensors,
            ints,
            [float(clamp[0]), float(clamp[1])] if clamp is not None else [],
        )
    )
    if conv.gain is not None:
        gain = _f32(conv.gain)
        assert gain is not None
        core = tuple(d for d in gain.shape)
        while core and core[0] == 1 and len(core) > len(out_shape) - 2:
            core = core[1:]
        inner = math.prod(out_shape[2:])
        if core == tuple(out_shape[2:]):
            count = inner
        elif core == tuple(out_shape[1:]):
            count = conv.cout * inner
        else:
            raise Unplannable(f"an output gain of shape {gain.shape} over {out_shape[1:]}")
        pl.emit(
            _Step(
                "gain",
                [dst, None, None, None],
                [gain.reshape(-1), _f32(conv.bias)],
                [n, conv.cout, inner, count],
            )
        )
    if post_after is not None:
        _post_ops(pl, node, f"{node.output}#bconv", post_after)


def _post_ops(pl: Planner, node: Node, src: str, post: ops.PostOps) -> None:
    """A FusedBinaryConv whose conv ran alone: its fused nodes, one step each (PostOps.apply)."""
    current = src
    stages = [
        s
        for s, on in (
            ("affine", post.scale is not None),
            ("add", post.residual),
            ("clamp", post.clamp is not None),
        )
        if on
    ]
    for i, kind in enumerate(stages):
        name = node.output if i == len(stages) - 1 else f"{node.output}#{kind}"
        if kind == "affine":
            _affine(pl, current, name, post.scale, post.shift, None)
        elif kind == "add":
            other = node.inputs[1:]
            shape = pl.shape(current)
            if len(other) != 1 or pl.shape(other[0]) != shape:
                raise Unplannable("a broadcasting add after a binary conv")
            a, b = pl.read(current), pl.read(other[0])
            out = pl.write(name, shape)
            pl.emit(_Step("add", [out, a, b, None], ints=[math.prod(shape)]))
        else:
            assert post.clamp is not None
            _clamp(pl, current, name, float(post.clamp[0]), float(post.clamp[1]))
        current = name
    if not stages:
        pl.values[node.output] = pl.values[src]
        pl.shapes[node.output] = pl.shapes[src]


def _blinear(pl: Planner, node: Node, conv: ops.BinaryConvGemm) -> None:
    """BinaryConvGemm's linear (narrow, XNOR's beta or a gain): packed rows, the popcount GEMM
    and its float epilogue, one step."""
    x = pl.shape(node.inputs[0])
    rows, k = math.prod(x[:-1]), x[-1]
    words = -(-k // 64)
    gain = None if conv.gain is None else np.ascontiguousarray(conv.gain, dtype=np.float32)
    if gain is not None and gain.size not in (
        1,
        conv.cout,
    ):  # over more than the channels: one sample's worth
        try:
            gain = np.broadcast_to(gain, (*x[1:-1], conv.cout))
        except ValueError:
            raise Unplannable(
                f"a linear's output gain of shape {gain.shape} over {(*x[1:-1], conv.cout)}"
            ) from None
    gain = None if gain is None else np.ascontiguousarray(gain, dtype=np.float32).reshape(-1)
    src = pl.read(node.inputs[0])
    scratch = pl.scratch(rows * (8 * words + 4 * conv.cout))
    out = pl.write(node.output, (*x[:-1], conv.cout))
    tensors = [
        conv.weights_rows[0],
        _f32(conv.shift),
        _f32(conv.alpha),
        _f32(conv.channel_scale),
        gain,
        _f32(conv.bias),
    ]
    ints = [rows, k, conv.cout, words, int(conv.mean_abs), 0 if gain is None else gain.size]
    pl.emit(_Step("blinear", [out, src, None, scratch], tensors, ints))


def _bconv_linear(pl: Planner, node: Node, conv: ops.BinaryConvC) -> None:
    """BinaryConvC._linear_packed as steps: rows to planar, one 1x1 conv, planar to rows."""
    x = pl.shape(node.inputs[0])
    rows, k = math.prod(x[:-1]), x[-1]
    src = pl.read(node.inputs[0])
    planar = pl.scratch(4 * rows * k)
    pl.emit(_Step("transpose", [planar, src, None, None], ints=[1, rows, k]))
    y = pl.scratch(4 * rows * conv.cout)
    geometry = [1, k, 1, rows, conv.cout] + [1] * 6 + [0] * 4 + [0]  # a 1x1 conv over `rows` positions
    flags = [0] + [0] * 6 + [0, 0]  # float input; float output; no clamp; no correction
    tensors = [
        conv.packed_linear,
        _f32(conv.shift),
        None,
        None,
        _f32(conv.alpha),
        _f32(conv.channel_scale),
        _f32(conv.bias),
    ]
    pl.emit(_Step("bconv", [y, planar, None, None], tensors, geometry + flags))
    out = pl.write(node.output, (*x[:-1], conv.cout))
    pl.emit(_Step("transpose", [out, y, None, None], ints=[1, conv.cout, rows]))


@dataclass(frozen=True)
class PlanTables:
    """A planned graph as graph_build takes it: step and float tables, tensors, sizes in bytes."""

    steps: np.ndarray
    floats: np.ndarray
    tensors: tuple[np.ndarray, ...]
    arena: int
    input_bytes: list[int]
    output_bytes: list[int]

    def build_args(self) -> tuple:
        return self.steps, self.floats, self.tensors, self.arena, self.input_bytes, self.output_bytes


def plan_tables(graph: Graph, n: int) -> PlanTables:
    """Plan `graph` at batch size `n` (Unplannable if a node has no step) and lay out its arena."""
    planner = Planner(graph, n)
    planner.plan()
    arena = planner.layout()
    steps, floats, tensors = planner.tables()
    in_bytes = [np.dtype(s.dtype).itemsize * n * math.prod(s.shape[1:]) for s in graph.inputs]
    out_bytes = [4 * n * math.prod(s.shape[1:]) for s in graph.outputs]
    return PlanTables(steps, floats, tensors, arena, in_bytes, out_bytes)


# -- the model's native graph -----------------------------------------------------------------------
class NativeGraph:
    """A Graph run by the executor: one plan per batch size (the last PLANS_KEPT kept)."""

    def __init__(self, graph: Graph, isa: str, threads: int):
        self.graph, self.isa, self.threads = graph, isa, threads
        self._plans: OrderedDict[int, tuple[object, list[tuple[int, ...]], int, int]] = OrderedDict()

    def prepare(self, n: int) -> tuple[int, int]:
        """Plan batch size `n` now (load time: an unplannable graph fails here); (steps, arena bytes)."""
        _, _, steps, arena = self._plan(n)
        return steps, arena

    def _plan(self, n: int) -> tuple[object, list[tuple[int, ...]], int, int]:
        found = self._plans.get(n)
        if found is not None:
            self._plans.move_to_end(n)
            return found
        tables = plan_tables(self.graph, n)
        capsule = _xnor.graph_build(*tables.build_args())
        out_shapes = [(n, *s.shape[1:]) for s in self.graph.outputs]
        found = (capsule, out_shapes, len(tables.steps), tables.arena)
        self._plans[n] = found
        if len(self._plans) > PLANS_KEPT:
            self._plans.popitem(last=False)
        return found

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        arrays = [np.ascontiguousarray(a) for a in self.graph.check_inputs(inputs)]
        n = arrays[0].shape[0]
        if any(a.shape[0] != n for a in arrays):
            raise InvokeError("all inputs must have the same batch size")
        capsule, out_shapes, _, _ = self._plan(n)
        outs = [np.empty(s, np.float32) for s in out_shapes]
        try:
            _xnor.graph_run(capsule, tuple(arrays), tuple(outs), self.isa, self.threads)
        except (ValueError, MemoryError, RuntimeError) as exc:
            raise InvokeError(f"executor: {exc}") from exc
        return outs
