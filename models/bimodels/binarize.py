"""One call from a full-precision network to a binarized one: `binarize(model, "bnn")`.

Every Conv1d / Conv2d / Linear is replaced at the same attribute path by its binary
counterpart, except the layers the architecture keeps full precision (stem, classifier,
1x1 downsample convs...) or those the caller names. Latent weights and biases are kept.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .algorithms.base import get_algorithm
from .architectures.registry import example_input as arch_example_input
from .layers import (
    BinarizationError,
    BinaryConv1d,
    BinaryConv2d,
    BinaryLayerMixin,
    BinaryLinear,
    DeployedBinaryLayer,
    is_binary,
)

_FP_TYPES: dict[type[nn.Module], type[BinaryLayerMixin]] = {
    nn.Conv1d: BinaryConv1d,
    nn.Conv2d: BinaryConv2d,
    nn.Linear: BinaryLinear,
}


def default_full_precision_layers(model: nn.Module) -> list[str]:
    """The layers the architecture marks full precision (none for an unknown model)."""
    fn = getattr(model, "full_precision_layers", None)
    return list(fn()) if callable(fn) else []


def binarizable_layers(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if type(m) in _FP_TYPES]


def binarize(
    model: nn.Module,
    algorithm: str,
    *,
    fp_layers: Iterable[str] | None = None,
    pad_value: float = 0.0,
    example_input: Tensor | None = None,
    swap_activations: bool = True,
    inplace: bool = False,
) -> nn.Module:
    """Return `model` with its binarizable layers replaced by `algorithm`'s binary layers.

    fp_layers: names kept full precision; None means the architecture's default
        (`model.full_precision_layers()`). Unknown names are an error, not a silent no-op.
    pad_value: what padded positions of a binary conv are: 0 (exact zero padding),
        +1 (Larq's pad_values=1) or -1 (daBNN); trainable either way.
    example_input: needed by algorithms whose parameters depend on the output size
        (XNOR-Net++); defaults to the architecture's example input.
    swap_activations: apply the architecture's activation swaps (ReLU -> Hardtanh).
    """
    get_algorithm(algorithm)  # unknown names fail before any work, listing the known ones
    already = {m.algorithm for m in model.modules() if is_binary(m)}
    if already:
        raise BinarizationError(
            f"model is already binarized ({', '.join(sorted(already))}); binarize the full-precision model"
        )
    if not inplace:
        model = copy.deepcopy(model)
    candidates = binarizable_layers(model)
    keep = set(default_full_precision_layers(model) if fp_layers is None else fp_layers)
    unknown = keep - set(candidates)
    if unknown:
        raise BinarizationError(
            f"fp_layers names no Conv1d/Conv2d/Linear layer: {', '.join(sorted(unknown))}"
        )
    swaps = _activation_swaps(model) if swap_activations else {}
    for name in candidates:
        if name not in keep:
            _set_submodule(model, name, _binary_copy(model.get_submodule(name), algorithm, pad_value))
    for name, factory in swaps.items():
        _set_submodule(model, name, factory())
    if any(l.binarizer.needs_output_shape for l in binary_layers(model)):
        _size_outputs(model, example_input)
    # torch's stubs only allow Tensor | Module values for Module attributes
    model.binarized_with = algorithm  # type: ignore[assignment]
    return model


def binary_layers(model: nn.Module) -> list[BinaryLayerMixin]:
    return [m for m in model.modules() if is_binary(m)]


def set_epoch(model: nn.Module, epoch: int, epochs: int) -> None:
    """Drive every per-epoch schedule (ReCU's tau, FDA's n and lambda); call once per epoch."""
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch must be in [0, {epochs}), got {epoch}")
    for layer in binary_layers(model):
        layer.binarizer.set_epoch(epoch, epochs)


def to_deploy(model: nn.Module) -> nn.Module:
    """An eval-mode copy whose binary layers are `DeployedBinaryLayer`s (plain ops only)."""
    model = copy.deepcopy(model).eval()
    for name, m in list(model.named_modules()):
        if is_binary(m):
            _set_submodule(model, name, DeployedBinaryLayer(m))
    return model


def _binary_copy(m: nn.Module, algorithm: str, pad_value: float) -> BinaryLayerMixin:
    factory = _FP_TYPES[type(m)]
    assert isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))  # exactly the keys of _FP_TYPES
    with torch.device(m.weight.device):
        if isinstance(m, nn.Linear):
            new = factory(
                m.in_features,
                m.out_features,
                bias=m.bias is not None,
                algorithm=algorithm,
                dtype=m.weight.dtype,
            )
        else:
            new = factory(
                m.in_channels,
                m.out_channels,
                m.kernel_size,
                stride=m.stride,
                padding=m.padding,
                dilation=m.dilation,
                groups=m.groups,
                bias=m.bias is not None,
                padding_mode=m.padding_mode,
                algorithm=algorithm,
                pad_value=pad_value,
                dtype=m.weight.dtype,
            )
    new.weight = m.weight
    new.bias = m.bias
    new.binarizer.init_from_weight(new.weight)
    new.train(m.training)
    return new


def _activation_swaps(model: nn.Module) -> dict[str, Callable[[], nn.Module]]:
    fn = getattr(model, "binary_activation_swaps", None)
    return dict(fn()) if callable(fn) else {}


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


@contextmanager
def _probing(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    for layer in binary_layers(model):
        layer.binarizer.probing = True
    try:
        model.eval()
        yield
    finally:
        for layer in binary_layers(model):
            layer.binarizer.probing = False
        model.train(was_training)


def _size_outputs(model: nn.Module, example: Tensor | None) -> None:
    if example is None:
        if getattr(model, "arch_info", None) is None:
            raise BinarizationError(
                "this algorithm sizes parameters by the output shape: pass example_input=..."
            )
        example = arch_example_input(model)
    with _probing(model), torch.no_grad():
        model(example)
