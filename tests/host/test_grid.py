"""The training-consumption grid: its arithmetic, the local process pool with failures and a
dead worker, and a real Ray cluster started by the test."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bihost.grid import GRID_SCALES, GRID_TASK, SETTINGS, setting_name, worker_hardware
from bihost.records import GridRun
from bihost.results import ResultsStore
from bihost.tracks import BenchContext, get_track
from tests.host.test_bench import bihost

SETTING_NAMES = [setting_name(*s) for s in SETTINGS]


def _run(algorithm, setting, metric, seconds, cpu="cpu-a", status="ok"):
    return GridRun(
        task="t",
        arch="a",
        algorithm=algorithm,
        setting=setting,
        optimizer="sgd",
        lr=0.1,
        schedule="cosine",
        scale="quick",
        seed=0,
        recipe_hash="r",
        data_version="v",
        data_source="s",
        status=status,
        metric=metric,
        epochs=1,
        train_seconds=seconds,
        seconds_per_epoch=seconds,
        worker={"cpu_model": cpu, "cores": 2, "threads": 1},
    )


def test_time_ratio_pairs_same_hardware_and_std_ratio_over_common_settings():
    fp_acc, bi_acc = [0.9, 0.8, 0.85, 0.5], [0.6, 0.6, 0.62, 0.1]
    runs = [_run("fp32", s, a, 2.0) for s, a in zip(SETTING_NAMES, fp_acc)]
    runs += [_run("bnn", s, a, t) for s, a, t in zip(SETTING_NAMES, bi_acc, [4.0, 4.0, 1.0, 2.0])]
    runs[-1].worker = {"cpu_model": "cpu-b", "cores": 8, "threads": 1}  # timed elsewhere: no time ratio
    runs.append(_run("bnn", SETTING_NAMES[4], 0.3, 1.0, status="failed"))  # failed: not in any mean
    result = get_track("consumption").score(
        BenchContext(algorithms=["bnn"], archs=[], tasks=[], grid_runs=runs)
    )
    t = (2 / 4 + 2 / 4 + 2 / 1) / 3
    s = float(np.std(fp_acc)) / float(np.std(bi_acc))
    assert result.overall["bnn"] == pytest.approx(math.sqrt((t * t + s * s) / 2))
    assert any("different hardware" in n for n in result.notes)


def test_times_from_workers_at_another_priority_are_not_divided():
    fp = _run("fp32", SETTING_NAMES[0], 0.9, 2.0)
    bnn = _run("bnn", SETTING_NAMES[0], 0.6, 4.0)
    fp.worker, bnn.worker = {**fp.worker, "nice": 0}, {**bnn.worker, "nice": 15}  # a Ray worker's default
    result = get_track("consumption").score(
        BenchContext(algorithms=["bnn"], archs=[], tasks=[], grid_runs=[fp, bnn])
    )
    pair = next(d for d in result.details if "time_ratio" in d)
    assert math.isnan(pair["time_ratio"]) and pair["hardware"].endswith("nice 15")
    assert worker_hardware(1)["nice"] == os.nice(0)


@pytest.fixture(scope="module")
def ray_head():
    """A real Ray head on a free port of this machine, 2 CPUs; stopped afterwards. Ray is in the
    test extras: a missing Ray fails here rather than skipping."""
    import ray  # noqa: F401

    ray_bin = Path(sys.executable).with_name("ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = Path(f"/tmp/ray-test-{os.getpid()}")  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    start = subprocess.run(
        [
            str(ray_bin),
            "start",
            "--head",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--include-dashboard",
            "false",
            "--temp-dir",
            str(temp),
            "--disable-usage-stats",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], capture_output=True, timeout=120, env=env)
        shutil.rmtree(temp, ignore_errors=True)


def test_grid_on_a_real_ray_cluster_and_resumed_on_the_local_pool(tmp_path, ray_head):
    args = ["bench", "--track", "consumption", "--algo", "bnn", "--results", str(tmp_path), "--json"]
    out = bihost(*args, "--executor", "ray", "--ray-address", ray_head)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout)["grid_runs"]
    assert len(rows) == 16 and {r["status"] for r in rows} == {"ok"}
    assert {r["executor"] for r in rows} == {f"Ray at {ray_head}"}
    assert {r["worker"]["threads"] for r in rows} == {1} and all(r["worker"]["cpu_model"] for r in rows)
    assert (
        len({r["worker"]["nice"] for r in rows}) == 1
    )  # the cluster's worker priority, recorded with each time
    track = json.loads(out.stdout)["tracks"][0]
    assert math.isfinite(track["overall"]["bnn"])
    again = bihost(*args)  # the local pool finds every run stored: nothing is trained again
    assert again.returncode == 0 and "runs to train" not in again.stderr
    assert json.loads(again.stdout)["grid_runs"] == rows


def test_a_ray_address_that_does_not_answer_fails_before_any_job(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    out = bihost(
        "bench",
        "--track",
        "consumption",
        "--executor",
        "ray",
        "--ray-address",
        f"127.0.0.1:{port}",
        "--results",
        str(tmp_path),
    )
    assert out.returncode != 0
    assert (
        f"the Ray head at 127.0.0.1:{port} does not answer" in out.stderr
        and "no job was submitted" in out.stderr
    )
    assert ResultsStore(tmp_path).grid_runs() == []


def test_a_failing_job_and_a_dead_worker_are_filed_retried_once_and_the_grid_goes_on(tmp_path):
    env = {
        **os.environ,
        "BIBENCH_GRID_FAIL": "bnn/sgd-0.1-step",
        "BIBENCH_GRID_CRASH": "fp32/adam-0.001-cosine",
    }
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bihost.cli",
            "bench",
            "--track",
            "consumption",
            "--algo",
            "bnn",
            "--results",
            str(tmp_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {(r["algorithm"], r["setting"]): r for r in json.loads(out.stdout)["grid_runs"]}
    assert len(rows) == 16
    failed = {k: r for k, r in rows.items() if r["status"] == "failed"}
    assert set(failed) == {("bnn", "sgd-0.1-step"), ("fp32", "adam-0.001-cosine")}
    assert all(r["attempts"] == 2 for r in failed.values())
    assert "injected failure (BIBENCH_GRID_FAIL)" in failed[("bnn", "sgd-0.1-step")]["error"]
    assert "worker process died" in failed[("fp32", "adam-0.001-cosine")]["error"]
    assert all(r["status"] == "ok" and r["attempts"] == 1 for k, r in rows.items() if k not in failed)
    assert "FAILED (attempt 2 of 2)" in out.stderr
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "bihost.cli",
            "bench",
            "--track",
            "consumption",
            "--algo",
            "bnn",
            "--results",
            str(tmp_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert (
        again.returncode == 0 and "2 of 16 runs to train" in again.stderr
    )  # only the failed ones, now fixed
    assert {r["status"] for r in json.loads(again.stdout)["grid_runs"]} == {"ok"}


def test_learning_task_runs_on_a_local_pool_fp_first_then_each_fine_tune(tmp_path):
    args = [
        "bench",
        "--track",
        "task",
        "--task",
        "part_segmentation",
        "--algo",
        "bnn,xnor",
        "--train-workers",
        "2",
        "--results",
        str(tmp_path),
        "--json",
    ]
    out = bihost(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "training on local process pool, 2 workers, 1 torch thread each" in out.stderr
    runs = json.loads(out.stdout)["runs"]
    assert [r["algorithm"] for r in runs] == ["fp32", "bnn", "xnor"] and {r["threads"] for r in runs} == {1}
    assert all(0 < r["metric"] <= 1 and r["train_seconds"] > 0 for r in runs)
    stored = ResultsStore(tmp_path).training_runs()
    assert sorted(r.algorithm for r in stored) == ["bnn", "fp32", "xnor"]
    again = bihost(*args)
    assert again.returncode == 0 and "all 3 runs already stored" in again.stderr
    assert json.loads(again.stdout)["runs"] == runs


def test_a_failed_pool_run_is_reported_the_others_stored_and_a_rerun_retries_only_it(tmp_path):
    base = [
        "bench",
        "--track",
        "task",
        "--task",
        "part_segmentation",
        "--train-workers",
        "2",
        "--results",
        str(tmp_path),
        "--json",
    ]
    first = bihost(*base, "--algo", "bnn")
    assert first.returncode == 0, first.stderr[-3000:]
    fp_checkpoint = next(tmp_path.glob("checkpoints/part_segmentation/*/*/fp32.pt"))
    good = fp_checkpoint.read_bytes()
    fp_checkpoint.write_bytes(good[: len(good) // 2])  # truncated: the fine-tunes cannot start from it
    failed = bihost(*base, "--algo", "bnn,xnor,dorefa")
    assert failed.returncode != 0
    assert "2 training run(s) failed (the others are stored; a re-run retries these)" in failed.stderr
    assert "part_segmentation/pointnet_part_seg/xnor: FAILED" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert sorted(r.algorithm for r in ResultsStore(tmp_path).training_runs()) == ["bnn", "fp32"]
    fp_checkpoint.write_bytes(good)
    again = bihost(*base, "--algo", "bnn,xnor,dorefa")
    assert again.returncode == 0, again.stderr[-3000:]
    trained = [line.split(":")[0] for line in again.stderr.splitlines() if "instance_miou" in line]
    assert sorted(trained) == [
        "part_segmentation/pointnet_part_seg/dorefa",
        "part_segmentation/pointnet_part_seg/xnor",
    ]


@pytest.mark.parametrize("scale", sorted(GRID_SCALES))
def test_every_scale_of_the_grid_builds_its_model_for_its_task(scale):
    """The default and paper grids train resnet18_cifar, which the quick CI run never builds."""
    from bimodels.tasks import get_task

    model = get_task(GRID_TASK).create_model(GRID_SCALES[scale].arch)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)  # what the task feeds it
