"""bimodels: the eight binarization algorithms, the architectures they are applied to,
one-call binarization, theoretical complexity and exporters.

    >>> from bimodels import create_model, binarize, export
    >>> model = binarize(create_model("resnet20"), "bireal")
"""

from .algorithms import get_algorithm, list_algorithms
from .architectures import create_model, example_input, get_arch_info, list_architectures
from .binarize import binarize, binary_layers, set_epoch, to_deploy
from .export import ExportError, export, list_formats
from .init import trained_like_norms
from .layers import BinarizationError, is_binary
from .registry import UnknownNameError

__all__ = [
    "BinarizationError",
    "ExportError",
    "UnknownNameError",
    "binarize",
    "binary_layers",
    "create_model",
    "example_input",
    "export",
    "get_algorithm",
    "get_arch_info",
    "is_binary",
    "list_algorithms",
    "list_architectures",
    "list_formats",
    "set_epoch",
    "to_deploy",
    "trained_like_norms",
]
