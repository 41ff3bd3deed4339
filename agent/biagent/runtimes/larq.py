"""Larq Compute Engine's TFLite interpreter (larq-compute-engine 0.16), without TensorFlow.

`import larq_compute_engine` imports TensorFlow from the package __init__ (for the
converter). The interpreter extension needs none of it, so the package is registered as a
bare namespace (its __path__ only) and the wrapper is imported from there.
On x86 the indirect BGEMM kernel is used (measured 4-5x faster than the default there);
on ARM the default optimised kernels are.
LCE's Python wrapper only exposes `predict` (copy in, invoke, copy out), so the timed call
includes the input and output copies — small next to a network's compute.
"""

from __future__ import annotations

import importlib.util
import platform
import sys
import types
from importlib import metadata
from pathlib import Path

import numpy as np

from biformats import FormatError
from biformats.lce import check_tflite

from .base import (
    InvokeError,
    LoadedModel,
    ModelLoadError,
    Runtime,
    RuntimeInfo,
    RuntimeNotInstalled,
    TensorSpec,
)

_PACKAGE = "larq_compute_engine"


def _wrapper():
    module = sys.modules.get(f"{_PACKAGE}.tflite.python.interpreter_wrapper_lite")
    if module is not None:
        return module
    spec = (
        importlib.util.find_spec(_PACKAGE) if _PACKAGE not in sys.modules else sys.modules[_PACKAGE].__spec__
    )
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeNotInstalled(
            "larq-compute-engine is not installed; pip install 'larq-compute-engine==0.16.0'"
        )
    if _PACKAGE not in sys.modules:
        package = types.ModuleType(_PACKAGE)
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules[_PACKAGE] = package
    try:
        from larq_compute_engine.tflite.python import interpreter_wrapper_lite
    except ImportError as exc:
        raise RuntimeNotInstalled(f"larq-compute-engine's interpreter does not load here: {exc}") from None
    return interpreter_wrapper_lite


def _x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


class _LceModel(LoadedModel):
    def __init__(self, interpreter):
        self.interpreter = interpreter
        self.inputs = [
            TensorSpec(f"input{i}", tuple(s), np.dtype(t).name)
            for i, (s, t) in enumerate(zip(interpreter.input_shapes, interpreter.input_types))
        ]
        self.outputs = [
            TensorSpec(f"output{i}", tuple(s), np.dtype(t).name)
            for i, (s, t) in enumerate(zip(interpreter.output_shapes, interpreter.output_types))
        ]
        self._in: list[np.ndarray] = []
        self._out: list[np.ndarray] = []

    def set_inputs(self, arrays: list[np.ndarray]) -> None:
        if len(arrays) != len(self.inputs):
            raise InvokeError(f"model takes {len(self.inputs)} inputs, got {len(arrays)}")
        for a, spec in zip(arrays, self.inputs):
            if tuple(a.shape) != spec.shape:
                raise InvokeError(f"input shape {tuple(a.shape)} does not match the model's {spec.shape}")
        self._in = [np.ascontiguousarray(a, dtype=spec.dtype) for a, spec in zip(arrays, self.inputs)]

    def invoke(self) -> None:
        try:
            out = self.interpreter.predict(self._in)
        except Exception as exc:
            raise InvokeError(str(exc).splitlines()[0]) from None
        self._out = out if isinstance(out, list) else [out]

    def get_outputs(self) -> list[np.ndarray]:
        return [np.array(o) for o in self._out]


class LarqRuntime(Runtime):
    name = "larq"
    formats = ("lce", "tflite")

    @classmethod
    def describe(cls) -> RuntimeInfo:
        try:
            _wrapper()
        except RuntimeNotInstalled as exc:
            return RuntimeInfo(cls.name, False, detail=str(exc), formats=cls.formats)
        version = metadata.version("larq-compute-engine")
        numpy_major = int(np.__version__.split(".")[0])
        if numpy_major >= 2:
            return RuntimeInfo(
                cls.name,
                False,
                version,
                f"LCE {version} needs numpy<2 (found {np.__version__}); pip install 'numpy<2'",
                cls.formats,
            )
        kernel = "indirect BGEMM" if _x86() else "optimised BGEMM"
        return RuntimeInfo(
            cls.name, True, version, f"LCE TFLite interpreter, {kernel} binary conv kernel", cls.formats
        )

    def load(self, path: Path, threads: int) -> LoadedModel:
        wrapper = _wrapper()
        data = Path(path).read_bytes()
        try:
            check_tflite(data)  # the interpreter trusts its input: a damaged file would crash it
        except FormatError as exc:
            raise ModelLoadError(str(exc)) from None
        try:
            interpreter = wrapper.LiteInterpreter(data, threads, False, _x86(), False)
        except Exception as exc:
            raise ModelLoadError(str(exc).splitlines()[0][:300]) from None
        return _LceModel(interpreter)
