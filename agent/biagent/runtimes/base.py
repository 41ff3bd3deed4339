"""The interface every runtime implements, and the lazy registry of runtimes.

A runtime is three things: `describe()` (installed? which version?), `load(path, threads)`
and, on the loaded model, `set_inputs / invoke / get_outputs`. Only `invoke` is timed.
Runtimes are imported lazily by name, so a board without LCE or daBNN still starts and
reports exactly what is missing.
"""

from __future__ import annotations

import importlib
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np


class RuntimeError_(Exception):
    """Base of the runtime errors below (the name avoids shadowing the builtin)."""


class RuntimeNotInstalled(RuntimeError_):
    """The runtime's library is missing on this board; the message says how to install it."""


class ModelLoadError(RuntimeError_):
    """The artifact is not a model this runtime can load (corrupt, wrong format, unsupported op)."""


class InvokeError(RuntimeError_):
    """The runtime failed while running a loaded model (bad input shape, kernel error)."""


class NoSignProbe(RuntimeError_):
    """The runtime cannot show the values its binary signs are taken of (biagent.numerics)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "float32", "int64"


@dataclass(frozen=True)
class RuntimeInfo:
    name: str
    installed: bool
    version: str = ""
    detail: str = ""  # why it is not installed, or which kernels it uses
    formats: tuple[str, ...] = field(default_factory=tuple)


class LoadedModel(ABC):
    """A model ready to run with a fixed thread count."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # Set by `invoke` in a runtime that runs the model in another process and times the run
    # there, so that the call's round trip is not counted; None: the caller's clock is used.
    runtime_seconds: float | None = None

    @abstractmethod
    def set_inputs(self, arrays: list[np.ndarray]) -> None:
        """Copy inputs into the runtime (not timed)."""

    @abstractmethod
    def invoke(self) -> None:
        """Run the model once on the current inputs (the only timed call)."""

    @abstractmethod
    def get_outputs(self) -> list[np.ndarray]:
        """Copies of the outputs of the last invoke (not timed)."""

    def close(self) -> None:  # noqa: B027 - optional hook: most runtimes hold nothing native
        """Release native resources."""

    def sign_inputs(self) -> list[np.ndarray]:
        """In a probing instance (`Runtime.load_probing`): the values each binary sign was
        taken of in the last invoke, one array per binary layer in execution order (a value
        that several signs read, unshifted, once). Used only to judge a numerics mismatch."""
        raise NoSignProbe(f"{type(self).__name__} is not a probing instance")


class Runtime(ABC):
    name: ClassVar[str]
    #: artifact formats this runtime loads, as named by the exporters ("onnx", "custom", ...)
    formats: ClassVar[tuple[str, ...]]

    @classmethod
    @abstractmethod
    def describe(cls) -> RuntimeInfo:
        """Installed or not, version, and a reason an operator can act on. Never raises."""

    @abstractmethod
    def load(self, path: Path, threads: int) -> LoadedModel:
        """Load an artifact; raise ModelLoadError with a clear reason if it cannot."""

    def load_probing(self, path: Path, threads: int) -> LoadedModel:
        """A second instance of the model that can also show its sign inputs (`sign_inputs`),
        computing the same outputs; never timed. NoSignProbe where the runtime cannot."""
        raise NoSignProbe(f"{self.name} cannot show the values its signs are taken of")


#: name -> "module:Class", imported on first use.
RUNTIMES: dict[str, str] = {
    "custom": "biagent.runtimes.custom:CustomRuntime",
    "larq": "biagent.runtimes.larq:LarqRuntime",
    "dabnn": "biagent.runtimes.dabnn:DabnnRuntime",
    "onnxruntime": "biagent.runtimes.onnxrt:OnnxRuntime",
}
PLUGINS_ENV = "BIAGENT_RUNTIMES"
_PLUGIN = re.compile(r"^([a-z][a-z0-9_]{0,31})=([A-Za-z_][\w.]*:[A-Za-z_]\w*)$")


def register_plugins(spec: str) -> None:
    """Add runtimes from "name=module:Class,..." (BIAGENT_RUNTIMES): a lab's own runtime, or a
    test's deliberately crashing one, without editing the agent. Built-in names cannot be taken."""
    for item in filter(None, (part.strip() for part in spec.split(","))):
        m = _PLUGIN.match(item)
        if not m:
            raise ValueError(f"{PLUGINS_ENV}: {item!r} is not name=module:Class")
        if m.group(1) in RUNTIMES and RUNTIMES[m.group(1)] != m.group(2):
            raise ValueError(f"{PLUGINS_ENV}: {m.group(1)!r} is a built-in runtime")
        RUNTIMES[m.group(1)] = m.group(2)


register_plugins(os.environ.get(PLUGINS_ENV, ""))


class UnknownRuntime(KeyError):
    def __init__(self, name: str):
        super().__init__(f"unknown runtime {name!r}; known runtimes: {', '.join(RUNTIMES)}")

    def __str__(self) -> str:
        return self.args[0]


def list_runtimes() -> list[str]:
    return list(RUNTIMES)


def get_runtime(name: str) -> type[Runtime]:
    try:
        target = RUNTIMES[name]
    except KeyError:
        raise UnknownRuntime(name) from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def describe_all() -> list[RuntimeInfo]:
    infos = []
    for name in RUNTIMES:
        try:
            infos.append(get_runtime(name).describe())
        except Exception as exc:  # a broken optional install must not stop the agent
            infos.append(RuntimeInfo(name, False, detail=f"failed to import: {exc}"))
    return infos
