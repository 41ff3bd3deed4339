"""The "custom" runtime's Runtime and LoadedModel classes: where the kernel settings are made.

`CustomRuntime.load(path, threads)` is the boundary: the agent's worker calls it with the
thread count the job asked for, and it builds the model's KernelSettings there
(`KernelSettings.from_env(threads)`, the only place the environment switches are read) and
hands them to the engine, which gives them to every op. Nothing is process-wide, so two
models loaded in one process with different thread counts each keep theirs.

Threads: the runtime owns them. The agent's worker runs BLAS single-threaded for it
(biagent.worker.OWN_THREADS), the binary kernels use `threads` OpenMP threads, and large
full-precision convs split their blocks over a pool of `threads` threads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ... import __version__, kernels
from ..base import InvokeError, LoadedModel, ModelLoadError, Runtime, RuntimeInfo, TensorSpec
from . import executor, ops
from .engine import Graph, load_artifact
from .executor import NativeGraph, Unplannable
from .settings import KernelSettings


class CustomModel(LoadedModel):
    """A loaded graph, run by the whole-graph executor when `native` is given (the model's
    plan), else node by node; `executor` says which, and why not the executor."""

    def __init__(
        self, graph: Graph, threads: int, native: NativeGraph | None = None, executor: str = "python"
    ):
        self.graph, self.threads, self.native, self.executor = graph, threads, native, executor
        self.inputs = [TensorSpec(s.name, s.shape, s.dtype) for s in graph.inputs]
        self.outputs = [TensorSpec(s.name, s.shape, s.dtype) for s in graph.outputs]
        self._inputs: list[np.ndarray] | None = None
        self._outputs: list[np.ndarray] | None = None

    def set_inputs(self, arrays: list[np.ndarray]) -> None:
        if len(arrays) != len(self.inputs):
            raise InvokeError(f"expected {len(self.inputs)} input(s), got {len(arrays)}")
        self._inputs = [np.array(a, copy=True) for a in arrays]

    def invoke(self) -> None:
        if self._inputs is None:
            raise InvokeError("invoke() before set_inputs()")
        runner = self.native if self.native is not None else self.graph
        self._outputs = runner.run(self._inputs)  # the ops carry the model's settings

    def get_outputs(self) -> list[np.ndarray]:
        if self._outputs is None:
            raise InvokeError("get_outputs() before invoke()")
        return [np.array(o, copy=True) for o in self._outputs]

    def close(self) -> None:
        self._inputs = self._outputs = None


class ProbingCustomModel(CustomModel):
    """The graph unfused, one kernel per node (the fusions compute the same floats, and the
    check compares this instance's output with the timed one's), recording x + input_shift
    at every binary layer: the values its sign is taken of. Layers that read one value
    unshifted take one set of decisions, recorded once."""

    def __init__(self, graph: Graph, threads: int):
        super().__init__(graph, threads)
        self._signs: list[np.ndarray] = []
        recorded: set[str] = set()
        for node in graph.nodes:
            if isinstance(node.fn, ops.BinaryConv):
                first = node.fn.shift is not None or node.inputs[0] not in recorded
                recorded.add(node.inputs[0])
                node.fn = self._recording(node.fn, first)

    def _recording(self, conv: ops.BinaryConv, record: bool):
        def run(x: np.ndarray) -> np.ndarray:
            if record:
                shift = conv.shift
                if shift is None:
                    self._signs.append(x.copy())
                else:
                    view = (shift.size,) if conv.kind == "linear" else (1, shift.size) + (1,) * (x.ndim - 2)
                    self._signs.append(x + shift.reshape(view))
            return conv(x)

        return run

    def invoke(self) -> None:
        self._signs = []
        super().invoke()

    def sign_inputs(self) -> list[np.ndarray]:
        return list(self._signs)


class CustomRuntime(Runtime):
    name = "custom"
    formats = ("custom",)

    @classmethod
    def describe(cls) -> RuntimeInfo:
        return RuntimeInfo(
            cls.name,
            True,
            version=__version__,
            detail=_kernel_detail(KernelSettings.from_env()),
            formats=cls.formats,
        )

    def load(self, path: Path, threads: int) -> LoadedModel:
        settings = KernelSettings.from_env(threads)
        graph = self._graph(path, settings, fuse=True)
        native, how = plan_native(graph, settings)
        return CustomModel(graph, threads, native, how)

    def load_probing(self, path: Path, threads: int) -> LoadedModel:
        return ProbingCustomModel(self._graph(path, KernelSettings.from_env(threads), fuse=False), threads)

    @staticmethod
    def _graph(path: Path, settings: KernelSettings, fuse: bool) -> Graph:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read custom artifact {path}: {exc}") from exc
        return load_artifact(data, settings, fuse=fuse)


def plan_native(graph: Graph, settings: KernelSettings) -> tuple[NativeGraph | None, str]:
    """The executor for `graph` at its declared batch size, planned now (so a graph it cannot
    run is known at load), or None and why the model runs node by node."""
    if not settings.executor:
        return None, "python (BIAGENT_CUSTOM_EXECUTOR=python)"
    if not ops.compiled(settings) or not executor.available():
        return None, "python (the C kernels are not built or not asked for)"
    native = NativeGraph(graph, settings.isa, settings.threads)
    try:
        steps, arena = native.prepare(graph.inputs[0].shape[0])
    except Unplannable as exc:
        return None, f"python ({exc})"
    except ValueError as exc:  # graph_build refused a step: a planner bug, never a crash
        return None, f"python (the executor refused the plan: {exc})"
    return native, f"native ({steps} steps, {arena} arena bytes)"


def _kernel_detail(settings: KernelSettings) -> str:
    info = kernels.info()
    numpy_version = ".".join(np.__version__.split(".")[:2])
    if not ops.compiled(settings):
        return f"numpy XNOR-popcount reference kernels (numpy {numpy_version})"
    threads = "OpenMP" if info["openmp"] else "one thread"
    return (
        f"compiled XNOR-popcount kernels (binary conv: {info.get('bconv')}; GEMM: {info['popcount']}; {threads}); "
        f"FP ops via C kernels and numpy {numpy_version}"
    )
