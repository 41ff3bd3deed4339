"""The eight binarization algorithms, registered by their short names."""

from . import bnn, xnor, dorefa, bireal, xnorpp, reactnet, recu, fda  # noqa: F401  # isort: skip  (registration order)
from .base import ALGORITHMS, Binarizer, DeployForm, LayerGeometry, get_algorithm, list_algorithms

__all__ = ["ALGORITHMS", "Binarizer", "DeployForm", "LayerGeometry", "get_algorithm", "list_algorithms"]
