"""The Prometheus exporter: values from a fresh registry, then one real HTTP scrape and the `metrics serve` verb."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import bihost
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
        fp32_runtime="onnxruntime",
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
    for stat, ms in {"min": 1.0, "median": 2.0, "mean": 2.5, "p90": 3.0, "p99": 4.0, "max": 5.0}.items():
        assert value("bibench_latency_seconds", {**LABELS, "stat": stat}) == pytest.approx(ms / 1e3), stat
    assert value("bibench_latency_seconds", {**LABELS, "stat": "std"}) is None  # not a latency
    assert value("bibench_latency_invokes", LABELS) == 100
    assert value("bibench_measured_timestamp_seconds", LABELS) == 100.0
    assert value("bibench_last_measurement_timestamp_seconds", LABELS) == 100.0
    assert value("bibench_measurements_total", {"board": "rpi4", "status": "ok"}) == 1
    assert value("bibench_exporter_scrape_success") == 1.0
    assert value("bibench_exporter_scrape_duration_seconds") >= 0
    assert value("bibench_exporter_build_info", {"version": bihost.__version__}) == 1.0
    assert value("bibench_model_size_bytes", MODEL) == 50_000
    assert value("bibench_storage_ratio", MODEL) == 8.0
    assert (
        value("bibench_speedup_ratio", {**LABELS, "fp32_runtime": "onnxruntime"}) == 3.0
    )  # says its baseline
    assert value("bibench_numerics_max_abs_error", LABELS) == 2e-6
    assert value("bibench_measurement_status", {**LABELS, "status": "ok"}) == 1.0
    assert value("bibench_agent_up", {"board": "rpi4"}) is None  # no probe, no family


def test_a_daBNN_row_carries_its_padding_as_a_label(store):
    store.add(row(runtime="dabnn", pad_value=-1.0))
    value = registry_for(store).get_sample_value
    dab = {**LABELS, "runtime": "dabnn", "pad": "-1", "fp32_runtime": "onnxruntime"}
    assert value("bibench_speedup_ratio", dab) == 3.0


def test_latest_row_wins_across_campaigns(store):
    store.add(row(campaign="z-old", created_at=10.0, latency_ms={"median": 9.0}))
    store.add(row(campaign="a-new", created_at=20.0, latency_ms={"median": 1.0}, model_bytes=42))
    store.add(row(campaign="a-new", threads=4, created_at=5.0, latency_ms={"median": 0.5}, model_bytes=41))
    value = registry_for(store).get_sample_value
    assert value("bibench_latency_seconds", {**LABELS, "stat": "median"}) == pytest.approx(0.001)
    assert value("bibench_latency_seconds", {**LABELS, "threads": "4", "stat": "median"}) == 0.0005
    assert value("bibench_model_size_bytes", MODEL) == 42  # one series per model: the newest row's
    statuses = [
        s for m in registry_for(store).collect() if m.name == "bibench_measurement_status" for s in m.samples
    ]
    assert len(statuses) == 2


def test_a_failed_retry_keeps_the_last_good_values_and_shows_its_status_apart(store):
    store.add(row(campaign="c1", created_at=1.0))
    store.add(row(campaign="c2", created_at=2.0, status="numerics_error", max_abs_err=0.7))
    store.add(
        row(algorithm="xnor", status="unsupported", reason="no op", latency_ms={}, speedup_vs_fp32=None)
    )
    r = registry_for(store)
    assert r.get_sample_value("bibench_measurement_status", {**LABELS, "status": "numerics_error"}) == 1.0
    assert r.get_sample_value("bibench_measurement_status", {**LABELS, "status": "ok"}) is None
    assert r.get_sample_value("bibench_last_measurement_timestamp_seconds", LABELS) == 2.0
    # the numbers are c1's, the last good measurement, and say when it was taken
    assert r.get_sample_value("bibench_latency_seconds", {**LABELS, "stat": "median"}) == 0.002
    assert r.get_sample_value("bibench_numerics_max_abs_error", LABELS) == 2e-6
    assert r.get_sample_value("bibench_measured_timestamp_seconds", LABELS) == 1.0
    xnor = {**LABELS, "algorithm": "xnor"}
    assert r.get_sample_value("bibench_measurement_status", {**xnor, "status": "unsupported"}) == 1
    for name in ("bibench_latency_invokes", "bibench_numerics_max_abs_error"):
        assert r.get_sample_value(name, xnor) is None, name  # never ok: nothing but its status
    assert r.get_sample_value("bibench_speedup_ratio", {**xnor, "fp32_runtime": "onnxruntime"}) is None
    assert r.get_sample_value("bibench_model_size_bytes", {**MODEL, "algorithm": "xnor"}) is None
    counts = {("ok",): 1, ("numerics_error",): 1, ("unsupported",): 1}
    for (st,), n in counts.items():
        assert r.get_sample_value("bibench_measurements_total", {"board": "rpi4", "status": st}) == n


def test_repeating_a_campaign_only_raises_the_counter(store):
    """The counter counts filings; a retry that replaces a failed row still adds one, and the
    gauges follow the newest row: nothing Prometheus would read as a reset."""
    seen = []
    filings = [("c0", "error"), ("c0", "ok"), ("c1", "ok"), ("c2", "error"), ("c2", "ok")]
    for i, (campaign, st) in enumerate(filings):
        store.add(row(campaign=campaign, created_at=10.0 + i, status=st, latency_ms={"median": 1.0 + i}))
        seen.append(
            sum(
                registry_for(store).get_sample_value(
                    "bibench_measurements_total", {"board": "rpi4", "status": s}
                )
                or 0
                for s in ("ok", "error")
            )
        )
    assert seen == [1, 2, 3, 4, 5]
    value = registry_for(store).get_sample_value
    assert value("bibench_latency_seconds", {**LABELS, "stat": "median"}) == pytest.approx(0.005)
    # the ok measurement before the newest (c1's 3 ms): what a latency regression is judged against
    assert value("bibench_previous_latency_seconds", {**LABELS, "stat": "median"}) == pytest.approx(0.003)


def test_a_store_that_cannot_be_read_still_answers_with_success_0(store):
    store.add(row())
    store.path.write_bytes(b"not a database" * 100)
    value = registry_for(store).get_sample_value
    assert value("bibench_exporter_scrape_success") == 0.0
    assert value("bibench_latency_seconds", {**LABELS, "stat": "median"}) is None


def test_an_older_store_gets_its_series_index_when_opened(tmp_path):
    import sqlite3

    ResultsStore(tmp_path).add(row(created_at=5.0))
    ResultsStore(tmp_path).add(row(campaign="c2", created_at=6.0, status="error"))
    with sqlite3.connect(tmp_path / "results.sqlite") as db:  # as schema 2 left it: no index, no counts
        db.execute("DELETE FROM measurement_series")
        db.execute("DELETE FROM measurement_counts")
        db.execute("UPDATE schema_version SET version = 2")
    value = registry_for(ResultsStore(tmp_path)).get_sample_value
    assert value("bibench_measurement_status", {**LABELS, "status": "error"}) == 1
    assert value("bibench_measured_timestamp_seconds", LABELS) == 5.0
    assert value("bibench_measurements_total", {"board": "rpi4", "status": "ok"}) == 1


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
        latency = families["bibench_latency_seconds"]
        assert latency.type == "gauge"
        stats = {s.labels["stat"]: s.value for s in latency.samples}
        assert stats == pytest.approx(
            {"min": 0.001, "median": 0.002, "mean": 0.0025, "p90": 0.003, "p99": 0.004, "max": 0.005}
        )
        assert all({k: v for k, v in s.labels.items() if k != "stat"} == LABELS for s in latency.samples)
        assert families["bibench_measurements"].type == "counter"
        assert families["bibench_agent_up"].samples[0].value == 1.0
        assert "python_gc_objects_collected" not in families  # a registry of our own: only our metrics
        store.add(row(threads=2))  # fresh families per scrape: a new row shows without a restart
        latency = _scrape(f"http://127.0.0.1:{server.server_port}/metrics")["bibench_latency_seconds"]
        assert {s.labels["threads"] for s in latency.samples} == {"1", "2"}
        for path in ("/metric", "/favicon.ico", "/metrics/x"):  # a wrong metrics_path fails the scrape
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}{path}", timeout=10)
            assert err.value.code == 404, path
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/", timeout=10) as response:
            assert b"/metrics" in response.read()
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
    exported = {
        m.name + ("_total" if m.type == "counter" else "")
        for m in ResultsCollector(store, lambda: {}).describe()
    }
    queried = {
        name
        for p in dashboard["panels"]
        for t in p.get("targets", [])
        for name in re.findall(r"bibench_\w+", t["expr"])
    }
    assert queried and queried <= exported, queried - exported
    assert {
        "bibench_speedup_ratio",
        "bibench_storage_ratio",
        "bibench_agent_up",
        "bibench_measurement_status",
        "bibench_latency_seconds",
        "bibench_measurements_total",
    } <= queried


def test_board_health_is_exported_for_marked_and_inventory_boards(store):
    store.set_board_state("rpi4", "maintenance", "fan replaced")
    value = registry_for(
        store, up_probe=lambda: {"rpi4": True, "local": None, "jetson": False}
    ).get_sample_value
    assert value("bibench_board_health", {"board": "rpi4", "state": "maintenance"}) == 1
    assert value("bibench_board_health", {"board": "rpi4", "state": "good"}) is None
    assert value("bibench_board_health", {"board": "local", "state": "good"}) == 1  # never marked
    assert value("bibench_agent_up", {"board": "local"}) is None  # embedded: not probed, not "down"
    assert value("bibench_agent_up", {"board": "jetson"}) == 0


def test_the_up_probe_reads_the_inventory_at_every_scrape(tmp_path):
    from bihost.commands.metrics import up_probe_for
    from tests.conftest import free_port

    inv = tmp_path / "inv.yaml"

    def write(boards: dict) -> None:
        inv.write_text(yaml.safe_dump({"version": 1, "boards": boards}))

    entry = {"soc": "test", "arch": "native", "os": "linux", "runtimes": ["custom"]}
    write({"alpha": {**entry, "address": f"127.0.0.1:{free_port()}"}})  # nothing listens there
    probe = up_probe_for(inv, timeout_s=0.5)
    assert probe is not None and probe() == {"alpha": False}
    write(
        {"alpha": {**entry, "address": f"127.0.0.1:{free_port()}"}, "local": {**entry, "address": "embedded"}}
    )
    assert probe() == {"alpha": False, "local": None}  # added after start: shows without a restart
    with pytest.raises(Exception, match="inventory|yaml|YAML"):
        inv.write_text("boards: [")
        probe()  # the collector logs it and drops agent_up for that scrape


def test_tls_and_a_bearer_token_guard_the_exposition(store, tmp_path):
    import ssl

    from bihost.certs import init_ca, issue
    from bihost.metrics import ServeSecurity

    ca = init_ca(tmp_path / "pki")
    files = issue(tmp_path / "pki", "metrics", ["127.0.0.1"])
    store.add(row())
    token = "metrics-token-0123456789"
    server, thread = serve_metrics(store, 0, security=ServeSecurity(str(files.cert), str(files.key), token))
    url = f"https://127.0.0.1:{server.server_port}/metrics"
    trusting = ssl.create_default_context(cafile=str(ca.cert))
    try:
        for sent, why in ((None, b"is required"), ("Bearer wrong-token-0123456789", b"was not accepted")):
            request = urllib.request.Request(url, headers={"Authorization": sent} if sent else {})
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(request, timeout=10, context=trusting)
            assert err.value.code == 401 and why in err.value.read()
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10, context=trusting) as response:
            assert b"bibench_latency_seconds{" in response.read()
        with pytest.raises(urllib.error.URLError):  # a client that does not trust the lab CA
            urllib.request.urlopen(request, timeout=10, context=ssl.create_default_context())
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # no plaintext on the TLS port
            urllib.request.urlopen(url.replace("https", "http"), timeout=10)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_plaintext_off_loopback_is_refused_unless_asked_for(store, tmp_path):
    from bihost.metrics import MetricsSecurityError, ServeSecurity

    with pytest.raises(MetricsSecurityError, match="refusing to serve metrics in plaintext on 0.0.0.0"):
        serve_metrics(store, 0, host="0.0.0.0")
    server, thread = serve_metrics(store, 0, host="0.0.0.0", security=ServeSecurity(insecure=True))
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            CLI,
            "metrics",
            "serve",
            "--host",
            "0.0.0.0",
            "--results",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "refusing to serve metrics in plaintext" in out.stderr, out.stderr


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard_folder():
    source = yaml.safe_load((DASHBOARDS / "provisioning" / "datasources" / "bibench.yml").read_text())
    (ds,) = source["datasources"]
    assert ds["type"] == "prometheus" and ds["url"].startswith("http")
    config = yaml.safe_load((DASHBOARDS / "prometheus.yml").read_text())
    assert ds["jsonData"]["timeInterval"] == config["global"]["scrape_interval"]
    provider = yaml.safe_load((DASHBOARDS / "provisioning" / "dashboards" / "bibench.yml").read_text())
    (p,) = provider["providers"]
    assert p["type"] == "file" and p["options"]["path"]
    dashboard = json.loads((DASHBOARDS / "grafana-bibench.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(p.get("description") for p in panels), "every panel says what it shows"
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Farm", "Campaigns", "Results", "Accuracy"]


def test_campaign_progress_is_exported_while_it_runs_and_after(store):
    store.start_campaign("old", "rpi4", "profile", planned=4)
    store.finish_campaign("old", "rpi4", "profile")
    store.start_campaign("c9", "rpi4", "profile", planned=6, done=2)  # a resume: 2 already stored
    store.campaign_step("c9", "rpi4", "profile", ok=True)
    store.campaign_step("c9", "rpi4", "profile", ok=False)
    store.start_campaign("b1", "local", "bench", planned=9)
    value = registry_for(store).get_sample_value
    c9 = {"campaign": "c9", "board": "rpi4", "kind": "profile"}
    assert value("bibench_campaign_planned", c9) == 6
    assert value("bibench_campaign_done", c9) == 3 and value("bibench_campaign_failed", c9) == 1
    assert value("bibench_campaign_running", c9) == 1
    assert value("bibench_campaign_last_progress_timestamp_seconds", c9) > 0
    assert value("bibench_campaign_running", {"campaign": "old", "board": "rpi4", "kind": "profile"}) == 0
    assert value("bibench_campaign_planned", {"campaign": "b1", "board": "local", "kind": "bench"}) == 9
    store.finish_campaign("c9", "rpi4", "profile")  # now c9 is the newest finished: "old" drops out
    value = registry_for(store).get_sample_value
    assert value("bibench_campaign_running", c9) == 0
    assert value("bibench_campaign_planned", {"campaign": "old", "board": "rpi4", "kind": "profile"}) is None


def test_the_accuracy_tracks_newest_runs_are_exported(store):
    from bihost.records import TrainingRun

    def run(**kw) -> TrainingRun:
        base = dict(
            task="keyword_spotting",
            arch="dfsmn",
            algorithm="bnn",
            scale="default",
            seed=0,
            config_hash="a" * 16,
            data_version="d1",
            data_source="espeak-ng",
            metric_name="accuracy",
            metric=0.9661,
            epochs=20,
            train_seconds=209.0,
            device="cpu",
            threads=2,
            created_at=10.0,
        )
        return TrainingRun(**{**base, **kw})

    store.add_training_run(run())
    store.add_training_run(run(config_hash="b" * 16, metric=0.97, created_at=20.0))  # a newer recipe
    store.add_training_run(run(algorithm="fp32", metric=0.9983, train_seconds=799.0))
    value = registry_for(store).get_sample_value
    key = dict(task="keyword_spotting", arch="dfsmn", scale="default", seed="0", metric_name="accuracy")
    assert value("bibench_training_metric", {**key, "algorithm": "bnn"}) == 0.97
    assert value("bibench_training_metric", {**key, "algorithm": "fp32"}) == 0.9983
    assert value("bibench_training_seconds", {**key, "algorithm": "fp32"}) == 799.0
