"""Architectures, one family per file; importing this package registers them all."""

from . import bert, dfsmn, pointnet, reactnet, resnet, ssd, vgg  # noqa: F401  (registration order)
from .registry import ARCHITECTURES, ArchInfo, create_model, example_input, get_arch_info, list_architectures

__all__ = [
    "ARCHITECTURES",
    "ArchInfo",
    "create_model",
    "example_input",
    "get_arch_info",
    "list_architectures",
]
