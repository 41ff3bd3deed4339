"""ONNX Runtime: the FP32 baseline and the reference ONNX export (CPU provider)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import (
    InvokeError,
    LoadedModel,
    ModelLoadError,
    NoSignProbe,
    Runtime,
    RuntimeInfo,
    RuntimeNotInstalled,
    TensorSpec,
)

_DTYPES = {
    "tensor(float)": "float32",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(double)": "float64",
}


def _import():
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeNotInstalled(f"onnxruntime is not installed ({exc}); pip install onnxruntime") from None
    return onnxruntime


class _OrtModel(LoadedModel):
    def __init__(
        self, session, probes: int | None = None
    ):  # probes: sign inputs appended (a probing instance)
        self.session, self._probes = session, probes
        self.inputs = [
            TensorSpec(
                i.name, tuple(d if isinstance(d, int) else 1 for d in i.shape), _DTYPES.get(i.type, i.type)
            )
            for i in session.get_inputs()
        ]
        self.outputs = [
            TensorSpec(
                o.name, tuple(d if isinstance(d, int) else -1 for d in o.shape), _DTYPES.get(o.type, o.type)
            )
            for o in session.get_outputs()
        ]
        if probes:  # the sign inputs appended by sign_input_graph: not outputs of the model
            self.outputs = self.outputs[:-probes]
        self._feed: dict[str, np.ndarray] = {}
        self._out: list[np.ndarray] = []
        self._output_names = [o.name for o in session.get_outputs()]

    def set_inputs(self, arrays: list[np.ndarray]) -> None:
        if len(arrays) != len(self.inputs):
            raise InvokeError(f"model takes {len(self.inputs)} inputs, got {len(arrays)}")
        self._feed = {spec.name: np.ascontiguousarray(a) for spec, a in zip(self.inputs, arrays)}

    def invoke(self) -> None:
        try:
            self._out = self.session.run(self._output_names, self._feed)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise InvokeError(str(exc).splitlines()[0]) from None

    def get_outputs(self) -> list[np.ndarray]:
        return [np.array(o) for o in self._out[: len(self._out) - (self._probes or 0)]]

    def sign_inputs(self) -> list[np.ndarray]:
        if self._probes is None:
            return super().sign_inputs()
        return [np.array(o) for o in self._out[len(self._out) - self._probes :]]


def sign_input_graph(model_bytes: bytes) -> tuple[bytes, int]:
    """The same graph, also returning the tensor each binary sign (x >= 0, exported as
    GreaterOrEqual) is taken of, after the model's own outputs; and how many it added."""
    try:
        import onnx
    except ImportError:
        raise NoSignProbe(
            "onnxruntime shows sign inputs only with the onnx package (pip install onnx)"
        ) from None
    try:
        proto = onnx.load_from_string(model_bytes)
    except Exception as exc:
        raise ModelLoadError(f"not a valid ONNX model: {str(exc).splitlines()[0][:300]}") from None
    names = list(dict.fromkeys(n.input[0] for n in proto.graph.node if n.op_type == "GreaterOrEqual"))
    for name in names:
        proto.graph.output.append(onnx.ValueInfoProto(name=name))
    return proto.SerializeToString(), len(names)


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    formats = ("onnx",)

    @classmethod
    def describe(cls) -> RuntimeInfo:
        try:
            ort = _import()
        except RuntimeNotInstalled as exc:
            return RuntimeInfo(cls.name, False, detail=str(exc), formats=cls.formats)
        return RuntimeInfo(cls.name, True, ort.__version__, "CPUExecutionProvider, FP32", cls.formats)

    def load(self, path: Path, threads: int) -> LoadedModel:
        return _OrtModel(self._session(str(path), threads))

    def load_probing(self, path: Path, threads: int) -> LoadedModel:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read {path}: {exc}") from None
        graph, probes = sign_input_graph(data)
        return _OrtModel(self._session(graph, threads), probes)

    def _session(self, model, threads: int):
        ort = _import()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelLoadError(f"not a valid ONNX model: {str(exc).splitlines()[0][:300]}") from None
