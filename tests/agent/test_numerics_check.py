"""The numerics check through the real agent: what passes, what fails, and where the line is.

The model is `y = 2 x` in ONNX (run by onnxruntime on the agent), so every expected output a
test sends differs from the true one by exactly what the test chose.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from bihost.client import AgentClient, BenchmarkSettings, _tensor
from biproto import agent_pb2 as pb
from biproto import agent_pb2_grpc as pb_grpc
from tests.fuzz import double_model_onnx

QUICK = BenchmarkSettings(warmup_runs=0, min_runs=1, min_duration_s=0.0, max_duration_s=5)
X = np.linspace(-1.0, 1.0, 8, dtype=np.float32).reshape(1, 8)


double_model = double_model_onnx


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    from tests.conftest import AgentProcess

    proc = AgentProcess(tmp_path_factory.mktemp("numerics") / "store", "numerics-board")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def model_id(agent) -> str:
    with AgentClient(agent.address, "numerics-board") as client:
        return client.push(double_model(), "onnx", "double").model_id


def check(agent, model_id, inputs, expected, atol=1e-4, rtol=1e-5):
    settings = BenchmarkSettings(**{**QUICK.__dict__, "atol": atol, "rtol": rtol})
    with AgentClient(agent.address, "numerics-board", timeout_s=30) as client:
        return client.benchmark(model_id, "onnxruntime", settings, checks=[([inputs], [expected])])


def test_a_true_reference_passes(agent, model_id):
    out = check(agent, model_id, X, 2 * X)
    assert out.status == "ok" and out.max_abs_errors == [0.0], out.reason


@pytest.mark.parametrize("side", [+1, -1])
def test_the_line_between_ok_and_numerics_error_is_atol_plus_rtol_times_scale(agent, model_id, side):
    """An output off by 1% more than the tolerance fails; 1% less passes, for each of atol and rtol."""
    for atol, rtol in ((1e-3, 1e-9), (1e-9, 1e-2)):
        scale = float(np.abs(2 * X).max())
        tol = atol + rtol * scale
        for factor, status in ((1.01, "numerics_error"), (0.99, "ok")):
            expected = 2 * X
            expected[0, 3] += side * factor * tol
            out = check(agent, model_id, X, expected, atol=atol, rtol=rtol)
            assert out.status == status, (atol, rtol, factor, out.reason)
            assert out.max_abs_errors[0] == pytest.approx(factor * tol, rel=1e-3)


def test_nan_in_the_reference_fails_even_when_the_rest_matches(agent, model_id):
    expected = 2 * X
    expected[0, 2] = np.nan
    out = check(agent, model_id, X, expected)
    assert out.status == "numerics_error" and "NaN in the reference" in out.reason, out.reason
    assert math.isinf(out.max_abs_errors[0])


def test_nan_in_the_output_fails(agent, model_id):
    """Check inputs full of NaN make the model's output NaN; a finite reference must not pass."""
    out = check(agent, model_id, np.full_like(X, np.nan), 2 * X)
    assert out.status == "numerics_error" and "NaN in the output" in out.reason, out.reason


def test_one_nan_does_not_hide_a_wrong_reference(agent, model_id):
    expected = 3 * X  # wrong everywhere
    expected[0, 0] = np.nan
    out = check(agent, model_id, X, expected)
    assert out.status == "numerics_error", out.reason


def test_nan_and_infinity_matched_in_place_pass(agent, model_id):
    x = X.copy()
    x[0, 1], x[0, 5], x[0, 6] = np.nan, np.inf, -np.inf
    out = check(agent, model_id, x, 2 * x)
    assert out.status == "ok" and out.max_abs_errors == [0.0], out.reason
    wrong = 2 * x
    wrong[0, 5] = 1.0  # the output has +inf there
    assert check(agent, model_id, x, wrong).status == "numerics_error"
    wrong = 2 * x
    wrong[0, 6] = np.inf  # the sign of an infinity matters
    assert check(agent, model_id, x, wrong).status == "numerics_error"


def test_a_nan_fails_the_check_whatever_the_other_cases_say(agent, model_id):
    """Two good cases do not outvote a bad one: every case must pass (docs/numerics.md)."""
    bad = 2 * X
    bad[0, 0] = np.nan
    with AgentClient(agent.address, "numerics-board", timeout_s=30) as client:
        out = client.benchmark(
            model_id, "onnxruntime", QUICK, checks=[([X], [2 * X]), ([X], [2 * X]), ([X], [bad])]
        )
    assert out.status == "numerics_error" and "case 2" in out.reason, out.reason


def raw_benchmark(agent, **fields) -> grpc.RpcError:
    request = pb.BenchmarkRequest(**{"runtime": "onnxruntime", "min_runs": 1, **fields})
    with grpc.insecure_channel(agent.address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            list(pb_grpc.AgentStub(channel).RunBenchmark(request, timeout=30))
    return info.value


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"atol": float("nan")}, "atol must be a finite number"),
        ({"atol": float("inf")}, "atol must be a finite number"),
        ({"rtol": float("nan")}, "rtol must be a finite number"),
        ({"rtol": -1e-3}, "rtol must be a finite number >= 0"),
        ({"threads": 100_000}, "logical cores"),
        ({"threads": 2**31 - 1}, "logical cores"),
        ({"threads": -1}, "logical cores"),
        ({"max_duration_s": -1.0}, "max_duration_s must be 0 to"),
        ({"min_duration_s": float("nan")}, "min_duration_s must be 0 to"),
        ({"min_duration_s": 1e9}, "min_duration_s must be 0 to"),
        ({"warmup_runs": 2**31 - 1}, "warmup_runs must be 0 to"),
        ({"min_runs": 2**31 - 1}, "min_runs must be 0 (ten) to"),
    ],
)
def test_out_of_bounds_requests_are_invalid_argument(agent, model_id, fields, words):
    checks = [pb.NumericsCase(inputs=[_tensor(X)], expected=[_tensor(2 * X)])]
    err = raw_benchmark(agent, model_id=model_id, checks=checks, **fields)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and words in err.details(), err.details()


SIGN = {"shape": [1, 8], "bits": bytes([0b00001111]), "fragile": [3], "margins": [1e-7]}


@pytest.mark.parametrize(
    "case, words",
    [
        (
            {"signs": [pb.SignReference(**{**SIGN, "bits": b"\x00\x00"})]},
            "sign reference 0: sign reference of shape (1, 8) needs 1 bytes",
        ),
        ({"signs": [pb.SignReference(**{**SIGN, "fragile": [8]})]}, "fragile positions out of range"),
        ({"signs": [pb.SignReference(**{**SIGN, "margins": []})]}, "without margins"),
        (
            {
                "signs": [pb.SignReference(**SIGN)],
                "alternatives": [pb.Alternative(layer=1, expected=[_tensor(2 * X)])],
            },
            "alternative 0: layer 1 of 1",
        ),
        (
            {"alternatives": [pb.Alternative(layer=0, expected=[_tensor(2 * X)])]},
            "alternative 0: layer 0 of 0",
        ),
    ],
)
def test_a_malformed_sign_reference_or_alternative_is_invalid_argument(agent, model_id, case, words):
    checks = [pb.NumericsCase(inputs=[_tensor(X)], expected=[_tensor(2 * X)], **case)]
    err = raw_benchmark(agent, model_id=model_id, checks=checks)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and words in err.details(), err.details()
    assert check(agent, model_id, X, 2 * X).status == "ok"  # and the agent keeps serving


def test_threads_up_to_the_board_cores_are_accepted(agent, model_id):
    cores = os.cpu_count()
    settings = BenchmarkSettings(**{**QUICK.__dict__, "threads": cores})
    with AgentClient(agent.address, "numerics-board", timeout_s=30) as client:
        out = client.benchmark(model_id, "onnxruntime", settings, checks=[([X], [2 * X])])
        assert out.status == "ok" and out.threads == cores
        assert client.identity().cores == cores  # the documented limit is what the board reports


def test_a_huge_warmup_sends_a_few_progress_events_not_one_per_run(agent, model_id):
    phases: list[str] = []
    settings = BenchmarkSettings(warmup_runs=10_000, min_runs=1, min_duration_s=0.0, max_duration_s=5)
    start = time.monotonic()
    with AgentClient(agent.address, "numerics-board", timeout_s=60) as client:
        out = client.benchmark(model_id, "onnxruntime", settings, on_progress=lambda p, *a: phases.append(p))
    elapsed = time.monotonic() - start
    assert out.status == "ok" and out.warmup_runs == 10_000
    assert 1 <= phases.count("warmup") <= 3 + 2 * elapsed, (phases.count("warmup"), elapsed)


def test_an_upper_case_id_is_refused_by_push_as_by_stat_and_delete(agent):
    import hashlib

    data = double_model() + b"\0"  # another model, not stored yet
    upper = hashlib.sha256(data).hexdigest().upper()
    with grpc.insecure_channel(agent.address) as channel:
        stub = pb_grpc.AgentStub(channel)
        header = pb.ModelHeader(sha256=upper, size_bytes=len(data), format="onnx")
        for call in (
            lambda: stub.PushModel(
                iter([pb.PushModelChunk(header=header), pb.PushModelChunk(data=data)]), timeout=10
            ),
            lambda: stub.StatModel(pb.StatModelRequest(model_id=upper), timeout=10),
            lambda: stub.DeleteModel(pb.DeleteModelRequest(model_id=upper), timeout=10),
        ):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "lower-case hex" in info.value.details()


def test_the_benchmark_worker_never_sees_the_agent_token(tmp_path):
    """The token is read from the environment; the worker (a runtime's code) must not inherit it."""
    from tests.conftest import AgentProcess

    token = "s3cret-token-for-the-agent-only"
    os.environ["BIAGENT_TOKEN"] = token
    try:
        agent = AgentProcess(tmp_path / "store", "token-board")
    finally:
        del os.environ["BIAGENT_TOKEN"]
    try:
        from bihost.channel import ChannelSecurity

        security = ChannelSecurity(token=token)
        with AgentClient(agent.address, "token-board", timeout_s=30, security=security) as client:
            mid = client.push(double_model(), "onnx").model_id
            seen: list[bytes] = []

            def look(phase, *rest):
                if phase in ("timing", "checking") and not seen:
                    seen.extend(_worker_environments(agent.proc.pid))

            client.benchmark(
                mid,
                "onnxruntime",
                BenchmarkSettings(warmup_runs=0, min_runs=1, min_duration_s=1.5, max_duration_s=5),
                on_progress=look,
            )
        assert seen, "no worker process was found while the benchmark ran"
        assert all(b"BIAGENT_TOKEN" not in env and token.encode() not in env for env in seen)
        assert (
            token.encode() in Path(f"/proc/{agent.proc.pid}/environ").read_bytes()
        )  # the test is able to see it
    finally:
        agent.stop()


def _worker_environments(agent_pid: int) -> list[bytes]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
            if f"PPid:\t{agent_pid}\n" in status and b"biagent.worker" in (proc / "cmdline").read_bytes():
                found.append((proc / "environ").read_bytes())
        except OSError:
            continue
    return found
