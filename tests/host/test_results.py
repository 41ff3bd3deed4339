"""The results store: round trip, durability across processes and crashes, unique keys, the `results` verb."""

from __future__ import annotations

import dataclasses
import io
import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from bihost.commands.results import command as results_command
from bihost.records import Measurement
from bihost.results import SCHEMA_VERSION, DuplicateMeasurement, ResultsSchemaError, ResultsStore

# The `bihost` console entry as a subprocess runs it (main's one-line errors and exit codes).
CLI = "import sys; from bihost.cli import main; main(sys.argv[1:])"


def full(**kw) -> Measurement:
    """A measurement whose every field differs from its default, so a dropped column shows."""
    base = dict(
        campaign="c1",
        board="rpi4",
        chip="bcm2711",
        arch="resnet20",
        algorithm="reactnet",
        runtime="larq",
        status="ok",
        reason="why not",
        threads=4,
        pad_value=1.0,
        runs=200,
        warmup=20,
        model_sha256="ab" * 32,
        model_bytes=123_456,
        fp32_model_bytes=1_000_000,
        speedup_vs_fp32=3.5,
        fp32_runtime="onnxruntime",
        storage_ratio=8.1,
        max_abs_err=1.5e-6,
        peak_rss_bytes=9_999_999,
        runtime_version="0.16.0",
        agent_version="0.1.0",
        latency_ms={"min": 1.0, "median": 1.5, "mean": 1.6, "p90": 2.0, "p99": 3.0, "std": 0.25, "max": 4.0},
        agent={"cpu_model": "Cortex-A72", "machine": "aarch64", "cores": 4, "governor": "performance"},
        forced=True,
        emulated=True,
        created_at=1_700_000_000.25,
        samples_ms=[1.0, 1.5, 2.25],
    )
    return Measurement(**{**base, **kw})


def test_round_trip_keeps_every_field(tmp_path):
    m = full()
    defaults = Measurement(campaign="", board="", chip="", arch="", algorithm="", runtime="", status="ok")
    changed = {f.name for f in dataclasses.fields(m) if getattr(m, f.name) != getattr(defaults, f.name)}
    assert changed == {f.name for f in dataclasses.fields(m)} - {"status"}
    store = ResultsStore(tmp_path)
    store.add(m)
    (back,) = ResultsStore(tmp_path).rows()
    assert back == m and back.as_dict(samples=True) == m.as_dict(samples=True)


def test_partial_dicts_and_missing_time_round_trip(tmp_path):
    store = ResultsStore(tmp_path / "deep" / "dir")
    m = full(latency_ms={"median": 2.0}, agent={}, speedup_vs_fp32=None, created_at=0.0, samples_ms=[])
    store.add(m)
    (back,) = store.rows()
    assert back.latency_ms == {"median": 2.0} and back.agent == {} and back.speedup_vs_fp32 is None
    assert back.created_at > 1e9  # stamped at add: "latest wins" needs an order


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, timeout=120
    )


ADD_ONE = """
    import os, sys
    from bihost.records import Measurement
    from bihost.results import ResultsStore
    store = ResultsStore(sys.argv[1])
    store.add(Measurement(campaign="c", board=sys.argv[2], chip="x", arch="resnet20", algorithm="bnn",
                          runtime="custom", status="ok", latency_ms={"median": 1.0}, created_at=1.0))
"""


def test_a_row_written_by_another_process_is_visible(tmp_path):
    out = _python(ADD_ONE, str(tmp_path), "other")
    assert out.returncode == 0, out.stderr
    assert [m.board for m in ResultsStore(tmp_path).rows()] == ["other"]


def test_a_row_survives_sigkill_right_after_add(tmp_path):
    out = _python(ADD_ONE + "\n    os.kill(os.getpid(), 9)\n", str(tmp_path), "killed")
    assert out.returncode == -9, out.stderr
    assert [m.board for m in ResultsStore(tmp_path).rows()] == ["killed"]


def test_concurrent_writers_lose_nothing(tmp_path):
    code = """
        import sys
        from bihost.records import Measurement
        from bihost.results import ResultsStore
        store = ResultsStore(sys.argv[1])
        for t in range(1, 26):
            store.add(Measurement(campaign="c", board=sys.argv[2], chip="x", arch="a", algorithm="bnn",
                                  runtime="custom", status="ok", threads=t, created_at=float(t)))
    """
    procs = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(tmp_path), b])
        for b in ("b1", "b2", "b3")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert len(ResultsStore(tmp_path).rows()) == 75


def test_unique_key_rules(tmp_path):
    store = ResultsStore(tmp_path)
    store.add(full())
    with pytest.raises(DuplicateMeasurement, match="--resume"):
        store.add(full(created_at=2e9))
    store.add(full(threads=1))  # another key: threads, campaign, runtime ... are part of it
    store.add(full(campaign="c2"))
    store.add(full(runtime="custom", status="error", reason="board timeout", created_at=1.0))
    store.add(full(runtime="custom", status="numerics_error", created_at=2.0))  # failures replace failures
    store.add(full(runtime="custom", status="ok", created_at=3.0))  # and a retry replaces the failure
    custom = [m for m in store.rows() if m.runtime == "custom"]
    assert [(m.status, m.created_at) for m in custom] == [("ok", 3.0)]
    assert len(store.rows()) == 4


def test_done_keys_are_what_resume_skips(tmp_path):
    store = ResultsStore(tmp_path)
    rows = [
        full(algorithm=a, status=s)
        for a, s in (("bnn", "ok"), ("xnor", "unsupported"), ("dorefa", "error"), ("fda", "numerics_error"))
    ]
    for m in rows + [full(campaign="other", algorithm="recu")]:
        store.add(m)
    assert store.done_keys("c1") == {rows[0].key(), rows[1].key()}
    assert store.done_keys("nope") == set()


def test_filters_campaigns_and_frame(tmp_path):
    store = ResultsStore(tmp_path)
    assert store.campaigns() == [] and store.latest_campaign() is None
    store.add(full(campaign="old", created_at=10.0))
    store.add(full(campaign="new", created_at=20.0))
    store.add(full(campaign="new", board="jetson", created_at=30.0, speedup_vs_fp32=None))
    assert store.campaigns() == ["new", "old"] and store.latest_campaign() == "new"
    assert [m.board for m in store.rows(campaign="new")] == ["rpi4", "jetson"]
    assert [m.campaign for m in store.rows(board="rpi4")] == ["old", "new"]
    df = store.frame(campaign="new")
    assert len(df) == 2 and "samples_ms" not in df.columns and "latency_ms" not in df.columns
    for column in (
        "latency_min_ms",
        "latency_median_ms",
        "latency_mean_ms",
        "latency_p90_ms",
        "latency_p99_ms",
        "latency_std_ms",
        "latency_max_ms",
        "agent_cpu_model",
        "agent_machine",
        "agent_cores",
        "campaign",
        "board",
        "chip",
        "threads",
        "status",
        "speedup_vs_fp32",
        "forced",
        "created_at",
    ):
        assert column in df.columns, column
    assert df["latency_median_ms"].tolist() == [1.5, 1.5] and df["speedup_vs_fp32"].isna().tolist() == [
        False,
        True,
    ]
    assert df["speedup_vs_fp32"].dtype == "float64" and df["forced"].tolist() == [True, True]
    assert store.frame(samples=True)["samples_ms"].iloc[0] == [1.0, 1.5, 2.25]
    assert store.frame(board="nobody").empty


def test_a_newer_schema_is_refused(tmp_path):
    ResultsStore(tmp_path)
    with sqlite3.connect(tmp_path / "results.sqlite") as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(ResultsSchemaError, match="schema version 99"):
        ResultsStore(tmp_path)


def test_a_version_1_store_gains_the_new_columns_and_keeps_its_rows(tmp_path):
    store = ResultsStore(tmp_path)
    store.add(full(campaign="v1"))
    with sqlite3.connect(tmp_path / "results.sqlite") as db:  # as bihost 0.1 wrote it
        db.execute("ALTER TABLE measurements DROP COLUMN pad_value")
        db.execute("UPDATE schema_version SET version = 1")
    again = ResultsStore(tmp_path)
    (row,) = again.rows()
    assert row.campaign == "v1" and row.pad_value == 0.0
    with sqlite3.connect(tmp_path / "results.sqlite") as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    again.add(full(campaign="v2", pad_value=-1.0))
    assert {r.campaign: r.pad_value for r in again.rows(campaign="v2")} == {"v2": -1.0}


# ---- the `results` verb ----


def _filled(tmp_path: Path) -> Path:
    store = ResultsStore(tmp_path)
    store.add(full(campaign="old", board="pi-old", created_at=1.0))
    store.add(full())
    store.add(full(algorithm="fp32", runtime="custom", board="jetson", speedup_vs_fp32=None))
    store.add(full(algorithm="xnor", status="unsupported", reason="no XnorConv in larq", latency_ms={}))
    return tmp_path


def _run(*args: str):
    return CliRunner().invoke(results_command, list(args), catch_exceptions=False)


def test_results_csv_json_table(tmp_path):
    d = str(_filled(tmp_path))
    out = _run("--results", d, "--format", "csv")
    assert out.exit_code == 0, out.output
    df = pd.read_csv(io.StringIO(out.stdout))
    assert set(df["campaign"]) == {"c1"} and len(df) == 3 and "latency_p99_ms" in df.columns
    data = json.loads(_run("--results", d, "--format", "json", "--all").stdout)
    assert len(data) == 4 and data[0]["board"] == "pi-old" and data[0]["latency_ms"]["median"] == 1.5
    assert "samples_ms" not in data[0]
    assert json.loads(_run("--results", d, "--format", "json", "--samples", "--campaign", "old").stdout)[0][
        "samples_ms"
    ] == [1.0, 1.5, 2.25]
    table = _run("--results", d, "--board", "jetson")
    assert table.exit_code == 0 and "jetson" in table.stdout and "rpi4" not in table.stdout
    assert "no XnorConv in larq" in _run("--results", d).stdout
    target = tmp_path / "out.json"
    assert _run("--results", d, "--format", "json", "-o", str(target)).exit_code == 0
    assert len(json.loads(target.read_text())) == 3


def test_results_env_var_and_empty_store(tmp_path):
    d = _filled(tmp_path / "r")
    out = CliRunner(env={"BIHOST_RESULTS": str(d)}).invoke(results_command, ["--format", "csv"])
    assert out.exit_code == 0 and len(pd.read_csv(io.StringIO(out.stdout))) == 3
    for args in ([], ["--format", "csv"]):
        empty = _run("--results", str(tmp_path / "nothing"), *args)
        assert empty.exit_code == 0 and empty.stdout == ""
        assert empty.stderr.strip().count("\n") == 0 and "no results" in empty.stderr
    assert not (tmp_path / "nothing").exists()  # reading does not create a store
    ResultsStore(tmp_path / "created")
    assert "no results" in _run("--results", str(tmp_path / "created")).stderr


def _bihost(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=120)


def test_results_errors_are_one_line(tmp_path):
    d = str(_filled(tmp_path))
    for args in (["--campaign", "nope"], ["--campaign", "c1", "--all"], ["-o", "x.txt"]):
        out = _bihost("results", "--results", d, *args)
        assert out.returncode == 1, args
        assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("error: "), out.stderr


def test_parquet(tmp_path):
    d = str(_filled(tmp_path))
    target = tmp_path / "out.parquet"
    out = _bihost("results", "--results", d, "--format", "parquet", "-o", str(target))
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        assert (
            out.returncode == 1 and out.stderr == "error: parquet output needs pyarrow: pip install pyarrow\n"
        )
        return
    assert out.returncode == 0, out.stderr
    assert len(pd.read_parquet(target)) == 3
