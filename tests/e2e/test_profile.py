"""End to end: the host CLI drives real agents on 127.0.0.1 and files what they measure."""

from __future__ import annotations

import json
import platform
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import free_port

LARQ = __import__("biagent.runtimes", fromlist=["get_runtime"]).get_runtime("larq").describe().installed
FAST = ["--arch", "resnet20", "--runs", "3", "--min-duration", "0.05", "--warmup", "1"]
REQUIRED = {
    "board",
    "chip",
    "arch",
    "algorithm",
    "runtime",
    "status",
    "reason",
    "latency_ms",
    "runs",
    "warmup",
    "threads",
    "model_bytes",
    "fp32_model_bytes",
    "speedup_vs_fp32",
    "storage_ratio",
    "max_abs_err",
    "agent",
}


def bihost(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bihost.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def write_inventory(path: Path, boards: dict[str, dict]) -> Path:
    entries = {}
    for name, b in boards.items():
        entries[name] = {
            "soc": b.get("soc", f"test SoC {name}"),
            "arch": b.get("arch", "native"),
            "os": "linux",
            "runtimes": ["custom", "onnxruntime", "larq"],
            "address": b["address"],
        }
        if "cpu" in b:
            entries[name]["cpu"] = {"clusters": b["cpu"]}
    path.write_text(yaml.safe_dump({"version": 1, "boards": entries}))
    return path


def stored(results: Path) -> list[dict]:
    db = results / "results.sqlite"
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=30) as conn:
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("select * from measurements order by id")]
        except sqlite3.OperationalError:  # the host is still creating the schema
            return []


def test_two_boards_profile_results_and_metrics(start_agent, tmp_path):
    alpha, beta = start_agent("alpha"), start_agent("beta")
    inv = write_inventory(
        tmp_path / "inv.yaml", {"alpha": {"address": alpha.address}, "beta": {"address": beta.address}}
    )
    results = tmp_path / "results"
    out = bihost(
        "profile",
        "--chip",
        "alpha,beta",
        "--algo",
        "bnn,reactnet",
        "--runtime",
        "onnxruntime,custom,larq",
        *FAST,
        "--json",
        "--results",
        str(results),
        "--inventory",
        str(inv),
    )
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert len(rows) == 2 * (1 + 2 * 3)
    for r in rows:
        assert REQUIRED <= set(r), REQUIRED - set(r)
        assert r["agent"]["machine"] == platform.machine()
        if r["runtime"] == "larq" and not LARQ:
            assert r["status"] == "unsupported" and "not available" in r["reason"]
        else:
            assert r["status"] == "ok", r
            assert {"min", "median", "mean", "p90", "p99", "std"} <= set(r["latency_ms"])
            assert r["runs"] >= 3 and r["model_bytes"] > 0 and r["speedup_vs_fp32"] > 0
    by = {(r["board"], r["algorithm"], r["runtime"]): r for r in rows}
    for board in ("alpha", "beta"):
        assert by[(board, "fp32", "onnxruntime")]["speedup_vs_fp32"] == pytest.approx(1.0)
        assert {r["fp32_runtime"] for r in rows if r["board"] == board and r["status"] == "ok"} == {
            "onnxruntime"
        }
        packed = by[(board, "bnn", "custom")]
        assert (
            packed["storage_ratio"] > 5
            and packed["fp32_model_bytes"] == by[(board, "fp32", "onnxruntime")]["model_bytes"]
        )
        assert packed["max_abs_err"] < 1e-3

    # Every row was filed, durably, in the store; `bihost results` reads them back.
    assert len(stored(results)) == len(rows)
    csv = bihost("results", "--results", str(results), "--format", "csv")
    assert csv.returncode == 0, csv.stderr
    table = pd.read_csv(__import__("io").StringIO(csv.stdout))
    assert len(table) == len(rows) and set(table["board"]) == {"alpha", "beta"}

    # Prometheus text over HTTP, from the same store.
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bihost.cli",
            "metrics",
            "serve",
            "--port",
            str(port),
            "--results",
            str(results),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        body = ""
        for _ in range(100):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert "bibench_latency_seconds{" in body
        assert 'board="alpha"' in body and 'board="beta"' in body and 'runtime="custom"' in body
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_agent_killed_mid_profile_then_resume(start_agent, tmp_path):
    port = free_port()
    store = tmp_path / "alpha-store"
    alpha = start_agent("alpha", store=store, extra=("--port", str(port)))
    inv = write_inventory(tmp_path / "inv.yaml", {"alpha": {"address": alpha.address}})
    results = tmp_path / "results"
    args = [
        "profile",
        "--chip",
        "alpha",
        "--algo",
        "bnn,xnor,dorefa,bireal",
        "--runtime",
        "onnxruntime,custom",
        *FAST,
        "--results",
        str(results),
        "--inventory",
        str(inv),
        "--json",
        "--board-wait",
        "3",
    ]  # the board stays dead: file the rest for --resume, no 120 s wait
    proc = subprocess.Popen(
        [sys.executable, "-m", "bihost.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while len(stored(results)) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    alpha.stop(sig=9)  # SIGKILL: the board dies in the middle of the campaign
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "--resume" in stderr, stderr
    first = stored(results)
    assert len(first) == 9  # every planned row is accounted for
    ok_before = {(r["algorithm"], r["runtime"]): r for r in first if r["status"] == "ok"}
    failed = [r for r in first if r["status"] == "error"]
    assert len(ok_before) >= 3 and failed, first
    assert all("alpha" in r["reason"] for r in failed)

    start_agent("alpha", store=store, extra=("--port", str(port)))  # back on the same address
    again = bihost(*args, "--resume")
    assert again.returncode == 0, again.stderr
    redone = json.loads(again.stdout)
    assert {(r["algorithm"], r["runtime"]) for r in redone} == {
        (r["algorithm"], r["runtime"]) for r in failed
    }
    final = stored(results)
    assert len(final) == 9 and all(r["status"] == "ok" for r in final)
    assert len({(r["algorithm"], r["runtime"]) for r in final}) == 9  # no duplicates
    for key, row in ok_before.items():  # finished rows were not measured again
        match = next(r for r in final if (r["algorithm"], r["runtime"]) == key)
        assert match["created_at"] == row["created_at"]


def test_identity_mismatch_is_refused_unless_forced(start_agent, tmp_path):
    agent = start_agent("phone")
    # A stand-in for hardware we cannot have: an entry claiming a Kirin 970, served by this x86 machine.
    inv = write_inventory(
        tmp_path / "inv.yaml",
        {
            "fake-kirin970": {
                "address": agent.address,
                "arch": "arm64",
                "soc": "HiSilicon Kirin 970",
                "cpu": ["4x Cortex-A73 @ 2.36", "4x Cortex-A53 @ 1.80"],
            }
        },
    )
    base = [
        "profile",
        "--chip",
        "fake-kirin970",
        "--algo",
        "bnn",
        "--runtime",
        "onnxruntime",
        *FAST,
        "--inventory",
        str(inv),
        "--json",
    ]
    refused = bihost(*base, "--results", str(tmp_path / "r1"))
    assert refused.returncode == 1 and "identity mismatch" in refused.stderr
    assert all(r["status"] == "error" for r in stored(tmp_path / "r1"))
    forced = bihost(*base, "--results", str(tmp_path / "r2"), "--force")
    assert forced.returncode == 0, forced.stderr
    rows = json.loads(forced.stdout)
    assert rows and all(r["forced"] and r["status"] == "ok" for r in rows)


def test_unreachable_board_fails_fast_and_clearly(tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", {"ghost": {"address": f"127.0.0.1:{free_port()}"}})
    start = time.monotonic()
    out = bihost(
        "profile",
        "--chip",
        "ghost",
        "--algo",
        "bnn",
        "--runtime",
        "onnxruntime",
        *FAST,
        "--inventory",
        str(inv),
        "--results",
        str(tmp_path / "r"),
        timeout=120,
    )
    assert out.returncode == 1 and "unreachable" in out.stderr and "Traceback" not in out.stderr
    assert time.monotonic() - start < 60


def test_unknown_chip_lists_the_known_ones(tmp_path):
    out = bihost("profile", "--chip", "kirin971", "--results", str(tmp_path / "r"))
    assert out.returncode == 1 and "kirin970" in out.stderr and len(out.stderr.strip().splitlines()) == 1


DABNN = __import__("biagent.runtimes", fromlist=["get_runtime"]).get_runtime("dabnn").describe().installed


def test_each_runtime_gets_the_padding_it_can_run_and_the_row_says_which(tmp_path):
    """daBNN's binary convs pad with -1: its rows are binarized that way (the others with 0)."""
    out = bihost(
        "profile",
        "--chip",
        "local",
        "--arch",
        "reactnet",
        "--algo",
        "bnn",
        "--runtime",
        "custom,dabnn",
        "--runs",
        "3",
        "--min-duration",
        "0.05",
        "--warmup",
        "1",
        "--json",
        "--results",
        str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    rows = {(r["algorithm"], r["runtime"]): r for r in json.loads(out.stdout)}
    assert rows[("fp32", "onnxruntime")]["pad_value"] == 0.0 and rows[("bnn", "custom")]["pad_value"] == 0.0
    dabnn = rows[("bnn", "dabnn")]
    assert dabnn["pad_value"] == -1.0
    if DABNN:  # a daBNN build is configured here (BIAGENT_DABNN_ROOT): a real, checked row
        assert dabnn["status"] == "ok", dabnn["reason"]
        assert dabnn["speedup_vs_fp32"] > 0 and dabnn["max_abs_err"] < 1e-3
    else:
        assert dabnn["status"] == "unsupported" and "BIAGENT_DABNN_ROOT" in dabnn["reason"]
    table = bihost("results", "--results", str(tmp_path))
    assert table.returncode == 0 and " pad " in table.stdout.replace("┃", " ").replace("│", " ")
