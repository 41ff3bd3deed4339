"""A toy runtime, added the way CONTRIBUTING.md says (tests/test_extending.py uses it).

It runs custom artifacts through the custom engine's unfused graph: one numpy/C call per
node, no fused kernels. Not a runtime anyone should time; a complete one all the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from biagent.runtimes import InvokeError, LoadedModel, ModelLoadError, Runtime, RuntimeInfo, TensorSpec
from biagent.runtimes.custom import Graph, KernelSettings, load_artifact


class ToyModel(LoadedModel):
    def __init__(self, graph: Graph):
        self.graph = graph
        self.inputs = [TensorSpec(s.name, s.shape, s.dtype) for s in graph.inputs]
        self.outputs = [TensorSpec(s.name, s.shape, s.dtype) for s in graph.outputs]
        self._inputs: list[np.ndarray] = []
        self._outputs: list[np.ndarray] = []

    def set_inputs(self, arrays: list[np.ndarray]) -> None:
        if len(arrays) != len(self.inputs):
            raise InvokeError(f"expected {len(self.inputs)} input(s), got {len(arrays)}")
        self._inputs = [np.array(a, np.float32) for a in arrays]

    def invoke(self) -> None:
        self._outputs = self.graph.run(self._inputs)

    def get_outputs(self) -> list[np.ndarray]:
        return [np.array(o) for o in self._outputs]


class ToyRuntime(Runtime):
    name = "toy"
    formats = ("custom",)

    @classmethod
    def describe(cls) -> RuntimeInfo:
        return RuntimeInfo(cls.name, True, "0", "the custom engine, unfused (a test's toy)", cls.formats)

    def load(self, path: Path, threads: int) -> LoadedModel:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read {path}: {exc}") from exc
        return ToyModel(load_artifact(data, KernelSettings.from_env(), fuse=False))
