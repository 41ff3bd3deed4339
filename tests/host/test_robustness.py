"""The corruption-robustness track: its arithmetic, and a real CIFAR-10-C folder used as is."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bihost.records import CorruptionRun
from bihost.results import ResultsStore
from bihost.tracks import BenchContext, get_track
from bihost.tracks.robustness import GAP_FLOOR
from tests.host.test_bench import bihost, qmean


def _rows(algorithm, clean, corrupted, task="t", arch="a"):
    """CorruptionRuns of one model: `corrupted` maps corruption -> metrics at severities 1..5."""
    common = dict(
        task=task,
        arch=arch,
        algorithm=algorithm,
        scale="quick",
        seed=0,
        config_hash="h",
        data_version="v",
        corruption_source="s",
        corruption_version="cv",
        n_images=100,
    )
    rows = [CorruptionRun(**common, corruption="clean", severity=0, metric=clean)]
    for corruption, metrics in corrupted.items():
        rows += [
            CorruptionRun(**common, corruption=corruption, severity=s + 1, metric=m)
            for s, m in enumerate(metrics)
        ]
    return rows


def test_gap_ratios_per_corruption_then_the_quadratic_mean():
    rows = (
        _rows("fp32", 0.9, {"fog": [0.8] * 5, "snow": [0.7, 0.6, 0.5, 0.4, 0.3]})
        + _rows("bnn", 0.8, {"fog": [0.75] * 5, "snow": [0.8, 0.81, 0.8, 0.8, 0.8]})
        + _rows("fp32", 0.9, {"fog": [0.5] * 5}, arch="b")
        + _rows("bnn", 0.7, {"fog": [0.5] * 5}, arch="b")
    )
    result = get_track("robustness").score(
        BenchContext(algorithms=["bnn"], archs=[], tasks=["t"], corruption_runs=rows)
    )
    fog_a = (0.9 - 0.8) / (0.8 - 0.75)  # FP loses 10 points, bnn 5: bnn is twice as robust
    fog_b = (0.9 - 0.5) / (0.7 - 0.5)
    snow_a = (0.9 - 0.5) / GAP_FLOOR  # bnn loses nothing (G < 0): the floor, not a negative or infinite ratio
    assert result.overall["bnn"] == pytest.approx(qmean([(fog_a + fog_b) / 2, snow_a]))
    per = {(d["arch"], d["corruption"]): d for d in result.details if "ratio" in d}
    assert per[("a", "snow")]["gap"] == pytest.approx(0.8 - 0.802) and per[("a", "fog")][
        "fp_gap"
    ] == pytest.approx(0.1)
    nothing = get_track("robustness").score(BenchContext(algorithms=["bnn"], archs=[], tasks=["t"]))
    assert math.isnan(nothing.overall["bnn"]) and nothing.notes


def test_cifar10c_under_data_root_is_used_as_is(tmp_path):
    from bimodels.data import read_cifar10
    from tests.models.test_corruptions import write_cifar10c
    from tests.models.test_tasks import _cifar_fixture

    root = tmp_path / "datasets"
    folder = _cifar_fixture(root / "cifar-10-batches-py", n=8)
    images, labels = read_cifar10(folder, "test")
    write_cifar10c(root / "CIFAR-10-C", images, labels, same_as_clean=("brightness", "pixelate"))
    out = bihost(
        "bench",
        "--track",
        "robustness",
        "--task",
        "image_classification",
        "--algo",
        "bnn",
        "--data-root",
        str(root),
        "--results",
        str(tmp_path / "r"),
        "--json",
    )
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["corruption_runs"]
    assert len(rows) == 2 * 76 and {r["n_images"] for r in rows} == {8}
    assert all(r["corruption_source"] == f"CIFAR-10-C ({root / 'CIFAR-10-C'})" for r in rows)
    for algorithm in ("fp32", "bnn"):  # the unchanged "corruptions" score exactly the clean images' metric
        mine = {(r["corruption"], r["severity"]): r["metric"] for r in rows if r["algorithm"] == algorithm}
        assert all(
            mine[(c, s)] == mine[("clean", 0)] for c in ("brightness", "pixelate") for s in range(1, 6)
        )
    assert len(ResultsStore(tmp_path / "r").corruption_runs()) == 2 * 76


def test_a_malformed_cifar10c_fails_before_any_training(tmp_path):
    from tests.models.test_tasks import _cifar_fixture

    root = tmp_path / "datasets"
    _cifar_fixture(root / "cifar-10-batches-py")
    (root / "CIFAR-10-C").mkdir()
    np.save(root / "CIFAR-10-C" / "labels.npy", np.zeros(30, np.int64))
    out = bihost(
        "bench",
        "--track",
        "task,robustness",
        "--task",
        "image_classification",
        "--algo",
        "bnn",
        "--data-root",
        str(root),
        "--results",
        str(tmp_path / "r"),
    )
    assert out.returncode != 0
    assert f"{root / 'CIFAR-10-C' / 'gaussian_noise.npy'}: missing from the CIFAR-10-C folder" in out.stderr
    assert ResultsStore(tmp_path / "r").training_runs() == []
