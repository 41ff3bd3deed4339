"""Trace a model into the IR: torch.fx over its deploy form, one IR node per FX node.

The model is reduced with `to_deploy` and traced with torch.fx (binary layers and standard
torch.nn modules are leaves); every FX node becomes one op of the IR's declared op set
(`bimodels.export.ir`), or tracing fails with one `ExportError` naming each operator the
target cannot express and its node. Every exporter starts here.

Values the input cannot change (a registered buffer, a slice of one by a static length,
``zeros_like(ids)`` and what is computed from it) are folded into ``constant`` nodes. Where
the batch axis goes is read off the graph run at two batch sizes, so a reshape, transpose
or expand is exported only when axis 0 stays the batch axis: the runtime then takes any
batch size.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, cast, overload

import numpy as np
import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

from biformats.bits import pack_sign_rows

from ..binarize import to_deploy
from ..layers import DeployedBinaryLayer
from . import ExportError
from .ir import IR, Node, ValueInfo


# -- tracing ----------------------------------------------------------------------------
class _Tracer(fx.Tracer):
    proxy_buffer_attributes = True  # a buffer read in forward is a get_attr node (folded later)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, DeployedBinaryLayer) or super().is_leaf_module(m, qualname)


class _Unsupported(Exception):
    """One node the format cannot express (collected, then raised as one ExportError)."""


@overload
def _f32(t: Tensor) -> np.ndarray: ...


@overload
def _f32(t: None) -> None: ...


def _f32(t: Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().to(torch.float32).cpu().numpy().copy()


def _target_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    fn = node.target
    name = getattr(fn, "__name__", str(fn))
    for prefix, mod in (("torch", torch), ("torch.nn.functional", F), ("operator", operator)):
        if getattr(mod, name, None) is fn:
            return f"{prefix}.{name}"
    return f"{getattr(fn, '__module__', None) or '?'}.{name}"


#: calls whose result depends on their tensor argument's shape only, never its values
_SHAPE_ONLY_FUNCTIONS = (torch.zeros_like, torch.ones_like, torch.full_like)
_SHAPE_ONLY_METHODS = ("size", "dim")
_SHAPE_ATTRS = ("shape", "ndim")


def _shape_only(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _SHAPE_ONLY_METHODS
    if node.op == "call_function":
        if node.target is getattr:
            return len(node.args) > 1 and node.args[1] in _SHAPE_ATTRS
        return node.target in _SHAPE_ONLY_FUNCTIONS
    return False


def constant_nodes(gm: fx.GraphModule) -> set[str]:
    """The nodes whose value the model's input cannot change: buffers and parameters read as
    values, shape queries, and anything computed from those alone."""
    const: set[str] = set()
    for node in gm.graph.nodes:
        if node.op == "get_attr" or _shape_only(node):
            const.add(node.name)
        elif node.op in ("call_function", "call_method", "call_module"):
            if all(d.name in const for d in node.all_input_nodes):
                const.add(node.name)
    return const


class _Recorder(fx.Interpreter):
    """Runs the graph, keeping every tensor's shape and the values of the nodes in `keep`."""

    def __init__(self, gm: fx.GraphModule, keep: set[str]):
        super().__init__(gm)
        self.keep = keep
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, Tensor):
            self.shapes[n.name] = tuple(out.shape)
        if n.name in self.keep:
            self.values[n.name] = out
        return out


@dataclass
class _Batched:
    """The graph run at batch sizes 2 and 3: where the batch axis is, and the folded values."""

    shapes: tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]
    values: tuple[dict[str, Any], dict[str, Any]]

    def keeps_batch_axis(self, name: str) -> bool:
        """Whether the value's axis 0 is the batch axis and nothing else depends on the batch."""
        a, b = self.shapes[0].get(name), self.shapes[1].get(name)
        return a is not None and b is not None and a[:1] == (2,) and b[:1] == (3,) and a[1:] == b[1:]


def _run_batched(gm: fx.GraphModule, example: Tensor, keep: set[str]) -> _Batched:
    shapes, values = [], []
    for n in (2, 3):
        rec = _Recorder(gm, keep)
        x = example[:1].expand(n, *example.shape[1:]).contiguous()
        try:
            with torch.no_grad():
                rec.run(x)
        except Exception as exc:  # a model that takes one batch size only
            raise _Unsupported(
                f"a reshape or constant in a model that does not run at batch size {n} ({type(exc).__name__}: {exc})"
            ) from exc
        shapes.append(rec.shapes)
        values.append(rec.values)
    return _Batched((shapes[0], shapes[1]), (values[0], values[1]))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_SCALAR_FUNCTIONS: dict[Any, str] = {
    operator.add: "add",
    operator.iadd: "add",
    torch.add: "add",
    operator.sub: "sub",
    torch.sub: "sub",
    operator.mul: "mul",
    torch.mul: "mul",
    operator.truediv: "div",
    torch.div: "div",
}
_SCALAR_METHODS = {
    "add": "add",
    "__add__": "add",
    "__radd__": "add",
    "sub": "sub",
    "__sub__": "sub",
    "__rsub__": "rsub",
    "mul": "mul",
    "__mul__": "mul",
    "__rmul__": "mul",
    "div": "div",
    "__truediv__": "div",
    "__rtruediv__": "rdiv",
}


class _Builder:
    def __init__(self, gm: fx.GraphModule, example: Tensor):
        self.gm = gm
        self.example = example
        self.consts = constant_nodes(gm)
        self.emitted_consts: set[str] = set()
        self._batched: _Batched | None = None
        self.nodes: list[Node] = []
        self.tensors: dict[str, np.ndarray] = {}
        self.alias: dict[str, str] = {}  # fx node name -> value name
        self.errors: list[str] = []

    # helpers ------------------------------------------------------------------------
    def value(self, arg: Any, node: fx.Node, constant: bool = False) -> str:
        """The IR value `arg` names. A folded constant is an operand only where `constant`
        (an op that broadcasts it over the batch); it is then emitted once."""
        if isinstance(arg, fx.Node) and arg.name in self.consts:
            if not constant:
                raise _Unsupported(f"{self.what(node)} of a constant tensor ({arg.name})")
            return self.constant(arg, node)
        if not isinstance(arg, fx.Node) or arg.name not in self.alias:
            raise _Unsupported(f"{self.what(node)} with the operand {arg!r}")
        return self.alias[arg.name]

    def batched(self) -> _Batched:
        """The graph run at batch sizes 2 and 3 (once, on first need)."""
        if self._batched is None:
            self._batched = _run_batched(self.gm, self.example, self.consts)
        return self._batched

    def constant(self, arg: fx.Node, node: fx.Node) -> str:
        if arg.name not in self.emitted_consts:
            b = self.batched()
            two, three = b.values[0].get(arg.name), b.values[1].get(arg.name)
            if not isinstance(two, Tensor) or not isinstance(three, Tensor) or not two.is_floating_point():
                raise _Unsupported(f"{self.what(node)} with the non-tensor operand {arg.name}")
            if two.shape == three.shape:
                value = two  # the batch does not change it
            elif b.keeps_batch_axis(arg.name) and bool((two == two[:1]).all()):
                value = two[:1]  # one row, broadcast over the batch by the reader
            else:
                raise _Unsupported(f"a constant that depends on the batch ({arg.name})")
            self.nodes.append(
                Node(
                    "constant",
                    arg.name,
                    [],
                    [arg.name],
                    {"value": self.tensor(f"{arg.name}.value", _f32(value))},
                )
            )
            self.emitted_consts.add(arg.name)
            self.alias[arg.name] = arg.name
        return self.alias[arg.name]

    def keep_batch(self, node: fx.Node, *names: Any) -> None:
        """Refuse a node that moves the batch axis off axis 0 or mixes it with another."""
        b = self.batched()
        for v in (node, *names):
            if isinstance(v, fx.Node) and not b.keeps_batch_axis(v.name):
                raise _Unsupported(f"{self.what(node)} that moves or merges the batch axis")

    def out_shape(self, node: fx.Node) -> list[int]:
        """The node's output shape without the batch axis."""
        self.keep_batch(node)
        return list(self.batched().shapes[0][node.name][1:])

    def what(self, node: fx.Node) -> str:
        if node.op == "call_module":
            m = type(self.gm.get_submodule(str(node.target)))
            return f"{m.__module__}.{m.__name__}".replace("torch.nn.modules.", "torch.nn.").replace(
                "bimodels.layers.", ""
            )
        return _target_name(node)

    def tensor(self, key: str, arr: np.ndarray | None) -> str | None:
        if arr is None:
            return None
        self.tensors[key] = arr
        return key

    def emit(self, node: fx.Node, op: str, inputs: list[str], **attrs: Any) -> None:
        self.nodes.append(Node(op, node.name, inputs, [node.name], attrs))
        self.alias[node.name] = node.name

    @staticmethod
    def dims(node: Any) -> tuple[int, ...]:  # an fx.Node; fx types arguments loosely
        """The node's result shape at the example input's batch size."""
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise _Unsupported(f"node {node.name} whose result is not a single tensor")
        return tuple(int(d) for d in meta.shape)

    def rank(self, node: Any) -> int:
        return len(self.dims(node))

    def axes(self, dims: Any, node: fx.Node, src: Any) -> list[int]:
        r = self.rank(src)
        if dims is None:
            return list(range(r))
        dims = [dims] if isinstance(dims, int) else list(dims)
        if not all(isinstance(d, int) and -r <= d < r for d in dims):
            raise _Unsupported(f"{_target_name(node)} over axes {dims!r}")
        return sorted({d % r for d in dims})

    @staticmethod
    def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
        if len(node.args) > index:
            return node.args[index]
        return node.kwargs.get(name, default)

    # the walk -----------------------------------------------------------------------
    def run(self) -> tuple[list[str], list[str]]:
        inputs: list[str] = []
        outputs: list[str] = []
        for node in self.gm.graph.nodes:
            if node.name in self.consts:
                continue  # emitted where a reader takes it (value(..., constant=True))
            try:
                if node.op == "placeholder":
                    self.alias[node.name] = node.name
                    inputs.append(node.name)
                elif node.op == "output":
                    outs = node.args[0]
                    outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
                    outputs = [self.value(o, node) for o in outs]
                elif node.op == "call_module":
                    self.module(node, self.gm.get_submodule(node.target))
                elif node.op == "get_attr":
                    raise _Unsupported(f"a constant tensor (get_attr {node.target})")
                else:
                    self.function(node)
            except _Unsupported as exc:
                # Later nodes read it as if it existed: report each unsupported operator once,
                # not every node downstream of it.
                self.alias.setdefault(node.name, node.name)
                if not any(e.startswith(f"{exc} (node ") for e in self.errors):
                    self.errors.append(f"{exc} (node {node.name})")
        return inputs, outputs

    # modules ------------------------------------------------------------------------
    def module(self, node: fx.Node, m: nn.Module) -> None:
        x = node.args[0] if node.args else None
        if isinstance(m, DeployedBinaryLayer):
            return self.binary(node, m)
        if isinstance(
            m, (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
        ):
            self.alias[node.name] = self.value(x, node)
            return None
        if type(m) in (nn.Conv1d, nn.Conv2d):  # exact types: a subclass may compute otherwise
            return self.conv(node, cast(nn.Conv1d | nn.Conv2d, m))
        if type(m) is nn.Linear:
            return self.emit(
                node,
                "linear",
                [self.value(x, node)],
                weight=self.tensor(f"{node.name}.weight", _f32(m.weight)),
                bias=self.tensor(f"{node.name}.bias", _f32(m.bias)),
            )
        if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d):
            return self.batch_norm(node, cast(nn.modules.batchnorm._BatchNorm, m))
        if type(m) is nn.ReLU:
            return self.emit(node, "relu", [self.value(x, node)])
        if type(m) is nn.Hardtanh:
            return self.emit(
                node, "hardtanh", [self.value(x, node)], min_val=float(m.min_val), max_val=float(m.max_val)
            )
        if type(m) is nn.PReLU:
            return self.emit(
                node,
                "prelu",
                [self.value(x, node)],
                weight=self.tensor(f"{node.name}.weight", _f32(m.weight).reshape(-1)),
            )
        if type(m) in (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d):
            return self.pool(node, m)
        if type(m) in (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d):
            nd = 1 if type(m) is nn.AdaptiveAvgPool1d else 2
            size = m.output_size if isinstance(m.output_size, (tuple, list)) else (m.output_size,) * nd
            if any(s != 1 for s in size):
                raise _Unsupported(
                    f"{type(m).__name__}(output_size={m.output_size}) (only global pooling, output size 1)"
                )
            r = self.rank(node.args[0])
            return self.emit(
                node, "reduce_mean", [self.value(x, node)], axes=list(range(r - nd, r)), keepdims=True
            )
        if type(m) is nn.Flatten:
            return self.flatten(node, x, m.start_dim, m.end_dim)
        if type(m) is nn.Embedding:
            if m.max_norm is not None:
                raise _Unsupported("torch.nn.Embedding with max_norm (it renormalises its weights when run)")
            return self.emit(
                node,
                "embedding",
                [self.value(x, node)],
                weight=self.tensor(f"{node.name}.weight", _f32(m.weight)),
            )
        if type(m) is nn.LayerNorm:
            return self.emit(
                node,
                "layer_norm",
                [self.value(x, node)],
                normalized_shape=[int(d) for d in m.normalized_shape],
                weight=self.tensor(f"{node.name}.weight", _f32(m.weight)),
                bias=self.tensor(f"{node.name}.bias", _f32(getattr(m, "bias", None))),
                eps=float(m.eps),
            )
        if type(m) is nn.GELU:
            return self.gelu(node, x, m.approximate)
        if type(m) is nn.Tanh:
            return self.emit(node, "tanh", [self.value(x, node)])
        if type(m) is nn.Softmax:
            return self.softmax(node, x, m.dim)
        raise _Unsupported(self.what(node))

    def conv(self, node: fx.Node, m: nn.Conv1d | nn.Conv2d) -> None:
        if m.padding_mode != "zeros":
            raise _Unsupported(f"{type(m).__name__} with padding_mode={m.padding_mode!r}")
        nd = len(m.kernel_size)
        if isinstance(m.padding, str):
            pads = []
            for k, d in zip(m.kernel_size, m.dilation):
                total = 0 if m.padding == "valid" else d * (k - 1)
                pads.append([total // 2, total - total // 2])
        else:
            pads = [[int(p), int(p)] for p in m.padding]
        self.emit(
            node,
            "conv",
            [self.value(node.args[0], node)],
            weight=self.tensor(f"{node.name}.weight", _f32(m.weight)),
            bias=self.tensor(f"{node.name}.bias", _f32(m.bias)),
            stride=list(m.stride)[:nd],
            dilation=list(m.dilation)[:nd],
            pads=pads,
            groups=int(m.groups),
        )

    def binary(self, node: fx.Node, m: DeployedBinaryLayer) -> None:
        form = m.form
        signs = form.weight_sign.detach().cpu().numpy()
        if not np.all(np.abs(signs) == 1):
            raise _Unsupported(f"DeployedBinaryLayer whose weight_sign is not +/-1 ({m.algorithm})")
        if form.extra:
            raise _Unsupported(f"DeployedBinaryLayer with DeployForm.extra {sorted(form.extra)}")
        if m.input_scale not in (None, "mean_abs"):
            raise _Unsupported(f"DeployedBinaryLayer with input_scale={m.input_scale!r}")
        bits, k = pack_sign_rows(signs)
        name = node.name
        attrs: dict[str, Any] = {
            "kind": m.kind,
            "weight_bits": self.tensor(f"{name}.weight_bits", bits),
            "weight_shape": list(signs.shape),
            "k": k,
        }
        if m.kind != "linear":
            nd = signs.ndim - 2
            pads = [[int(m.pads[2 * (nd - 1 - i)]), int(m.pads[2 * (nd - 1 - i) + 1])] for i in range(nd)]
            attrs.update(
                stride=[int(s) for s in m.stride],
                dilation=[int(d) for d in m.dilation],
                pads=pads,
                groups=int(m.groups),
                pad_value=int(m.pad_value),
            )
        flat = lambda t: None if t is None else _f32(t).reshape(-1)  # noqa: E731
        attrs.update(
            input_shift=self.tensor(f"{name}.input_shift", flat(m.input_shift)),
            input_scale=m.input_scale,
            weight_scale=self.tensor(f"{name}.weight_scale", flat(form.weight_scale)),
            channel_scale=self.tensor(f"{name}.channel_scale", flat(m.channel_scale)),
            output_gain=self.tensor(f"{name}.output_gain", _f32(m.output_gain)),
            bias=self.tensor(f"{name}.bias", flat(m.bias)),
        )
        self.emit(node, "binary_conv", [self.value(node.args[0], node)], **attrs)

    def batch_norm(self, node: fx.Node, m: nn.modules.batchnorm._BatchNorm) -> None:
        if m.running_mean is None or m.running_var is None:
            raise _Unsupported(f"{type(m).__name__} without running statistics (track_running_stats=False)")
        c = m.num_features
        mean, var = _f32(m.running_mean), _f32(m.running_var)
        weight = _f32(m.weight) if m.weight is not None else np.ones(c, np.float32)
        bias = _f32(m.bias) if m.bias is not None else np.zeros(c, np.float32)
        # torch (CPU, eval): invstd = 1 / sqrt(var + eps); alpha = invstd * weight;
        # beta = bias - mean * alpha as one fused multiply-add; all float32.
        invstd = np.float32(1) / np.sqrt(var + np.float32(m.eps))
        scale = (invstd * weight).astype(np.float32)
        shift = (bias.astype(np.float64) - mean.astype(np.float64) * scale).astype(np.float32)
        self.emit(
            node,
            "channel_affine",
            [self.value(node.args[0], node)],
            scale=self.tensor(f"{node.name}.scale", scale),
            shift=self.tensor(f"{node.name}.shift", shift),
        )

    def pool(self, node: fx.Node, m: nn.Module) -> None:
        nd = 2 if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) else 1
        tup = lambda v: [int(i) for i in v] if isinstance(v, (tuple, list)) else [int(v)] * nd  # noqa: E731
        if m.ceil_mode:
            raise _Unsupported(f"{type(m).__name__} with ceil_mode=True")
        kernel, stride = tup(m.kernel_size), tup(m.stride if m.stride is not None else m.kernel_size)
        pads = [[p, p] for p in tup(m.padding)]
        x = [self.value(node.args[0], node)]
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
            if m.return_indices:
                raise _Unsupported(f"{type(m).__name__} with return_indices=True")
            return self.emit(
                node, "max_pool", x, kernel=kernel, stride=stride, pads=pads, dilation=tup(m.dilation)
            )
        if getattr(m, "divisor_override", None):
            raise _Unsupported(f"{type(m).__name__} with divisor_override")
        return self.emit(
            node,
            "avg_pool",
            x,
            kernel=kernel,
            stride=stride,
            pads=pads,
            count_include_pad=bool(m.count_include_pad),
        )

    def flatten(self, node: fx.Node, x: Any, start: Any, end: Any) -> None:
        start, end = self.axes(start, node, x)[0], self.axes(end, node, x)[0]
        if start > end:
            raise _Unsupported(f"{self.what(node)} with start_dim > end_dim")
        self.emit(node, "flatten", [self.value(x, node)], start=start, end=end)

    # functions and methods ----------------------------------------------------------
    def function(self, node: fx.Node) -> None:
        t, op = node.target, node.op
        meth = t if op == "call_method" else None
        x = node.args[0] if node.args else None
        fn = _SCALAR_FUNCTIONS.get(t) if op == "call_function" else _SCALAR_METHODS.get(str(meth))
        if fn is not None:
            return self.arithmetic(node, fn)
        if t in (torch.matmul, torch.bmm, operator.matmul) or meth in ("matmul", "bmm", "__matmul__"):
            a, b = node.args[0], node.args[1]
            if len(self.dims(a)) < 3 or len(self.dims(b)) < 3:
                raise _Unsupported(
                    f"{_target_name(node)} of a rank-2 operand (the batch axis would be a matrix axis)"
                )
            self.keep_batch(node, a, b)
            return self.emit(node, "matmul", [self.value(a, node), self.value(b, node)])
        if (
            t in (torch.reshape,)
            or meth in ("view", "reshape", "unsqueeze", "squeeze")
            or t
            in (
                torch.unsqueeze,
                torch.squeeze,
            )
        ):
            self.keep_batch(node, x)
            return self.emit(node, "reshape", [self.value(x, node)], shape=self.out_shape(node))
        if t in (torch.transpose, torch.swapaxes) or meth in ("transpose", "swapaxes"):
            r = len(self.dims(x))
            d0, d1 = (
                self.axes(self.arg(node, 1, "dim0"), node, x),
                self.axes(self.arg(node, 2, "dim1"), node, x),
            )
            perm = list(range(r))
            perm[d0[0]], perm[d1[0]] = perm[d1[0]], perm[d0[0]]
            return self.transpose(node, x, perm)
        if t is torch.permute or meth == "permute":
            dims: Any = (
                node.args[1:] if meth == "permute" and len(node.args) > 2 else self.arg(node, 1, "dims")
            )
            r = len(self.dims(x))
            if (
                not isinstance(dims, (list, tuple))
                or not all(isinstance(d, int) and -r <= d < r for d in dims)
                or sorted(d % r for d in dims) != list(range(r))
            ):
                raise _Unsupported(f"{_target_name(node)} with dims {dims!r}")
            return self.transpose(node, x, [d % r for d in dims])
        if meth in ("expand", "expand_as"):
            if len(self.dims(node)) != len(self.dims(x)):
                raise _Unsupported(f"{_target_name(node)} that adds leading axes")
            self.keep_batch(node, x)
            return self.emit(node, "expand", [self.value(x, node)], shape=self.out_shape(node))
        if t in (torch.softmax, F.softmax) or meth == "softmax":
            if self.arg(node, 2, "dtype") is not None:
                raise _Unsupported(f"{_target_name(node)} with dtype")
            return self.softmax(node, x, self.arg(node, 1, "dim"))
        if t is F.gelu or meth == "gelu":
            return self.gelu(node, x, node.kwargs.get("approximate", "none"))
        if t in (torch.tanh, F.tanh) or meth == "tanh":
            return self.emit(node, "tanh", [self.value(x, node)])
        if (
            t is operator.getitem
            and isinstance(x, fx.Node)
            and x.name not in self.consts
            and "custom_max_values" not in x.meta
        ):
            return self.index(node, x, node.args[1])
        if t in (torch.cat, torch.concat, getattr(torch, "concatenate", None)):
            tensors = self.arg(node, 0, "tensors")
            first = tensors[0] if isinstance(tensors, (list, tuple)) and tensors else None
            if not isinstance(first, fx.Node):
                raise _Unsupported(f"{_target_name(node)} of {tensors!r}")
            dim = self.arg(node, 1, "dim", self.arg(node, 1, "axis", 0))
            return self.emit(
                node, "concat", [self.value(v, node) for v in tensors], axis=self.axes(dim, node, first)[0]
            )
        if t is torch.flatten or meth == "flatten":
            return self.flatten(node, x, self.arg(node, 1, "start_dim", 0), self.arg(node, 2, "end_dim", -1))
        if t in (torch.relu, F.relu) or meth == "relu":
            return self.emit(node, "relu", [self.value(x, node)])
        if t is F.hardtanh:
            lo, hi = self.arg(node, 1, "min_val", -1.0), self.arg(node, 2, "max_val", 1.0)
            return self.emit(node, "hardtanh", [self.value(x, node)], min_val=float(lo), max_val=float(hi))
        if t is F.dropout or meth in ("contiguous", "clone"):
            self.alias[node.name] = self.value(x, node)
            return None
        if t is torch.mean or meth == "mean":
            if node.kwargs.get("dtype") is not None:
                raise _Unsupported(f"{_target_name(node)} with dtype")
            dims = self.axes(self.arg(node, 1, "dim"), node, x)
            return self.emit(
                node,
                "reduce_mean",
                [self.value(x, node)],
                axes=dims,
                keepdims=bool(self.arg(node, 2, "keepdim", False)),
            )
        if t is torch.amax or meth == "amax":
            dim = self.arg(node, 1, "dim", ())
            dims = self.axes(None if dim in ((), []) else dim, node, x)
            return self.emit(
                node,
                "reduce_max",
                [self.value(x, node)],
                axes=dims,
                keepdims=bool(self.arg(node, 2, "keepdim", False)),
            )
        if t is torch.max or meth == "max":
            return self.max_over_dim(node, x)
        if t is operator.getitem or (t is getattr and len(node.args) > 1 and node.args[1] == "values"):
            src = node.args[0]
            if (
                isinstance(src, fx.Node)
                and src.meta.get("custom_max_values")
                and (t is getattr or node.args[1] == 0)
            ):
                self.alias[node.name] = self.value(src, node)
                return None
        raise _Unsupported(_target_name(node))

    def arithmetic(self, node: fx.Node, fn: str) -> None:
        """Tensor + tensor (add), or a tensor and a Python number (scalar)."""
        if node.kwargs.get("alpha", 1) != 1 or node.kwargs.get("rounding_mode") is not None:
            raise _Unsupported(f"{_target_name(node)} with {dict(node.kwargs)}")
        a: Any = node.args[0]
        b: Any = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
        if _number(a) and isinstance(b, fx.Node):  # torch.sub(2, x), 2 - x
            a, b, fn = b, a, {"sub": "rsub", "div": "rdiv"}.get(fn, fn)
        if isinstance(a, fx.Node) and _number(b):
            if a.name in self.consts:
                raise _Unsupported(f"{_target_name(node)} of a constant tensor ({a.name})")
            return self.emit(node, "scalar", [self.value(a, node)], fn=fn, value=float(b))
        if fn != "add":
            raise _Unsupported(f"{_target_name(node)} of two tensors")
        if (
            isinstance(a, fx.Node)
            and isinstance(b, fx.Node)
            and a.name in self.consts
            and b.name in self.consts
        ):
            raise _Unsupported(f"{_target_name(node)} of two constants")
        return self.emit(
            node, "add", [self.value(a, node, constant=True), self.value(b, node, constant=True)]
        )

    def transpose(self, node: fx.Node, x: Any, perm: list[int]) -> None:
        if perm[0] != 0:
            raise _Unsupported(f"{_target_name(node)} that moves the batch axis")
        if perm == sorted(perm):
            self.alias[node.name] = self.value(x, node)
            return None
        return self.emit(node, "transpose", [self.value(x, node)], perm=perm)

    def softmax(self, node: fx.Node, x: Any, dim: Any) -> None:
        if dim is None:
            raise _Unsupported(f"{_target_name(node)} without dim")
        axis = self.axes(dim, node, x)[0]
        if axis == 0:
            raise _Unsupported(f"{_target_name(node)} over the batch axis")
        return self.emit(node, "softmax", [self.value(x, node)], axis=axis)

    def gelu(self, node: fx.Node, x: Any, approximate: Any) -> None:
        if approximate not in ("none", "tanh"):
            raise _Unsupported(f"GELU with approximate={approximate!r}")
        return self.emit(node, "gelu", [self.value(x, node)], approximate=str(approximate))

    def index(self, node: fx.Node, x: fx.Node, idx: Any) -> None:
        """x[...] with ints and slices after a full slice of the batch axis: one select or
        slice node per indexed axis (right to left, so the axes to the left keep their numbers)."""
        items = list(idx) if isinstance(idx, tuple) else [idx]
        dims = self.dims(x)
        if (
            not items
            or items[0] != slice(None)
            or len(items) > len(dims)
            or not all(
                isinstance(i, slice) or (isinstance(i, int) and not isinstance(i, bool)) for i in items
            )
        ):
            raise _Unsupported(f"indexing with {idx!r} (only ints and slices, the batch axis whole)")
        steps: list[tuple[str, dict[str, int]]] = []
        for axis in range(len(items) - 1, 0, -1):
            i, size = items[axis], dims[axis]
            if isinstance(i, int):
                if not -size <= i < size:
                    raise _Unsupported(f"index {i} out of range for axis {axis} of size {size}")
                steps.append(("select", {"axis": axis, "index": i % size}))
                continue
            if not all(
                v is None or (isinstance(v, int) and not isinstance(v, bool))
                for v in (i.start, i.stop, i.step)
            ):
                raise _Unsupported(f"a slice with non-constant bounds {i!r}")
            r = range(size)[i]
            if r.step < 1 or len(r) == 0:
                raise _Unsupported(f"the slice {i!r} of an axis of size {size} (reversed or empty)")
            if (r.start, r.stop, r.step) != (0, size, 1):
                steps.append(
                    (
                        "slice",
                        {"axis": axis, "start": r.start, "stop": r.start + len(r) * r.step, "step": r.step},
                    )
                )
        src = self.value(x, node)
        if not steps:
            self.alias[node.name] = src
            return None
        for k, (op, attrs) in enumerate(steps):
            name = node.name if k == len(steps) - 1 else f"{node.name}.{k}"
            self.nodes.append(Node(op, name, [src], [name], attrs))
            src = name
        self.alias[node.name] = node.name
        return None

    def max_over_dim(self, node: fx.Node, x: Any) -> None:
        dim = self.arg(node, 1, "dim")
        if not isinstance(dim, int):
            raise _Unsupported(f"{_target_name(node)} other than a reduction over one dim")
        users = list(node.users)
        if not all(
            (u.target is operator.getitem and u.args[1] == 0)
            or (u.target is getattr and u.args[1] == "values")
            for u in users
        ):
            raise _Unsupported(f"{_target_name(node)} whose indices are used")
        node.meta["custom_max_values"] = True
        self.emit(
            node,
            "reduce_max",
            [self.value(x, node)],
            axes=self.axes(dim, node, x),
            keepdims=bool(self.arg(node, 2, "keepdim", False)),
        )


def _rename(nodes: list[Node], old: str, new: str) -> None:
    for n in nodes:
        n.inputs = [new if v == old else v for v in n.inputs]
        n.outputs = [new if v == old else v for v in n.outputs]


_INPUT_DTYPES = {torch.float32: "float32", torch.int64: "int64"}


def trace_ir(
    model: nn.Module,
    example_input: Tensor,
    runtime: str = "custom runtime",
    input_dtypes: tuple[str, ...] = ("float32", "int64"),
) -> IR:
    """Reduce `model` to its deploy form and trace it into the IR.

    `runtime` names the target in error messages ("larq (LCE)", "daBNN", ...); `input_dtypes`
    are the input dtypes it takes (int64: token ids, read by an embedding).
    """
    dtype = _INPUT_DTYPES.get(getattr(example_input, "dtype", None))  # type: ignore[arg-type]
    if not isinstance(example_input, Tensor) or dtype not in input_dtypes:
        have = getattr(example_input, "dtype", type(example_input).__name__)
        want = " or ".join(input_dtypes)
        raise ExportError(
            f"{runtime} takes one {want} input tensor; the example input for {type(model).__name__} is {have}"
        )
    if example_input.dim() < 1:
        raise ExportError(f"{runtime} needs an input with a batch axis")
    deployed = to_deploy(model)
    try:
        graph = _Tracer().trace(deployed)
    except Exception as exc:  # fx raises many types on data-dependent Python
        raise ExportError(
            f"{runtime} cannot trace {type(model).__name__} with torch.fx (the format needs a static graph: "
            f"no data-dependent shapes or control flow): {type(exc).__name__}: {exc}"
        ) from exc
    gm = fx.GraphModule(deployed, graph)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input)
    except Exception as exc:
        raise ExportError(
            f"{runtime} could not run {type(model).__name__} on the example input: {exc}"
        ) from exc
    builder = _Builder(gm, example_input)
    inputs, outputs = builder.run()
    if builder.errors:
        builder.errors.sort(key=lambda e: e.startswith("a constant"))  # operators first
        more = f"; also: {'; '.join(builder.errors[1:])}" if len(builder.errors) > 1 else ""
        raise ExportError(f"{runtime} cannot express {builder.errors[0]}{more}")
    if len(inputs) != 1:
        raise ExportError(
            f"{runtime} exports models with exactly one input, {type(model).__name__} has {len(inputs)}"
        )
    nodes = builder.nodes
    produced = {n.output for n in nodes}
    for i, out in enumerate(outputs):  # an output that is an input (or repeated) gets its own node
        if out not in produced or outputs.index(out) != i:
            nodes.append(Node("identity", f"output_{i}", [out], [f"output_{i}"]))
            outputs[i] = f"output_{i}"
    names = {n.name for n in nodes} | {n.output for n in nodes}
    if "input" not in names:
        _rename(nodes, inputs[0], "input")
        outputs = ["input" if o == inputs[0] else o for o in outputs]
        inputs = ["input"]
    if len(outputs) == 1 and "output" not in names:
        _rename(nodes, outputs[0], "output")
        outputs = ["output"]
    used = {key for n in nodes for key in n.tensor_keys()}
    tensors = {k: v for k, v in builder.tensors.items() if k in used}
    ins = [ValueInfo(inputs[0], [int(s) for s in example_input.shape], str(dtype))]
    return IR(ins, outputs, nodes, tensors)


__all__ = ["trace_ir"]
