"""A real Prometheus scrapes a real exporter after real campaigns: every dashboard query and
every variable returns data, promtool accepts the shipped config and the exposition, and
repeating a campaign resets no counter."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.agent.test_agent_metrics import _metrics_url
from tests.conftest import free_port
from tests.e2e.test_profile import FAST, bihost, write_inventory

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Prometheus tests: .ci/run installs Debian's prometheus ({tool})")
        pytest.skip(f"no {tool} here (apt-get install prometheus)")
    return path


def _get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _query(base: str, expr: str) -> list[dict]:
    body = json.loads(_get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"))
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def _wait(what: str, check, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _profile(inv: Path, results: Path, campaign: str) -> None:
    out = bihost(
        "profile",
        "--chip",
        "alpha",
        "--algo",
        "bnn",
        "--runtime",
        "onnxruntime,custom,dabnn",
        *FAST,
        "--campaign",
        campaign,
        "--results",
        str(results),
        "--inventory",
        str(inv),
    )
    assert out.returncode == 0, out.stderr


def _shipped_tls_job(target: str, ca_file: Path, token_file: Path) -> dict:
    """The commented TLS + token job of the shipped config, uncommented, pointed at `target`."""
    text = (DASHBOARDS / "prometheus.yml").read_text()
    block = text.split("# --- begin tls job ---\n")[1].split("# --- end tls job ---")[0]
    (job,) = yaml.safe_load("\n".join(line[1:] for line in block.splitlines()))
    assert job["tls_config"]["ca_file"] and job["authorization"]["credentials_file"]
    job["tls_config"]["ca_file"] = str(ca_file)
    job["authorization"]["credentials_file"] = str(token_file)
    job["static_configs"][0]["targets"] = [target]
    return job


def _dashboard_queries() -> list[str]:
    """Every panel's and every variable's query, with each variable set to match all."""
    dashboard = json.loads((DASHBOARDS / "grafana-bibench.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for v in dashboard["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict):  # label_values(<selector>, <label>): query the selector
            m = re.fullmatch(r"label_values\((.*), (\w+)\)", q["query"])
            assert m, q
            exprs.append(m.group(1))
    return [re.sub(r"\$\w+", ".*", e) for e in exprs]


def test_prometheus_scrapes_the_exporter_and_every_dashboard_query_has_data(
    start_agent, tmp_path, monkeypatch
):
    prometheus, promtool = _need("prometheus"), _need("promtool")
    # a board without daBNN: its rows are "unsupported", so the not-ok panels have data too
    monkeypatch.setenv("BIAGENT_DABNN_ROOT", str(tmp_path / "no-dabnn-here"))
    alpha = start_agent("alpha", extra=("--metrics-port", "0"))
    agent_metrics = _metrics_url(alpha)
    inv = write_inventory(tmp_path / "inv.yaml", {"alpha": {"address": alpha.address}})
    doc = yaml.safe_load(inv.read_text())
    doc["boards"]["alpha"]["runtimes"].append("dabnn")
    inv.write_text(yaml.safe_dump(doc))
    results = tmp_path / "results"
    _profile(inv, results, "first")
    # the accuracy row reads training runs: one stored run stands in for `bihost bench`
    from bihost.records import TrainingRun
    from bihost.results import ResultsStore

    ResultsStore(results).add_training_run(
        TrainingRun(
            task="keyword_spotting",
            arch="dfsmn",
            algorithm="bnn",
            scale="quick",
            seed=0,
            config_hash="0" * 16,
            data_version="fixture",
            data_source="test fixture",
            metric_name="accuracy",
            metric=0.5,
            epochs=1,
            train_seconds=1.0,
            device="cpu",
            threads=1,
        )
    )

    port, tls_port = free_port(), free_port()
    serve = [sys.executable, "-m", "bihost.cli", "metrics", "serve", "--results", str(results)]
    exporter = subprocess.Popen(
        [*serve, "--port", str(port), "--inventory", str(inv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # the same store behind HTTPS and a bearer token, scraped with the shipped TLS job
    from bihost.certs import init_ca, issue

    ca = init_ca(tmp_path / "pki")
    cert = issue(tmp_path / "pki", "metrics", ["127.0.0.1"])
    token_file = tmp_path / "metrics.token"
    token_file.write_text("prometheus-scrape-token-0123\n")
    tls_exporter = subprocess.Popen(
        [
            *serve,
            "--port",
            str(tls_port),
            "--tls-cert",
            str(cert.cert),
            "--tls-key",
            str(cert.key),
            "--token-file",
            str(token_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    config = yaml.safe_load((DASHBOARDS / "prometheus.yml").read_text())
    shipped = subprocess.run(
        [promtool, "check", "config", str(DASHBOARDS / "prometheus.yml")], capture_output=True, text=True
    )
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    config["global"]["scrape_interval"] = config["global"]["scrape_timeout"] = "1s"
    assert config["rule_files"] == ["rules.yml"]
    config["rule_files"] = [str(DASHBOARDS / "rules.yml")]  # the config moves, the rules stay
    config["global"]["evaluation_interval"] = "1s"
    (job,) = config["scrape_configs"]
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{port}"]
    config["scrape_configs"].append(_shipped_tls_job(f"127.0.0.1:{tls_port}", ca.cert, token_file))
    agent_target = agent_metrics.split("//")[1].split("/")[0]
    config["scrape_configs"].append(
        {"job_name": "biagent", "static_configs": [{"targets": [agent_target], "labels": {"board": "alpha"}}]}
    )
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    web = free_port()
    server = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{web}"
    try:
        exposition = None

        def exporter_answers() -> bool:
            nonlocal exposition
            exposition = _get(f"http://127.0.0.1:{port}/metrics")
            return True

        _wait("the exporter", exporter_answers)
        assert exposition is not None
        lint = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr

        for job_name in ("bibench", "bibench-tls", "biagent"):
            _wait(
                f"a successful scrape of {job_name}",
                lambda job_name=job_name: any(
                    r["value"][1] == "1" for r in _query(base, f'up{{job="{job_name}"}}')
                ),
            )
        tls_series = _query(base, 'bibench_latency_seconds{job="bibench-tls", stat="median"}')
        assert {r["metric"]["runtime"] for r in tls_series} == {"onnxruntime", "custom"}
        _wait(
            "two scrapes",
            lambda: bool(_query(base, "count_over_time(bibench_exporter_scrape_success[1m]) >= 2")),
        )
        for expr in _dashboard_queries():
            assert _query(base, expr), f"no data for {expr}"
        assert _query(base, 'bibench_agent_up{board="alpha"}')[0]["value"][1] == "1"

        before = _query(base, "sum(bibench_measurements_total)")[0]["value"][1]
        _profile(inv, results, "second")  # the same campaign again: new rows, same series
        _wait(
            "the second campaign in Prometheus",
            lambda: _query(base, "sum(bibench_measurements_total)")[0]["value"][1] != before,
        )
        time.sleep(2)  # a few more scrapes after the change
        resets = _query(base, "resets(bibench_measurements_total[10m])")
        assert resets and all(r["value"][1] == "0" for r in resets), resets
        assert float(_query(base, "sum(bibench_measurements_total)")[0]["value"][1]) == 2 * float(before)
        for expr in _dashboard_queries():
            assert _query(base, expr), f"no data for {expr} after the second campaign"
        # every rule loaded and healthy; every recording rule has data (two ok rows per series now)
        groups = json.loads(_get(f"{base}/api/v1/rules"))["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) == 11 and all(r["health"] == "ok" for r in rules), rules
        for rule in (r for r in rules if r["type"] == "recording"):
            _wait(f"data for {rule['name']}", lambda rule=rule: bool(_query(base, rule["name"])))
        ok_runs = _query(base, 'biagent_benchmarks_total{job="biagent", outcome="ok"}')
        assert ok_runs and float(ok_runs[0]["value"][1]) >= 6  # two campaigns of three measurements
        assert _query(base, 'biagent_build_info{job="biagent", board="alpha"}')
        ratios = _query(base, "bibench:latency_regression_ratio")
        assert {r["metric"]["runtime"] for r in ratios} == {"onnxruntime", "custom"}
    finally:
        for proc in (server, exporter, tls_exporter):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_the_shipped_rules_pass_promtool():
    promtool = _need("promtool")
    for args in (["check", "rules", "rules.yml"], ["test", "rules", "rules.test.yml"]):
        out = subprocess.run([promtool, *args], cwd=DASHBOARDS, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
