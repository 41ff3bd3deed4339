"""What every binarization algorithm provides, and the inference form all exporters read.

An algorithm is a `Binarizer`: a small nn.Module attached to one binary layer as
`layer.binarizer`. It holds the algorithm's extra parameters (thresholds, scales, noise
MLPs) and says how the layer's input, weight and output are transformed. The layer itself
keeps `.weight` (latent real weights) and `.bias`, so optimisers and checkpoints see the
same names as the full-precision model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from torch import Tensor, nn

from ..registry import Registry
from ..ste import sign

LayerKind = Literal["conv1d", "conv2d", "linear"]


@dataclass(frozen=True)
class LayerGeometry:
    """The facts about a layer an algorithm needs to size its parameters."""

    kind: LayerKind
    in_channels: int
    out_channels: int
    weight_shape: tuple[int, ...]

    @property
    def input_channel_axis(self) -> int:
        """Axis of an input/output tensor that holds channels (features for linear)."""
        return -1 if self.kind == "linear" else 1

    def channel_view(self, channels: int) -> tuple[int, ...]:
        """Shape that broadcasts a per-channel vector over this layer's inputs/outputs."""
        if self.kind == "linear":
            return (channels,)
        return (1, channels) + (1,) * (len(self.weight_shape) - 2)

    def weight_channel_view(self) -> tuple[int, ...]:
        """Shape that broadcasts a per-output-channel vector over the weight."""
        return (self.out_channels,) + (1,) * (len(self.weight_shape) - 1)


@dataclass
class DeployForm:
    """A binary layer after training, as every runtime sees it.

    y = bias + gain_spatial * out_scale[c] * weight_scale[c] * input_scale(x)
            * op(pad(sign(x + input_shift)), weight_sign)

    Every field that is None is absent work. Exporters map each present field onto their
    runtime's ops or refuse; the complexity counter charges the extra FP work.
    """

    weight_sign: Tensor  # +/-1, the layer's weight shape
    weight_scale: Tensor | None = None  # (C_out,) alpha_c, foldable into the next affine
    input_shift: Tensor | None = None  # (C_in,) ReActNet's b: sign(x + b)
    input_scale: Literal["mean_abs"] | None = None  # XNOR-Net's beta, computed from every input
    output_scale: Tensor | None = None  # (C_out,) learnable per-channel scale (ReCU, XNOR++'s o)
    output_gain: Tensor | None = None  # XNOR++'s spatial h*v, shape of the output without batch/channel
    bias: Tensor | None = None
    extra: dict = field(default_factory=dict)


class Binarizer(nn.Module):
    """Base class: binary weights and binary activations with their gradient estimators."""

    name: ClassVar[str]
    paper: ClassVar[str] = ""
    #: True when parameters depend on the layer's output size (XNOR-Net++'s Gamma).
    needs_output_shape: ClassVar[bool] = False
    #: Set on every binarizer only while `binarize` runs its sizing forward pass; absent otherwise.
    probing: bool

    def __init__(self, geometry: LayerGeometry):
        super().__init__()
        self.geometry = geometry

    # -- training-time forward, with gradient estimators -------------------------------
    def binarize_input(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def binarize_weight(self, w: Tensor) -> Tensor:
        raise NotImplementedError

    def scale_output(self, y: Tensor, x: Tensor) -> Tensor:
        """Output-side work: per-sample, per-channel or spatial scales. `x` is the raw input."""
        return y

    # -- hooks ------------------------------------------------------------------------
    def set_output_shape(self, shape: tuple[int, ...]) -> None:
        """Called once by `binarize` with the output shape (batch dim included)."""

    def init_from_weight(self, w: Tensor) -> None:
        """Data-dependent initialisation from the latent weights (ReCU's alpha)."""

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Per-epoch schedule (ReCU's tau, FDA's n and lambda); most algorithms have none."""

    # -- inference form ---------------------------------------------------------------
    def deploy_form(self, weight: Tensor, bias: Tensor | None) -> DeployForm:
        raise NotImplementedError

    # -- helpers shared by the algorithms ---------------------------------------------
    def channel_mean_abs(self, w: Tensor) -> Tensor:
        """alpha_c = mean |w_c| per output channel, detached, shaped to broadcast over w."""
        return w.detach().abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)

    def extra_repr(self) -> str:
        return f"{self.name}"


ALGORITHMS: Registry[type[Binarizer]] = Registry("algorithm")


def register_algorithm(cls: type[Binarizer]) -> type[Binarizer]:
    return ALGORITHMS.register(cls.name)(cls)


def list_algorithms() -> list[str]:
    return ALGORITHMS.names()


def get_algorithm(name: str) -> type[Binarizer]:
    return ALGORITHMS.get(name)


def flat_channel(t: Tensor | None) -> Tensor | None:
    """A broadcast-shaped per-channel tensor as a plain (C,) vector (detached copy)."""
    return None if t is None else t.detach().reshape(-1).clone()


def signed(w: Tensor) -> Tensor:
    return sign(w.detach())
