"""Architectures, one family per file; importing this package registers them all."""

from . import resnet, vgg, reactnet, pointnet, bert, dfsmn, ssd  # noqa: F401  # isort: skip  (registration order)
from .registry import ARCHITECTURES, ArchInfo, create_model, example_input, get_arch_info, list_architectures

__all__ = [
    "ARCHITECTURES",
    "ArchInfo",
    "create_model",
    "example_input",
    "get_arch_info",
    "list_architectures",
]
