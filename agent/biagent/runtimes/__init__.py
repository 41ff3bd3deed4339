"""Runtimes behind one small interface (see base.py), registered by name, imported lazily."""

from .base import (
    InvokeError,
    LoadedModel,
    ModelLoadError,
    Runtime,
    RuntimeInfo,
    RuntimeNotInstalled,
    TensorSpec,
    UnknownRuntime,
    describe_all,
    get_runtime,
    list_runtimes,
)

__all__ = [
    "InvokeError",
    "LoadedModel",
    "ModelLoadError",
    "Runtime",
    "RuntimeInfo",
    "RuntimeNotInstalled",
    "TensorSpec",
    "UnknownRuntime",
    "describe_all",
    "get_runtime",
    "list_runtimes",
]
