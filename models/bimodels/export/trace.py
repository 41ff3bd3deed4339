"""Trace a model into the IR: torch.fx over its deploy form, one IR node per FX node.

The model is reduced with `to_deploy` and traced with torch.fx (binary layers and standard
torch.nn modules are leaves); every FX node becomes one op of the IR's declared op set
(`bimodels.export.ir`), or tracing fails with one `ExportError` naming each operator the
target cannot express and its node. Every exporter starts here.
"""

from __future__ import annotations

import operator
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


class _Builder:
    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.nodes: list[Node] = []
        self.tensors: dict[str, np.ndarray] = {}
        self.alias: dict[str, str] = {}  # fx node name -> value name
        self.errors: list[str] = []

    # helpers ------------------------------------------------------------------------
    def value(self, arg: Any, node: fx.Node) -> str:
        if not isinstance(arg, fx.Node) or arg.name not in self.alias:
            raise _Unsupported(f"{self.what(node)} with the operand {arg!r}")
        return self.alias[arg.name]

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
    def rank(node: Any) -> int:  # an fx.Node; fx types arguments loosely
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise _Unsupported(f"node {node.name} whose result is not a single tensor")
        return len(meta.shape)

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
        if t in (operator.add, operator.iadd, torch.add) or meth in ("add", "__add__"):
            alpha = node.kwargs.get("alpha", 1)
            a, b = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
            if alpha != 1:
                raise _Unsupported(f"{_target_name(node)} with alpha={alpha!r}")
            return self.emit(node, "add", [self.value(a, node), self.value(b, node)])
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


def trace_ir(model: nn.Module, example_input: Tensor, runtime: str = "custom runtime") -> IR:
    """Reduce `model` to its deploy form and trace it into the IR.

    `runtime` names the target in error messages ("larq (LCE)", "daBNN", ...).
    """
    if not isinstance(example_input, Tensor) or example_input.dtype != torch.float32:
        dtype = getattr(example_input, "dtype", type(example_input).__name__)
        raise ExportError(
            f"{runtime} takes one float32 input tensor; the example input for {type(model).__name__} is {dtype}"
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
    builder = _Builder(gm)
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
    ins = [ValueInfo(inputs[0], [int(s) for s in example_input.shape])]
    return IR(ins, outputs, nodes, tensors)


__all__ = ["trace_ir"]
