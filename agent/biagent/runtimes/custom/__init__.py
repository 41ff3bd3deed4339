"""The "custom" runtime as a package: runtime (Runtime classes), engine, fusion, ops."""

from .engine import Graph, load_artifact
from .runtime import CustomModel, CustomRuntime, ProbingCustomModel

__all__ = ["CustomModel", "CustomRuntime", "Graph", "ProbingCustomModel", "load_artifact"]
