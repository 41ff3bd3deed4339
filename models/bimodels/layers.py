"""Binary Conv1d / Conv2d / Linear layers, and their frozen inference form.

A binary layer IS its full-precision class (isinstance still holds), with the same
`.weight` and `.bias`; the algorithm lives in `layer.binarizer` and its name in
`layer.algorithm`. `pad_value` is what a padded position means to the binary conv:
0 (true zero padding, the reference), +1 (LCE's pad_values=1) or -1 (daBNN).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal, TypeGuard, cast

from torch import Tensor, nn
from torch.nn import functional as F

from .algorithms.base import Binarizer, DeployForm, LayerGeometry, LayerKind, get_algorithm
from .ste import sign

PAD_VALUES = (0.0, 1.0, -1.0)


class BinarizationError(ValueError):
    """A layer cannot be binarized as asked (unsupported padding mode, bad pad value...)."""


if TYPE_CHECKING:
    # The mixin is only ever combined with an nn.Module (Conv1d/Conv2d/Linear); telling the
    # type checker so lets it see Module's API and `super().extra_repr()`.
    _ModuleBase = nn.Module
else:
    _ModuleBase = object


class BinaryLayerMixin(_ModuleBase):
    """Shared forward: binarize the input, binarize the weight, run the op, scale the output."""

    binarizer: Binarizer
    algorithm: str
    pad_value: float
    kind: LayerKind
    # provided by the nn.Conv1d / nn.Conv2d / nn.Linear the mixin is combined with
    weight: Tensor
    bias: Tensor | None

    if TYPE_CHECKING:
        # implemented by _BinaryConvNd and BinaryLinear
        def _in(self) -> int: ...
        def _out(self) -> int: ...
        def _op(self, s: Tensor, w: Tensor) -> Tensor: ...

    def _setup(self, algorithm: str, pad_value: float, **algo_kwargs: Any) -> None:
        if pad_value not in PAD_VALUES:
            raise BinarizationError(f"pad_value must be one of {PAD_VALUES}, got {pad_value}")
        self.algorithm, self.pad_value = algorithm, float(pad_value)
        geometry = LayerGeometry(self.kind, self._in(), self._out(), tuple(self.weight.shape))
        self.binarizer = get_algorithm(algorithm)(geometry, **algo_kwargs)
        self.binarizer.init_from_weight(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        s = self.binarizer.binarize_input(x)
        w = self.binarizer.binarize_weight(self.weight)
        y = self.binarizer.scale_output(self._op(s, w), x)
        if self.bias is not None:
            y = y + (
                self.bias
                if self.kind == "linear"
                else self.bias.reshape(self.binarizer.geometry.channel_view(-1))
            )
        return y

    def deploy_form(self) -> DeployForm:
        bias = None if self.bias is None else self.bias.detach().clone()
        return self.binarizer.deploy_form(self.weight.detach(), bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, algorithm={self.algorithm}, pad_value={self.pad_value:g}"


class _BinaryConvNd(BinaryLayerMixin):
    # provided by nn.Conv1d / nn.Conv2d (declared as in torch's _ConvNd)
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: str | tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    padding_mode: Literal["zeros", "reflect", "replicate", "circular"]

    def _in(self) -> int:
        return self.in_channels

    def _out(self) -> int:
        return self.out_channels

    def _check_conv(self) -> None:
        if self.padding_mode != "zeros":
            raise BinarizationError(f"padding_mode={self.padding_mode!r} is not supported for binary convs")

    def explicit_padding(self) -> list[int]:
        """F.pad list (last axis first) equivalent to this conv's padding."""
        if isinstance(self.padding, str):
            if self.padding == "valid":
                return [0, 0] * len(self.kernel_size)
            pads = []  # "same" (stride 1): total = d*(k-1), extra on the right
            for k, d in zip(reversed(self.kernel_size), reversed(self.dilation)):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            return pads
        return [p for p in reversed(self.padding) for _ in (0, 1)]

    def _op(self, s: Tensor, w: Tensor) -> Tensor:
        conv = F.conv1d if self.kind == "conv1d" else F.conv2d
        if self.pad_value == 0.0:
            return conv(s, w, None, self.stride, self.padding, self.dilation, self.groups)
        s = F.pad(s, self.explicit_padding(), value=self.pad_value)
        return conv(s, w, None, self.stride, 0, self.dilation, self.groups)


class BinaryConv1d(_BinaryConvNd, nn.Conv1d):
    kind = "conv1d"

    def __init__(self, *args: Any, algorithm: str, pad_value: float = 0.0, **kwargs: Any):
        nn.Conv1d.__init__(self, *args, **kwargs)
        self._check_conv()
        self._setup(algorithm, pad_value)


class BinaryConv2d(_BinaryConvNd, nn.Conv2d):
    kind = "conv2d"

    def __init__(self, *args: Any, algorithm: str, pad_value: float = 0.0, **kwargs: Any):
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._check_conv()
        self._setup(algorithm, pad_value)


# torch infers nn.Linear.bias as Parameter, but it is None for bias=False (as the mixin declares)
class BinaryLinear(BinaryLayerMixin, nn.Linear):  # type: ignore[misc]
    kind = "linear"

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, algorithm: str, **kwargs: Any
    ):
        nn.Linear.__init__(self, in_features, out_features, bias=bias, **kwargs)
        self._setup(algorithm, 0.0)

    def _in(self) -> int:
        return self.in_features

    def _out(self) -> int:
        return self.out_features

    def _op(self, s: Tensor, w: Tensor) -> Tensor:
        return F.linear(s, w)


BINARY_LAYERS = (BinaryConv1d, BinaryConv2d, BinaryLinear)


def is_binary(module: nn.Module) -> TypeGuard[BinaryLayerMixin]:
    return isinstance(module, BinaryLayerMixin)


class DeployedBinaryLayer(nn.Module):
    """A binary layer reduced to its DeployForm: plain ops, constant +/-1 weights.

    This is what every exporter sees and what the ONNX reference export contains; its
    output equals the trained layer's eval output up to float rounding.
    """

    # buffers registered in __init__ (the optional ones hold None when absent)
    weight: Tensor
    channel_scale: Tensor | None
    input_shift: Tensor | None
    output_gain: Tensor | None
    bias: Tensor | None

    def __init__(self, layer: BinaryLayerMixin):
        super().__init__()
        form = layer.deploy_form()
        self.kind, self.algorithm, self.pad_value = layer.kind, layer.algorithm, layer.pad_value
        self.form = form
        if self.kind != "linear":
            conv = cast(_BinaryConvNd, layer)  # every binary layer but BinaryLinear is a conv
            self.stride, self.dilation, self.groups = conv.stride, conv.dilation, conv.groups
            self.padding = conv.padding
            self.pads = conv.explicit_padding()
        view = layer.binarizer.geometry.channel_view
        # alpha_c is folded into the constant weights exactly as training computes
        # alpha * sign(w), so the deployed layer repeats the trained layer's float ops.
        weight = form.weight_sign.clone()
        if form.weight_scale is not None:
            weight = form.weight_scale.reshape(layer.binarizer.geometry.weight_channel_view()) * weight
        self.register_buffer("weight", weight)
        out = form.output_scale
        self._register_optional("channel_scale", None if out is None else out.reshape(view(-1)))
        shift = form.input_shift
        self._register_optional("input_shift", None if shift is None else shift.reshape(view(-1)))
        self._register_optional("output_gain", form.output_gain)
        bias = form.bias
        self._register_optional("bias", None if bias is None else bias.reshape(view(-1)))
        self.input_scale = form.input_scale

    def _register_optional(self, name: str, t: Tensor | None) -> None:
        self.register_buffer(name, None if t is None else t.clone())

    def forward(self, x: Tensor) -> Tensor:
        s = sign(x if self.input_shift is None else x + self.input_shift)
        if self.kind == "linear":
            y = F.linear(s, self.weight)
        else:
            conv = F.conv1d if self.kind == "conv1d" else F.conv2d
            if self.pad_value == 0.0:
                y = conv(s, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
            else:
                y = conv(
                    F.pad(s, self.pads, value=self.pad_value),
                    self.weight,
                    None,
                    self.stride,
                    0,
                    self.dilation,
                    self.groups,
                )
        if self.input_scale == "mean_abs":
            dims = -1 if self.kind == "linear" else tuple(range(1, x.dim()))
            y = y * x.abs().mean(dim=dims, keepdim=True)
        if self.channel_scale is not None:
            y = y * self.channel_scale
        if self.output_gain is not None:
            y = y * self.output_gain
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return f"{self.kind}, algorithm={self.algorithm}, weight={tuple(self.weight.shape)}"


def binary_macs_per_output(weight_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates behind one output element: C_in/groups * kernel."""
    return math.prod(weight_shape[1:])
