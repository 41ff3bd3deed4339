"""Faults, each against real agent processes, each ending with nothing lost.

Killed agent (retried, then resumed), killed host (resumed), a stopped agent (stall
watchdog, board marked bad until a health check passes), a segfaulting runtime (isolated
in the worker), two campaigns on one board (a lease serialises them; a crashed holder's
lease runs out).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from bihost.client import AgentClient, BenchmarkSettings
from bihost.profile import Plan, Target, run_campaign
from bihost.results import ResultsStore
from tests.conftest import free_port
from tests.e2e.test_profile import FAST, bihost, stored, write_inventory

QUICK = BenchmarkSettings(warmup_runs=1, min_runs=3, min_duration_s=0.05)


def _plan(runtimes=("onnxruntime", "custom"), algorithms=("bnn",), settings=QUICK, **kw) -> Plan:
    defaults = dict(
        retries=3, retry_backoff_s=0.3, lease_ttl_s=5.0, lease_wait_s=60.0, stall_s=5.0, board_wait_s=5.0
    )
    return Plan(["resnet20"], list(algorithms), list(runtimes), settings, **(defaults | kw))


class Log:
    """Progress messages of a campaign, with a hook to act on one."""

    def __init__(self):
        self.lines: list[str] = []
        self.hooks: list[tuple[str, threading.Event]] = []

    def __call__(self, board: str, message: str, notice: bool = False) -> None:
        self.lines.append(f"{board}: {message}")
        for needle, event in self.hooks:
            if needle in message:
                event.set()

    def when(self, needle: str) -> threading.Event:
        event = threading.Event()
        self.hooks.append((needle, event))
        return event


def test_agent_sigkilled_mid_benchmark_and_restarted_is_retried(start_agent, tmp_path):
    port, store_dir = free_port(), tmp_path / "store"
    agent = start_agent("alpha", store=store_dir, extra=("--port", str(port)))
    results = ResultsStore(tmp_path / "results")
    log = Log()
    timing = log.when("bnn/custom: timing")
    # A retry waits for the board's health check for twice the backoff, and a board silent that
    # long is filed as down: 5 s gives the restarted agent 10 s, enough on a loaded CI machine
    # (0.3 s gave it 1.3 s, and lost the race now and then).
    plan = _plan(
        settings=BenchmarkSettings(warmup_runs=1, min_runs=3, min_duration_s=1.5),
        retries=6,
        retry_backoff_s=5.0,
    )
    done: list = []
    runner = threading.Thread(
        target=lambda: done.append(
            run_campaign([Target("alpha", "x", agent.address)], plan, results, progress=log)
        )
    )
    runner.start()
    assert timing.wait(300), log.lines
    agent.stop(sig=signal.SIGKILL)  # mid-benchmark
    start_agent("alpha", store=store_dir, extra=("--port", str(port)))  # back on the same address
    runner.join(300)
    assert not runner.is_alive()
    rows = results.rows(plan.campaign)
    assert sorted((r.algorithm, r.runtime) for r in rows) == [
        ("bnn", "custom"),
        ("bnn", "onnxruntime"),
        ("fp32", "onnxruntime"),
    ]
    assert all(r.status == "ok" for r in rows), [(r.runtime, r.reason) for r in rows]
    retries = [line for line in log.lines if "bnn/custom: failed" in line and "retry 1 of 6" in line]
    assert retries, log.lines  # the failure was reported, then retried
    assert results.board_state("alpha").state == "good"


def test_agent_sigkilled_and_restarted_20s_later_finishes_in_the_same_run_with_default_flags(
    start_agent, tmp_path
):
    """The supervised-restart case: `bihost profile` with its default patience (--board-wait)
    waits for the board instead of filing the rest as errors; no row is missing or doubled."""
    port, store_dir = free_port(), tmp_path / "store"
    agent = start_agent("alpha", store=store_dir, extra=("--port", str(port)))
    inv = write_inventory(tmp_path / "inv.yaml", {"alpha": {"address": agent.address}})
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bihost.cli",
            "profile",
            "--chip",
            "alpha",
            "--algo",
            "bnn,xnor",
            "--runtime",
            "onnxruntime,custom",
            "--arch",
            "resnet20",
            "--runs",
            "3",
            "--min-duration",
            "1.0",
            "--warmup",
            "1",
            "--results",
            str(results),
            "--inventory",
            str(inv),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while len(stored(results)) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.3)  # into the next measurement
        agent.stop(sig=signal.SIGKILL)
        time.sleep(20)
        start_agent("alpha", store=store_dir, extra=("--port", str(port)))
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    rows = stored(results)
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows), [
        (r["algorithm"], r["reason"]) for r in rows
    ]
    assert len({(r["algorithm"], r["runtime"]) for r in rows}) == 5
    assert "waiting up to 120 s for the board to answer again" in err, err
    assert "marked bad" not in err


def test_host_killed_mid_campaign_resumes_without_repeats(start_agent, tmp_path):
    agent = start_agent("alpha")
    inv = write_inventory(tmp_path / "inv.yaml", {"alpha": {"address": agent.address}})
    results = tmp_path / "results"
    args = [
        "profile",
        "--chip",
        "alpha",
        "--algo",
        "bnn,xnor,dorefa",
        "--runtime",
        "onnxruntime,custom",
        *FAST,
        "--results",
        str(results),
        "--inventory",
        str(inv),
        "--json",
        "--lease-ttl",
        "3",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bihost.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while len(stored(results)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()  # the host dies holding the board's lease
    proc.communicate()
    before = stored(results)
    assert 2 <= len(before) < 7
    again = bihost(*args, "--resume")  # waits out the dead host's lease (3 s), then finishes
    assert again.returncode == 0, again.stderr
    final = stored(results)
    assert len(final) == 7 and all(r["status"] == "ok" for r in final)
    assert len({(r["algorithm"], r["runtime"]) for r in final}) == 7
    for row in before:  # finished rows were kept, not measured again
        assert any(r["id"] == row["id"] and r["created_at"] == row["created_at"] for r in final)


def test_stopped_agent_is_given_up_marked_bad_then_back_after_a_health_check(start_agent, tmp_path):
    agent = start_agent("alpha")
    results = ResultsStore(tmp_path / "results")
    log = Log()
    timing = log.when("bnn/onnxruntime: timing")
    plan = _plan(
        runtimes=("onnxruntime",),
        retries=1,
        stall_s=3.0,
        settings=BenchmarkSettings(warmup_runs=1, min_runs=3, min_duration_s=2.0),
    )
    target = Target("alpha", "x", agent.address)
    runner = threading.Thread(target=run_campaign, args=([target], plan, results), kwargs={"progress": log})
    runner.start()
    assert timing.wait(300), log.lines
    agent.proc.send_signal(signal.SIGSTOP)  # hung: the process exists, the port accepts, nothing answers
    started = time.monotonic()
    runner.join(120)
    assert not runner.is_alive(), "the campaign hung on a stopped board"
    assert time.monotonic() - started < 60
    rows = {(r.algorithm, r.runtime): r for r in results.rows(plan.campaign)}
    failed = rows[("bnn", "onnxruntime")]
    assert failed.status == "error" and "stopped answering" in failed.reason, failed.reason
    state = results.board_state("alpha")
    assert state.state == "bad" and "stopped answering" in state.reason

    skipped = Log()
    plan2 = _plan(runtimes=("onnxruntime",))
    assert run_campaign([target], plan2, results, progress=skipped) == []  # not scheduled while it is down
    assert any("health check failed, not scheduled" in line for line in skipped.lines), skipped.lines

    agent.proc.send_signal(signal.SIGCONT)
    rows = run_campaign([target], plan2, results, progress=Log())
    assert rows and all(r.status == "ok" for r in rows)
    assert results.board_state("alpha").state == "good"


def test_a_link_taken_down_mid_benchmark_is_given_up_not_waited_for(netns_link, tmp_path):
    from bihost.channel import ChannelSecurity
    from tests.conftest import AgentProcess

    agent = AgentProcess(
        tmp_path / "store",
        "veth",
        extra=("--host", netns_link.board_ip, "--insecure"),
        prefix=netns_link.prefix,
    )
    try:
        assert agent.address.startswith(netns_link.board_ip)
        target = Target("veth", "x", agent.address, security=ChannelSecurity(insecure=True))
        results = ResultsStore(tmp_path / "results")
        log = Log()
        timing = log.when("bnn/onnxruntime: timing")
        plan = _plan(
            runtimes=("onnxruntime",),
            retries=1,
            stall_s=3.0,
            settings=BenchmarkSettings(warmup_runs=1, min_runs=3, min_duration_s=2.0),
        )
        runner = threading.Thread(
            target=run_campaign, args=([target], plan, results), kwargs={"progress": log}
        )
        runner.start()
        assert timing.wait(300), log.lines
        netns_link.link(up=False)  # no RST, no FIN: the connection just goes silent
        started = time.monotonic()
        runner.join(120)
        assert not runner.is_alive() and time.monotonic() - started < 60
        failed = next(r for r in results.rows(plan.campaign) if r.algorithm == "bnn")
        assert failed.status == "error" and "stopped answering" in failed.reason, failed.reason
        assert results.board_state("veth").state == "bad"

        netns_link.link(up=True)
        rows = run_campaign([target], _plan(runtimes=("onnxruntime",)), results, progress=Log())
        assert rows and all(r.status == "ok" for r in rows)
        assert results.board_state("veth").state == "good"
    finally:
        agent.stop()


def test_maintenance_keeps_a_board_out_until_returned(start_agent, tmp_path):
    agent = start_agent("alpha")
    inv = write_inventory(tmp_path / "inv.yaml", {"alpha": {"address": agent.address}})
    res = ["--results", str(tmp_path / "results")]
    assert bihost("board", "maintenance", "alpha", "--reason", "new heatsink", *res).returncode == 0
    health = bihost("board", "health", *res, "--json")
    assert '"maintenance"' in health.stdout and "new heatsink" in health.stdout
    args = [
        "profile",
        "--chip",
        "alpha",
        "--algo",
        "bnn",
        "--runtime",
        "onnxruntime",
        *FAST,
        *res,
        "--inventory",
        str(inv),
        "--json",
    ]
    out = bihost(*args)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out
    assert "in maintenance (new heatsink)" in out.stderr
    assert bihost("board", "maintenance", "alpha", "--off", *res).returncode == 0
    out = bihost(*args)
    assert out.returncode == 0 and '"ok"' in out.stdout, out.stderr
    assert '"good"' in bihost("board", "health", *res, "--json").stdout


CRASHY = """
import ctypes
from pathlib import Path
from biagent.runtimes.base import LoadedModel, Runtime, RuntimeInfo


class Model(LoadedModel):
    inputs, outputs = [], []

    def set_inputs(self, arrays):
        pass

    def invoke(self):
        ctypes.string_at(0)  # a real segfault in native code

    def get_outputs(self):
        return []

    def close(self):
        pass


class CrashyRuntime(Runtime):
    name = "crashy"
    formats = ("onnx",)

    @classmethod
    def describe(cls):
        return RuntimeInfo("crashy", True, "1.0", "segfaults on invoke (test plugin)", ("onnx",))

    def load(self, path: Path, threads: int):
        return Model()
"""


def test_a_segfaulting_runtime_is_isolated_in_its_worker(start_agent, tmp_path, monkeypatch):
    (tmp_path / "crashy.py").write_text(textwrap.dedent(CRASHY))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{__import__('os').environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("BIAGENT_RUNTIMES", "crashy=crashy:CrashyRuntime")
    agent = start_agent("alpha")
    with AgentClient(agent.address, "alpha", timeout_s=30) as client:
        assert client.identity().runtimes["crashy"]["installed"]
        model = client.push(b"not really a model", "onnx").model_id
        with pytest.raises(Exception) as info:
            client.benchmark(model, "crashy", QUICK)
        assert "crashed the benchmark worker (signal 11)" in str(info.value)
        assert getattr(info.value, "transient", False)
        assert client.health() and client.list_models()  # still serving
    assert agent.proc.poll() is None


def test_two_campaigns_on_one_board_take_turns(start_agent, tmp_path):
    agent = start_agent("alpha")
    results = ResultsStore(tmp_path / "results")
    target = Target("alpha", "x", agent.address)
    logs = [Log(), Log()]
    plans = [_plan(), _plan()]
    runners = [
        threading.Thread(target=run_campaign, args=([target], p, results), kwargs={"progress": log})
        for p, log in zip(plans, logs)
    ]
    for r in runners:
        r.start()
    for r in runners:
        r.join(300)
    spans = []
    for plan in plans:
        rows = results.rows(plan.campaign)
        assert len(rows) == 3 and all(r.status == "ok" for r in rows)
        spans.append((min(r.created_at for r in rows), max(r.created_at for r in rows)))
    spans.sort()
    assert spans[0][1] <= spans[1][0], spans  # one campaign's rows all end before the other's begin
    waited = [line for log in logs for line in log.lines if "waiting for the board: leased to" in line]
    assert waited, "the second campaign never waited for the lease"


def test_a_crashed_holders_lease_runs_out(start_agent, tmp_path):
    agent = start_agent("alpha")
    with AgentClient(agent.address, "alpha") as other:  # a host that takes the board, then vanishes
        assert other.acquire_lease("crashed-host pid 1", ttl_s=5.0).granted
        other.lease_id = ""  # ...and forgets it: nobody will release or renew
    with AgentClient(agent.address, "alpha") as client:
        model = client.push(b"some model", "onnx").model_id
        with pytest.raises(
            Exception, match=r"leased to crashed-host pid 1 for \d more s; acquire the lease first"
        ):
            client.benchmark(model, "onnxruntime", QUICK)
    results = ResultsStore(tmp_path / "results")
    log = Log()
    started = time.monotonic()
    rows = run_campaign(
        [Target("alpha", "x", agent.address)], _plan(runtimes=("onnxruntime",)), results, progress=log
    )
    assert rows and all(r.status == "ok" for r in rows)
    assert any("leased to crashed-host" in line for line in log.lines)
    assert time.monotonic() - started < 120
