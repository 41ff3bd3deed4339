"""The eight binarization algorithms, registered by their short names."""

from . import bireal, bnn, dorefa, fda, reactnet, recu, xnor, xnorpp  # noqa: F401  (registration order)
from .base import ALGORITHMS, Binarizer, DeployForm, LayerGeometry, get_algorithm, list_algorithms

__all__ = ["ALGORITHMS", "Binarizer", "DeployForm", "LayerGeometry", "get_algorithm", "list_algorithms"]
