"""Bounded everything, through real agent processes: silent clients, slot shares, one agent per
port and per store, and nothing left from a killed agent."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from biagent.limits import CallLimiter, client_key
from bihost.client import AgentClient, BenchmarkSettings
from biproto import agent_pb2 as pb
from biproto import agent_pb2_grpc as pb_grpc
from tests.agent.test_numerics_check import X, double_model
from tests.conftest import free_port


def own_connection(address: str) -> grpc.Channel:
    """A channel with its own TCP connection (channels in one process share one by default)."""
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


class SilentUploads:
    """Uploads that send a header and one chunk, then nothing, and never set a deadline."""

    def __init__(self, channels: list[grpc.Channel], count: int):
        self.release = threading.Event()
        self.calls = [
            pb_grpc.AgentStub(channels[i % len(channels)]).PushModel.future(self._chunks())
            for i in range(count)
        ]

    def _chunks(self):
        yield pb.PushModelChunk(header=pb.ModelHeader(sha256="ab" * 32, size_bytes=10, format="onnx"))
        yield pb.PushModelChunk(data=b"12345")
        self.release.wait(120)

    def outcomes(self, timeout: float) -> list[tuple[str, str]]:
        out = []
        for call in self.calls:
            try:
                call.result(timeout=timeout)
                out.append(("OK", ""))
            except grpc.RpcError as exc:
                out.append((exc.code().name, exc.details()))
        return out

    def stop(self) -> None:
        self.release.set()
        for call in self.calls:
            call.cancel()


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service="bibench.farm.v1.Agent"), timeout=3)
            .status
        )


def list_models(channel: grpc.Channel) -> str:
    try:
        pb_grpc.AgentStub(channel).ListModels(pb.ListModelsRequest(), timeout=5)
        return "OK"
    except grpc.RpcError as exc:
        return f"{exc.code().name}: {exc.details()}"


def test_silent_uploads_filling_every_slot_never_starve_health_and_are_aborted(start_agent):
    agent = start_agent(extra=("--max-streams", "16", "--upload-idle-timeout", "2"))
    channels = [own_connection(agent.address) for _ in range(16)]
    silent = SilentUploads(channels, 16)
    try:
        deadline = time.monotonic() + 10
        while len(list((agent.store / "tmp").iterdir())) < 16 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(list((agent.store / "tmp").iterdir())) == 16  # every slot holds an upload
        assert health(agent.address) == health_pb2.HealthCheckResponse.SERVING  # and health still answers
        with own_connection(agent.address) as other:
            refused = list_models(other)
        assert refused.startswith("RESOURCE_EXHAUSTED") and "limit of 16" in refused, refused
        outcomes = silent.outcomes(timeout=20)  # the idle limit ends them; the clients set no deadline
        assert {code for code, _ in outcomes} == {"ABORTED"}, outcomes
        assert "sent nothing for 2 s" in outcomes[0][1]
        assert not list((agent.store / "tmp").iterdir())  # their temp files are gone
        with own_connection(agent.address) as other:
            assert list_models(other) == "OK"
    finally:
        silent.stop()
        for c in channels:
            c.close()
    assert agent.proc.poll() is None


def test_one_client_cannot_take_every_slot(start_agent):
    agent = start_agent(
        extra=("--max-streams", "16", "--max-streams-per-client", "4", "--upload-idle-timeout", "30")
    )
    hog = own_connection(agent.address)
    silent = SilentUploads([hog], 10)
    try:
        time.sleep(1.0)
        refused = [c for c in silent.calls if c.done()]
        assert len(refused) == 6, len(refused)
        for call in refused:
            assert (
                call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "already has 4 calls" in call.details()
            )
        with own_connection(agent.address) as other:  # another client is served at once
            assert list_models(other) == "OK"
        assert health(agent.address) == health_pb2.HealthCheckResponse.SERVING
    finally:
        silent.stop()
        hog.close()


def test_a_second_agent_on_the_same_port_or_store_refuses_to_start(start_agent, tmp_path):
    port = free_port()
    first = start_agent("first", extra=("--port", str(port)))
    for store, extra, words in (
        (tmp_path / "other-store", ("--port", str(port)), "port is in use"),
        (first.store, ("--port", "0"), "serves the store"),
    ):
        second = subprocess.run(
            [sys.executable, "-m", "biagent.cli", "serve", "--store", str(store), *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1 and words in second.stderr, second.stderr
    assert f"pid {first.proc.pid}" in second.stderr
    with AgentClient(first.address, "first") as client:  # the lease has one holder, on the one agent
        assert client.acquire_lease("campaign A", 30).granted
        assert not client.acquire_lease("campaign B", 30).granted
        assert client.identity().name == "first"


def test_a_killed_agent_leaves_no_job_folder_and_no_orphan_worker(start_agent, tmp_path):
    store = tmp_path / "store"
    agent = start_agent("alpha", store=store)
    timing = threading.Event()
    with AgentClient(agent.address, "alpha") as client:
        model_id = client.push(double_model(), "onnx").model_id
    settings = BenchmarkSettings(warmup_runs=0, min_runs=1, min_duration_s=30, max_duration_s=60)

    def run():
        with AgentClient(agent.address, "alpha", timeout_s=10) as c:
            try:
                c.benchmark(
                    model_id,
                    "onnxruntime",
                    settings,
                    checks=[([X], [2 * X])],
                    on_progress=lambda phase, *a: phase == "timing" and timing.set(),
                )
            except Exception:
                pass  # the agent is killed under it

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    assert timing.wait(60)
    jobs = list((store / "jobs").iterdir())
    assert len(jobs) == 1 and {p.name for p in jobs[0].iterdir()} == {"arrays.npz", "job.json"}
    workers = _workers(agent.proc.pid)
    assert len(workers) == 1
    agent.stop(sig=signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{workers[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(workers[0]), "the worker outlived its agent and goes on timing"
    start_agent("alpha", store=store)
    assert list((store / "jobs").iterdir()) == []
    runner.join(30)


def _workers(agent_pid: int) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        try:
            if (
                proc.name.isdigit()
                and f"PPid:\t{agent_pid}\n" in (proc / "status").read_text()
                and b"biagent.worker" in (proc / "cmdline").read_bytes()
            ):
                out.append(int(proc.name))
        except OSError:
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        state = [ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("State:")]
    except OSError:
        return False
    return bool(state) and "Z" not in state[0]  # a zombie has stopped running


def test_call_limiter_counts_per_client_and_in_all():
    limiter = CallLimiter(max_total=3, max_per_client=2)
    assert limiter.enter("a") is None and limiter.enter("a") is None
    assert "already has 2 calls" in limiter.enter("a")
    assert limiter.enter("b") is None
    assert "limit of 3" in limiter.enter("c")
    limiter.leave("a")
    assert limiter.enter("c") is None and limiter.in_flight() == 3


@pytest.mark.parametrize(
    "peer, key",
    [
        ("ipv4:10.0.0.7:5321", "10.0.0.7"),
        ("ipv6:[fd00::7]:5321", "fd00::7"),
        ("ipv4:127.0.0.1:5321", "127.0.0.1:5321"),  # loopback: one key per connection
        ("ipv6:[::1]:40000", "[::1]:40000"),
        ("unix:/tmp/sock", "unix:/tmp/sock"),
    ],
)
def test_client_key(peer, key):
    assert client_key(peer) == key
