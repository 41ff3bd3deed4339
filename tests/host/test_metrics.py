"""The Prometheus exporter: values from a fresh registry, then one real HTTP scrape and the `metrics serve` verb."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from bihost.metrics import ResultsCollector, serve_metrics
from bihost.records import Measurement
from bihost.results import ResultsStore

from .test_results import CLI

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"

LABELS = dict(
    board="rpi4", chip="bcm2711", arch="resnet20", algorithm="reactnet", runtime="larq", pad="0", threads="1"
)
MODEL = {k: v for k, v in LABELS.items() if k != "threads"}


def row(**kw) -> Measurement:
    base = dict(
        campaign="c1",
        board="rpi4",
        chip="bcm2711",
        arch="resnet20",
        algorithm="reactnet",
        runtime="larq",
        status="ok",
        threads=1,
        runs=100,
        model_bytes=50_000,
        fp32_model_bytes=400_000,
        speedup_vs_fp32=3.0,
        storage_ratio=8.0,
        max_abs_err=2e-6,
        created_at=100.0,
        latency_ms={"min": 1.0, "median": 2.0, "mean": 2.5, "p90": 3.0, "p99": 4.0, "std": 0.5, "max": 5.0},
    )
    return Measurement(**{**base, **kw})


def registry_for(store: ResultsStore, up_probe=None) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(ResultsCollector(store, up_probe))
    return registry


@pytest.fixture
def store(tmp_path) -> ResultsStore:
    return ResultsStore(tmp_path)


def test_values_of_an_ok_row(store):
    store.add(row())
    r = registry_for(store)
    value = r.get_sample_value
    assert value("bibench_inference_latency_seconds", {**LABELS, "quantile": "0.5"}) == pytest.approx(0.002)
    assert value("bibench_inference_latency_seconds", {**LABELS, "quantile": "0.9"}) == pytest.approx(0.003)
    assert value("bibench_inference_latency_seconds", {**LABELS, "quantile": "0.99"}) == pytest.approx(0.004)
    assert value("bibench_inference_latency_seconds_count", LABELS) == 100
    assert value("bibench_inference_latency_seconds_sum", LABELS) == pytest.approx(0.25)
    assert value("bibench_model_size_bytes", MODEL) == 50_000
    assert value("bibench_storage_ratio", MODEL) == 8.0
    assert value("bibench_speedup_ratio", LABELS) == 3.0
    assert value("bibench_numerics_max_abs_error", LABELS) == 2e-6
    assert value("bibench_measurement_status", {**LABELS, "status": "ok"}) == 1.0
    assert value("bibench_agent_up", {"board": "rpi4"}) is None  # no probe, no family


def test_a_daBNN_row_carries_its_padding_as_a_label(store):
    store.add(row(runtime="dabnn", pad_value=-1.0))
    value = registry_for(store).get_sample_value
    assert value("bibench_speedup_ratio", {**LABELS, "runtime": "dabnn", "pad": "-1"}) == 3.0


def test_latest_row_wins_across_campaigns(store):
    store.add(row(campaign="z-old", created_at=10.0, latency_ms={"median": 9.0}))
    store.add(row(campaign="a-new", created_at=20.0, latency_ms={"median": 1.0}, model_bytes=42))
    store.add(row(campaign="a-new", threads=4, created_at=5.0, latency_ms={"median": 0.5}, model_bytes=41))
    value = registry_for(store).get_sample_value
    assert value("bibench_inference_latency_seconds", {**LABELS, "quantile": "0.5"}) == pytest.approx(0.001)
    assert value("bibench_inference_latency_seconds", {**LABELS, "threads": "4", "quantile": "0.5"}) == 0.0005
    assert value("bibench_model_size_bytes", MODEL) == 42  # one series per model: the newest row's
    statuses = [
        s for m in registry_for(store).collect() if m.name == "bibench_measurement_status" for s in m.samples
    ]
    assert len(statuses) == 2


def test_non_ok_rows_export_only_their_status(store):
    store.add(row(campaign="c1", created_at=1.0))
    store.add(row(campaign="c2", created_at=2.0, status="numerics_error", max_abs_err=0.7))
    store.add(
        row(algorithm="xnor", status="unsupported", reason="no op", latency_ms={}, speedup_vs_fp32=None)
    )
    r = registry_for(store)
    assert r.get_sample_value("bibench_measurement_status", {**LABELS, "status": "numerics_error"}) == 1.0
    assert r.get_sample_value("bibench_measurement_status", {**LABELS, "status": "ok"}) is None
    assert (
        r.get_sample_value(
            "bibench_measurement_status", {**LABELS, "algorithm": "xnor", "status": "unsupported"}
        )
        == 1
    )
    for name in (
        "bibench_inference_latency_seconds_count",
        "bibench_speedup_ratio",
        "bibench_numerics_max_abs_error",
    ):
        assert r.get_sample_value(name, LABELS) is None, name
    assert r.get_sample_value("bibench_model_size_bytes", MODEL) is None


def test_a_row_without_a_mean_has_quantiles_but_no_sum(store):
    store.add(row(latency_ms={"median": 2.0}))
    value = registry_for(store).get_sample_value
    assert value("bibench_inference_latency_seconds", {**LABELS, "quantile": "0.5"}) == 0.002
    assert value("bibench_inference_latency_seconds_sum", LABELS) is None


def test_agent_up_from_the_probe(store):
    r = registry_for(store, up_probe=lambda: {"rpi4": True, "jetson": False})
    assert r.get_sample_value("bibench_agent_up", {"board": "rpi4"}) == 1.0
    assert r.get_sample_value("bibench_agent_up", {"board": "jetson"}) == 0.0

    def broken() -> dict[str, bool]:
        raise RuntimeError("inventory unreadable")

    store.add(row())
    r = registry_for(store, up_probe=broken)  # a broken probe costs its family, not the scrape
    assert r.get_sample_value("bibench_agent_up", {"board": "rpi4"}) is None
    assert r.get_sample_value("bibench_measurement_status", {**LABELS, "status": "ok"}) == 1.0


def _scrape(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_real_http_scrape(store):
    store.add(row())
    server, thread = serve_metrics(store, 0, up_probe=lambda: {"rpi4": True})
    try:
        families = _scrape(f"http://127.0.0.1:{server.server_port}/metrics")
        latency = families["bibench_inference_latency_seconds"]
        assert latency.type == "summary"
        quantiles = {s.labels["quantile"]: s.value for s in latency.samples if s.name == latency.name}
        assert quantiles == pytest.approx({"0.5": 0.002, "0.9": 0.003, "0.99": 0.004})
        assert all({k: v for k, v in s.labels.items() if k != "quantile"} == LABELS for s in latency.samples)
        assert families["bibench_agent_up"].samples[0].value == 1.0
        assert "python_gc_objects_collected" not in families  # a registry of our own: only our metrics
        store.add(row(threads=2))  # fresh families per scrape: a new row shows without a restart
        latency = _scrape(f"http://127.0.0.1:{server.server_port}/metrics")[
            "bibench_inference_latency_seconds"
        ]
        assert {s.labels["threads"] for s in latency.samples} == {"1", "2"}
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert not thread.is_alive()


def test_metrics_serve_verb_until_sigterm(tmp_path):
    ResultsStore(tmp_path).add(row())
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, "metrics", "serve", "--port", "0", "--results", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("serving metrics on http://127.0.0.1:") and line.endswith("/metrics"), line
        families = _scrape(line.split()[-1])
        assert families["bibench_measurement_status"].samples[0].labels["board"] == "rpi4"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_mistyped_results_path_is_refused_not_served_empty(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", CLI, "metrics", "serve", "--port", "0", "--results", str(tmp_path / "typo")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and f"no results store at {tmp_path / 'typo' / 'results.sqlite'}" in out.stderr
    assert not (tmp_path / "typo").exists()


def test_dashboards_load_and_query_exported_metrics(store):
    config = yaml.safe_load((DASHBOARDS / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:9464"]
    dashboard = json.loads((DASHBOARDS / "grafana-bibench.json").read_text())
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"board", "arch"}
    exported = {m.name for m in ResultsCollector(store, lambda: {}).describe()}
    queried = {
        name
        for p in dashboard["panels"]
        for t in p["targets"]
        for name in re.findall(r"bibench_\w+", t["expr"])
    }
    assert queried and queried <= exported, queried - exported
    assert {
        "bibench_speedup_ratio",
        "bibench_storage_ratio",
        "bibench_agent_up",
        "bibench_measurement_status",
        "bibench_inference_latency_seconds",
    } <= queried
