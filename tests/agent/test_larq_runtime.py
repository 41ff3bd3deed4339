"""The `larq` runtime drives Larq Compute Engine's real interpreter, without TensorFlow.

The model is a minimal hand-built TFLite flatbuffer (LceQuantize -> LceDequantize, which
computes sign(x) with sign(0) = +1), written with the TFLite schema module LCE's wheel
ships. The full LCE exporter is a later issue; this checks the runtime and the agent path.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from biagent.runtimes import ModelLoadError, get_runtime

larq_info = get_runtime("larq").describe()
pytestmark = pytest.mark.skipif(not larq_info.installed, reason=f"larq runtime: {larq_info.detail}")

SHAPE = [1, 4, 4, 40]  # 40 channels: two packed words, the second partly padding


def sign_model() -> bytes:
    import flatbuffers

    spec = importlib.util.find_spec("larq_compute_engine")
    path = Path(spec.submodule_search_locations[0]) / "mlir" / "python" / "tflite_schema.py"
    mod_spec = importlib.util.spec_from_file_location("lce_tflite_schema", path)
    schema = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(schema)

    def opcode(name: str):
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = 32  # CUSTOM
        code.customCode, code.version = name, 1
        return code

    def tensor(name: str, shape: list[int], dtype: int, buffer: int):
        t = schema.TensorT()
        t.name, t.shape, t.type, t.buffer = name, shape, dtype, buffer
        return t

    def op(index: int, inputs: list[int], outputs: list[int]):
        o = schema.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = index, inputs, outputs
        return o

    graph = schema.SubGraphT()
    packed = SHAPE[:-1] + [(SHAPE[-1] + 31) // 32]
    graph.tensors = [tensor("x", SHAPE, 0, 1), tensor("bits", packed, 2, 2), tensor("y", SHAPE, 0, 3)]
    graph.inputs, graph.outputs = [0], [2]
    graph.operators = [op(0, [0], [1]), op(1, [1], [2])]
    model = schema.ModelT()
    model.version = 3
    model.operatorCodes = [opcode("LceQuantize"), opcode("LceDequantize")]
    model.subgraphs = [graph]
    model.buffers = [schema.BufferT() for _ in range(4)]  # buffer 0 must be empty
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_larq_runtime_runs_lce_ops(tmp_path):
    path = tmp_path / "sign.tflite"
    path.write_bytes(sign_model())
    model = get_runtime("larq")().load(path, threads=1)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    x[0, 0, 0, :3] = [0.0, -0.0, -1e-30]
    model.set_inputs([x])
    model.invoke()
    (y,) = model.get_outputs()
    assert np.array_equal(y, np.where(x < 0, -1.0, 1.0).astype(np.float32))
    assert model.inputs[0].shape == tuple(SHAPE)


def test_larq_runtime_refuses_what_is_not_tflite(tmp_path):
    (tmp_path / "junk.tflite").write_bytes(b"\0" * 64)
    with pytest.raises(ModelLoadError, match="TFL3"):
        get_runtime("larq")().load(tmp_path / "junk.tflite", threads=1)


def test_larq_does_not_import_tensorflow():
    code = (
        "import sys; from biagent.runtimes import get_runtime; assert get_runtime('larq').describe().installed; "
        "assert 'tensorflow' not in sys.modules and 'torch' not in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


def test_larq_benchmark_through_the_agent(start_agent):
    from bihost.client import AgentClient, BenchmarkSettings

    agent = start_agent()
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    with AgentClient(agent.address) as client:
        model_id = client.push(sign_model(), "tflite", "sign").model_id
        out = client.benchmark(
            model_id,
            "larq",
            BenchmarkSettings(warmup_runs=1, min_runs=20, min_duration_s=0.05),
            checks=[([x], [np.where(x < 0, -1.0, 1.0).astype(np.float32)])],
        )
    assert out.status == "ok" and out.max_abs_errors == [0.0]
    assert out.runtime == "larq" and out.runtime_version == "0.16.0" and out.runs >= 20
