"""Architecture registry: `create_model(name)` and the facts the benchmark needs about each.

An architecture is a builder function registered with `@register_model(...)`; the function
name is the public name. Its metadata (family, task, input) lets the tracks and exporters
make a valid example input without knowing the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..registry import Registry


@dataclass(frozen=True)
class ArchInfo:
    """What the benchmark knows about an architecture before building it."""

    name: str
    family: str  # BiBench's architecture families: "cnn", "mlp", "transformer"
    task: str  # "image_classification", "point_cloud_classification", ...
    input_shape: tuple[int, ...]  # without the batch dimension
    num_classes: int
    input_dtype: str = "float32"  # "int64" for token ids
    vocab_size: int | None = None  # for token inputs: ids are drawn from [0, vocab_size)
    output_shape: tuple[int, ...] = ()  # without the batch dimension; () means (num_classes,)
    builder: Callable[..., nn.Module] = field(default=None, repr=False, compare=False)  # type: ignore[assignment]


ARCHITECTURES: Registry[ArchInfo] = Registry("architecture")


def register_model(
    *,
    family: str,
    task: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    input_dtype: str = "float32",
    vocab_size: int | None = None,
    output_shape: tuple[int, ...] = (),
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        info = ArchInfo(
            fn.__name__,
            family,
            task,
            tuple(input_shape),
            num_classes,
            input_dtype,
            vocab_size,
            tuple(output_shape) or (num_classes,),
            fn,
        )
        ARCHITECTURES.register(fn.__name__)(info)
        return fn

    return decorator


def list_architectures() -> list[str]:
    return ARCHITECTURES.names()


def get_arch_info(name: str) -> ArchInfo:
    return ARCHITECTURES.get(name)


def create_model(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a full-precision model; `bimodels.binarize` turns it into a binary one.

    The returned module carries `arch_info` so later steps (binarize, complexity, export)
    can make an example input and find the layers the architecture keeps full precision.
    """
    info = ARCHITECTURES.get(name)
    model = info.builder(num_classes=info.num_classes if num_classes is None else num_classes, **kwargs)
    # torch's stubs only allow Tensor | Module values for Module attributes
    model.arch_info = info  # type: ignore[assignment]
    return model


def example_input(model_or_name: nn.Module | str, batch_size: int = 1, seed: int = 0) -> torch.Tensor:
    """A deterministic, valid input for an architecture (images, point clouds or token ids)."""
    info = get_arch_info(model_or_name) if isinstance(model_or_name, str) else _info_of(model_or_name)
    gen = torch.Generator().manual_seed(seed)
    shape = (batch_size, *info.input_shape)
    if info.input_dtype == "int64":
        return torch.randint(0, info.vocab_size or 2, shape, generator=gen, dtype=torch.int64)
    return torch.randn(shape, generator=gen)


def _info_of(model: nn.Module) -> ArchInfo:
    info = getattr(model, "arch_info", None)
    if info is None:
        raise ValueError(
            "this model was not built by bimodels.create_model; pass an example input explicitly"
        )
    return info
