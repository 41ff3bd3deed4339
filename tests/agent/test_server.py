"""The agent as a real process on 127.0.0.1: store, identity, benchmarks, bad input."""

from __future__ import annotations

import hashlib
import os
import platform
import threading
import time

import grpc
import numpy as np
import pytest
import torch

import bimodels
from bihost.client import AgentClient, BenchmarkSettings
from bihost.errors import BoardError
from biproto import agent_pb2 as pb
from biproto import agent_pb2_grpc as pb_grpc
from tests.conftest import free_port

QUICK = BenchmarkSettings(warmup_runs=1, min_runs=5, min_duration_s=0.05, max_duration_s=5)


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    model = bimodels.binarize(
        bimodels.trained_like_norms(bimodels.create_model("resnet20")), "reactnet"
    ).eval()
    x = bimodels.example_input(model, 1, seed=1)
    with torch.no_grad():
        y = model(x).numpy()
    return bimodels.export(model, "onnx", x), x.numpy(), y


def stub(address: str) -> pb_grpc.AgentStub:
    return pb_grpc.AgentStub(grpc.insecure_channel(address))


def stored_files(agent) -> list[str]:
    return sorted(
        p.name
        for p in agent.store.rglob("*")
        if p.is_file() and "jobs" not in p.parts and p.name != "agent.lock"
    )


def test_health_and_measured_identity(start_agent):
    agent = start_agent("board-a")
    with AgentClient(agent.address, "board-a") as client:
        assert client.health()
        ident = client.identity()
    assert ident.name == "board-a"
    assert ident.machine == platform.machine() and ident.cores == os.cpu_count()
    assert ident.cpu_model and ident.memory_bytes > 0
    assert ident.runtimes["onnxruntime"]["installed"]
    assert (
        not ident.runtimes["dabnn"]["installed"] and "BIAGENT_DABNN_ROOT" in ident.runtimes["dabnn"]["detail"]
    )


def test_push_is_content_addressed_and_idempotent(start_agent, resnet20):
    data = resnet20[0]
    agent = start_agent()
    with AgentClient(agent.address) as client:
        first = client.push(data, "onnx", "resnet20-reactnet")
        assert first.model_id == hashlib.sha256(data).hexdigest() and not first.already_present
        again = client.push(data, "onnx", "resnet20-reactnet")
        assert again.already_present and again.model_id == first.model_id
        assert [m["model_id"] for m in client.list_models()] == [first.model_id]
        assert client.delete_model(first.model_id) and client.list_models() == []


def _push_raw(address: str, header: pb.ModelHeader | None, chunks: list[bytes]):
    def gen():
        if header is not None:
            yield pb.PushModelChunk(header=header)
        for c in chunks:
            yield pb.PushModelChunk(data=c)

    return stub(address).PushModel(gen(), timeout=10)


DATA = os.urandom(3 << 20)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.mark.parametrize(
    "declared, chunks, code, words",
    [
        (
            len(DATA),
            [DATA[: 1 << 20], b"\0" * (1 << 20), DATA[2 << 20 :]],
            grpc.StatusCode.INVALID_ARGUMENT,
            "sha256 mismatch",
        ),
        (
            len(DATA) - 5,
            [DATA[: 1 << 20], DATA[1 << 20 : 2 << 20], DATA[2 << 20 :]],
            grpc.StatusCode.INVALID_ARGUMENT,
            "longer than",
        ),
        (len(DATA), [DATA[: 1 << 20]], grpc.StatusCode.DATA_LOSS, "ended after"),
        (len(DATA), [DATA[: (1 << 20) + 1]], grpc.StatusCode.INVALID_ARGUMENT, "larger than 1 MiB"),
    ],
)
def test_bad_uploads_are_refused_and_leave_nothing(start_agent, declared, chunks, code, words):
    agent = start_agent()
    header = pb.ModelHeader(sha256=SHA, size_bytes=declared, format="onnx")
    with pytest.raises(grpc.RpcError) as info:
        _push_raw(agent.address, header, chunks)
    assert info.value.code() == code and words in info.value.details()
    assert stored_files(agent) == []
    with AgentClient(agent.address) as client:
        assert client.health() and client.push(DATA, "onnx").model_id == SHA  # still serving, still works


def test_push_without_header_and_oversized_model(start_agent):
    agent = start_agent(extra=("--max-model-mb", "1"))
    with pytest.raises(grpc.RpcError) as info:
        _push_raw(agent.address, None, [b"data"])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "header" in info.value.details()
    with pytest.raises(BoardError, match="RESOURCE_EXHAUSTED.*limit"):
        AgentClient(agent.address).push(DATA, "onnx")
    assert stored_files(agent) == []


def test_benchmark_with_numerics_check(start_agent, resnet20):
    data, x, y = resnet20
    agent = start_agent()
    phases = []
    with AgentClient(agent.address) as client:
        model_id = client.push(data, "onnx").model_id
        out = client.benchmark(
            model_id,
            "onnxruntime",
            QUICK,
            checks=[([x], [y])],
            on_progress=lambda phase, *a: phases.append(phase),
        )
    assert out.status == "ok", out.reason
    assert out.max_abs_errors[0] <= 1e-4 + 1e-5 * np.abs(y).max()
    assert out.runs >= 5 and len(out.samples_s) == out.runs
    lat = out.latency_s
    assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["median"] == pytest.approx(float(np.median(out.samples_s)))
    assert out.model_bytes == len(data) and out.peak_rss_bytes > 10 << 20 and out.threads == 1
    assert {"loading", "checking", "warmup"} <= set(phases)


def test_wrong_reference_is_a_numerics_error(start_agent, resnet20):
    data, x, y = resnet20
    agent = start_agent()
    with AgentClient(agent.address) as client:
        model_id = client.push(data, "onnx").model_id
        out = client.benchmark(model_id, "onnxruntime", QUICK, checks=[([x], [y + 1.0])])
    assert out.status == "numerics_error" and "max abs error" in out.reason
    assert out.max_abs_errors[0] == pytest.approx(1.0, abs=1e-3)


def test_bad_benchmark_requests_get_clear_errors(start_agent, resnet20):
    agent = start_agent()
    with AgentClient(agent.address, "b") as client:
        with pytest.raises(BoardError, match="NOT_FOUND.*push it first"):
            client.benchmark("0" * 64, "onnxruntime", QUICK)
        with pytest.raises(BoardError, match="INVALID_ARGUMENT.*model id"):
            client.benchmark("../x", "onnxruntime", QUICK)
        model_id = client.push(resnet20[0], "onnx").model_id
        with pytest.raises(BoardError, match="unknown runtime 'tensorrt'; known runtimes: custom"):
            client.benchmark(model_id, "tensorrt", QUICK)
        with pytest.raises(BoardError, match="FAILED_PRECONDITION.*BIAGENT_DABNN_ROOT"):
            client.benchmark(model_id, "dabnn", QUICK)
        with pytest.raises(BoardError, match="loads lce, tflite artifacts, not 'onnx'"):
            client.benchmark(model_id, "larq", QUICK)
        junk = client.push(b"\x08\x01garbage" * 100, "onnx").model_id
        with pytest.raises(BoardError, match="INVALID_ARGUMENT.*cannot load this model"):
            client.benchmark(junk, "onnxruntime", QUICK)
        assert client.health()


def test_one_benchmark_at_a_time(start_agent, resnet20):
    data, x, y = resnet20
    agent = start_agent()
    settings = BenchmarkSettings(warmup_runs=0, min_runs=1, min_duration_s=1.5, max_duration_s=5)
    with AgentClient(agent.address) as client:
        model_id = client.push(data, "onnx").model_id
    windows, queued = [], []

    def run():
        with AgentClient(agent.address) as c:
            phases = []
            c.benchmark(
                model_id,
                "onnxruntime",
                settings,
                on_progress=lambda p, *a: phases.append((p, time.monotonic())),
            )
            end = time.monotonic()
            timing_start = next(t for p, t in phases if p == "warmup" or p == "loading")
            windows.append((timing_start, end))
            queued.append("queued" in [p for p, _ in phases])

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(queued) == [False, True]
    (a0, a1), (b0, b1) = sorted(windows)
    assert b0 >= a1 - 0.2, f"benchmarks overlapped: {windows}"


def test_unreachable_agent_is_a_clear_error_within_the_deadline():
    client = AgentClient(f"127.0.0.1:{free_port()}", "ghost", timeout_s=3)
    start = time.monotonic()
    with pytest.raises(BoardError, match="ghost.*unreachable"):
        client.identity()
    assert time.monotonic() - start < 10
    assert not client.health(timeout_s=1)


def test_sigterm_stops_gracefully(start_agent):
    agent = start_agent()
    assert agent.stop() == 0
