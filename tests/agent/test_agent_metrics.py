"""The agent's own metrics (`biagent serve --metrics-port`), scraped over HTTP from a real agent."""

from __future__ import annotations

import re
import time
import urllib.request

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

import biagent
import bimodels
from bihost.client import AgentClient, BenchmarkSettings
from bihost.errors import BoardError

QUICK = BenchmarkSettings(warmup_runs=1, min_runs=3, min_duration_s=0.02, max_duration_s=5)


def _metrics_url(agent) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in agent.output:
            m = re.search(r"metrics on (http://\S+/metrics)", line)
            if m:
                return m.group(1)
        time.sleep(0.05)
    raise AssertionError("the agent printed no metrics address: " + "".join(agent.output))


def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _scrape_when(url: str, key: tuple, value: float) -> dict[tuple[str, tuple], float]:
    deadline = time.monotonic() + 20
    while True:
        found = _scrape(url)
        if found.get(key) == value or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_the_agent_counts_its_rpcs_benchmarks_store_and_lease(start_agent):
    torch.manual_seed(0)
    model = bimodels.create_model("resnet20").eval()
    x = bimodels.example_input(model, 1, seed=1)
    with torch.no_grad():
        y = model(x).numpy()
    data = bimodels.export(model, "onnx", x)

    agent = start_agent("metered", extra=("--metrics-port", "0"))
    url = _metrics_url(agent)
    before = _scrape(url)
    assert before[("biagent_build_info", (("name", "metered"), ("version", biagent.__version__)))] == 1
    assert before[("biagent_store_models", ())] == 0 and before[("biagent_queue_depth", ())] == 0
    assert before[("biagent_benchmarks_total", (("outcome", "ok"),))] == 0  # present from the start

    with AgentClient(agent.address, "metered") as client:
        model_id = client.push(data, "onnx").model_id
        assert client.benchmark(model_id, "onnxruntime", QUICK, checks=[([x.numpy()], [y])]).status == "ok"
        wrong = client.benchmark(model_id, "onnxruntime", QUICK, checks=[([x.numpy()], [y + 1.0])])
        assert wrong.status == "numerics_error"
        with pytest.raises(BoardError):
            client.benchmark("f" * 64, "onnxruntime", QUICK)  # not in the store: NOT_FOUND
        client.acquire_lease("campaign-x", 60)

        # an RPC is counted when its handler returns: a benchmark's, after the worker is cleaned up
        after = _scrape_when(url, ("biagent_rpcs_total", (("code", "OK"), ("method", "RunBenchmark"))), 2)
        assert after[("biagent_benchmarks_total", (("outcome", "ok"),))] == 1
        assert after[("biagent_benchmarks_total", (("outcome", "numerics_error"),))] == 1
        assert after[("biagent_rpcs_total", (("code", "OK"), ("method", "PushModel")))] == 1
        assert after[("biagent_rpcs_total", (("code", "OK"), ("method", "RunBenchmark")))] == 2
        assert after[("biagent_rpcs_total", (("code", "NOT_FOUND"), ("method", "RunBenchmark")))] == 1
        assert after[("biagent_store_models", ())] == 1
        assert after[("biagent_store_bytes", ())] == len(data)
        assert after[("biagent_lease_held", (("holder", "campaign-x"),))] == 1
        assert 0 < after[("biagent_lease_remaining_seconds", ())] <= 60
        assert after[("biagent_benchmark_running", ())] == 0
        client.release_lease()
    free = _scrape(url)
    assert free[("biagent_lease_held", (("holder", ""),))] == 0
    assert not any(k[0] == "biagent_lease_held" and k[1] != (("holder", ""),) for k in free)


def test_metrics_off_loopback_need_insecure(start_agent):
    with pytest.raises(RuntimeError, match="refusing to serve the agent's metrics in plaintext on 0.0.0.0"):
        start_agent("open", extra=("--metrics-port", "0", "--metrics-host", "0.0.0.0"))
