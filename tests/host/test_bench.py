"""`bihost bench`: the accuracy tracks trained for real at the quick scale, the table, and
overall metrics that follow by hand from the per-run numbers in the JSON."""

from __future__ import annotations

import json
import math

import pytest

from bihost.records import Measurement, TrainingRun
from bihost.results import ResultsStore
from bihost.tracks import BenchContext, get_track, list_tracks
from tests.host.helpers import bihost, qmean  # noqa: F401  (qmean: imported from here by other tests)

# The quick scale's (task, architecture) pairs: one per task.
TASK_ARCHS = (
    ("image_classification", "resnet20"),
    ("point_cloud_classification", "pointnet_vanilla"),
    ("language_understanding", "bert_tiny"),
    ("keyword_spotting", "dfsmn"),
    ("object_detection", "ssd_resnet"),
    ("part_segmentation", "pointnet_part_seg"),
)


def test_quick_bench_trains_stores_and_scores(quick_bench):
    args, results, first = quick_bench
    out = json.loads(first.stdout)
    runs = out["runs"]
    assert {(r["task"], r["arch"], r["algorithm"]) for r in runs} == {
        (task, arch, a) for task, arch in TASK_ARCHS for a in ("fp32", "bnn", "reactnet")
    }
    for r in runs:  # every number carries what produced it
        assert r["scale"] == "quick" and r["seed"] == 0 and len(r["config_hash"]) == 16 and r["data_version"]
        assert r["device"] == "cpu" and r["threads"] >= 1 and r["train_seconds"] > 0 and 0 <= r["metric"] <= 1
        assert r["config"]["fp_epochs"] >= 1 and r["data_source"]
    classifiers = ("image_classification", "point_cloud_classification", "keyword_spotting")
    for fp in (r for r in runs if r["algorithm"] == "fp32" and r["task"] in classifiers):
        assert fp["metric"] > 0.3, fp  # well above chance (0.1, 0.083) even at the smoke scale
    for fp in (r for r in runs if r["algorithm"] == "fp32" and r["task"] == "part_segmentation"):
        assert fp["metric"] > 0.3, fp  # each category's largest part everywhere scores 0.26
    stored = ResultsStore(results).training_runs(scale="quick")
    assert sorted(r.algorithm for r in stored) == sorted(["bnn", "fp32", "reactnet"] * len(TASK_ARCHS))
    # the run was recorded as a campaign on the training host, for the farm view
    (bench,) = [c for c in ResultsStore(results).campaign_progress() if c.kind == "bench"]
    assert (bench.board, bench.planned, bench.done, bench.failed) == ("local", len(stored), len(stored), 0)
    assert not bench.running and bench.campaign.startswith("bench-quick-")


def test_overall_metrics_follow_by_hand_from_the_runs(quick_bench):
    out = json.loads(quick_bench[2].stdout)
    fp = {(r["task"], r["arch"]): r["metric"] for r in out["runs"] if r["algorithm"] == "fp32"}
    tracks = {t["track"]: t for t in out["tracks"]}
    table = {row[0]: row[1:] for row in out["table"]["rows"]}
    assert out["table"]["columns"] == [
        "algorithm",
        "learning task",
        "neural architecture",
        "corruption robustness",
        "training consumption",
        "theoretical complexity",
    ]
    family = {
        "resnet20": "cnn",
        "pointnet_vanilla": "mlp",
        "bert_tiny": "transformer",
        "dfsmn": "mlp",
        "ssd_resnet": "cnn",
        "pointnet_part_seg": "mlp",
    }
    for algo in ("bnn", "reactnet"):
        mine = [r for r in out["runs"] if r["algorithm"] == algo]
        by_task = {}
        by_family = {}
        for r in mine:  # one arch per task at this scale
            ratio = r["metric"] / fp[(r["task"], r["arch"])]
            by_task.setdefault(r["task"], []).append(ratio)
            by_family.setdefault(family[r["arch"]], []).append(ratio)
        task_by_hand = qmean([sum(v) / len(v) for v in by_task.values()])
        arch_by_hand = qmean([sum(v) / len(v) for v in by_family.values()])
        assert len(by_task) == len(TASK_ARCHS) and len(by_family) == 3
        assert tracks["task"]["overall"][algo] == pytest.approx(task_by_hand, rel=1e-12)
        assert tracks["arch"]["overall"][algo] == pytest.approx(arch_by_hand, rel=1e-12)
        rows = [d for d in tracks["complexity"]["details"] if d["algorithm"] == algo]
        rc, rs = (sum(d[k] for d in rows) / len(rows) for k in ("compression_ratio", "speedup_ratio"))
        assert tracks["complexity"]["overall"][algo] == pytest.approx(
            math.sqrt((rc * rc + rs * rs) / 2), rel=1e-12
        )
        assert table[algo] == [
            tracks[t]["overall"][algo] for t in ("task", "arch", "robustness", "consumption", "complexity")
        ]


def test_robustness_follows_by_hand_from_the_corruption_runs(quick_bench):
    """The learning-task models, rebuilt from their checkpoints, scored on 15 corruptions x 5 severities."""
    out = json.loads(quick_bench[2].stdout)
    rows = out["corruption_runs"]
    assert {(r["task"], r["arch"]) for r in rows} == {
        ("image_classification", "resnet20")
    }  # the image task only
    assert len(rows) == 3 * (1 + 15 * 5) and {r["n_images"] for r in rows} == {25}
    assert all(
        r["corruption_source"].startswith("imagecorruptions-imaug ")
        and "zero-padded" in r["corruption_source"]
        for r in rows
    )
    fp_run = next(r for r in out["runs"] if r["task"] == "image_classification" and r["algorithm"] == "fp32")
    assert all(
        r["config_hash"] == fp_run["config_hash"] and r["data_version"] == fp_run["data_version"]
        for r in rows
    )
    metric = {(r["algorithm"], r["corruption"], r["severity"]): r["metric"] for r in rows}
    corruptions = sorted({r["corruption"] for r in rows} - {"clean"})

    def gap(algo, c):
        return max(metric[(algo, "clean", 0)] - sum(metric[(algo, c, s)] for s in range(1, 6)) / 5, 0.01)

    track = next(t for t in out["tracks"] if t["track"] == "robustness")
    for algo in ("bnn", "reactnet"):
        assert track["overall"][algo] == pytest.approx(
            qmean([gap("fp32", c) / gap(algo, c) for c in corruptions]), rel=1e-12
        )


def test_consumption_follows_by_hand_from_the_grid_runs(quick_bench):
    """FP and each algorithm trained from scratch under the 8 settings, timed on one worker type."""
    out = json.loads(quick_bench[2].stdout)
    rows = out["grid_runs"]
    assert len(rows) == 3 * 8 and {r["status"] for r in rows} == {"ok"}
    assert {(r["optimizer"], r["lr"], r["schedule"]) for r in rows} == {
        (o, lr, s)
        for o, lr in (("sgd", 0.1), ("sgd", 0.01), ("adam", 1e-3), ("adam", 1e-4))
        for s in ("cosine", "step")
    }
    assert all(r["seconds_per_epoch"] > 0 and r["worker"]["threads"] == 1 for r in rows)
    by = {(r["algorithm"], r["setting"]): r for r in rows}
    settings = sorted({r["setting"] for r in rows})
    track = next(t for t in out["tracks"] if t["track"] == "consumption")
    for algo in ("bnn", "reactnet"):
        t = (
            sum(by[("fp32", s)]["seconds_per_epoch"] / by[(algo, s)]["seconds_per_epoch"] for s in settings)
            / 8
        )

        def std(a):
            v = [by[(a, s)]["metric"] for s in settings]
            m = sum(v) / len(v)
            return max(math.sqrt(sum((x - m) ** 2 for x in v) / len(v)), 0.001)

        sr = std("fp32") / std(algo)
        assert track["overall"][algo] == pytest.approx(math.sqrt((t * t + sr * sr) / 2), rel=1e-9)


def test_models_rebuilt_from_checkpoints_score_exactly_what_was_stored(quick_bench):
    """The robustness track scores the learning-task models themselves: rebuilt from their
    checkpoints (with the same precise-BN pass), they give the stored test metric to the last image."""
    import torch

    from bihost.bench import checkpoint_folder
    from bimodels.tasks import get_task
    from bimodels.training import restore_binary, restore_full_precision

    results = quick_bench[1]
    task = get_task("image_classification")
    data, config = task.load("quick", None, 0), task.config("quick")
    runs = {r.algorithm: r for r in ResultsStore(results).training_runs(task=task.name)}
    folder = checkpoint_folder(
        results / "checkpoints",
        task.name,
        "resnet20",
        "quick",
        runs["fp32"].config_hash,
        runs["fp32"].data_version,
        0,
    )
    cpu = torch.device("cpu")
    fp = restore_full_precision(task, "resnet20", data.train, config, cpu, folder / "fp32.pt")
    assert task.evaluate(fp, data.test, config.eval_batch_size, cpu) == runs["fp32"].metric
    bnn = restore_binary(task, fp, "bnn", data.train, config, cpu, folder / "bnn.pt")
    assert task.evaluate(bnn, data.test, config.eval_batch_size, cpu) == runs["bnn"].metric


def test_a_rerun_trains_nothing_and_prints_the_same_table(quick_bench):
    args, results, first = quick_bench
    again = bihost(*args)
    assert again.returncode == 0, again.stderr
    assert "already stored" in again.stderr
    assert json.loads(again.stdout)["table"] == json.loads(first.stdout)["table"]
    assert len(ResultsStore(results).training_runs()) == 3 * len(TASK_ARCHS)
    md = bihost(*[a for a in args if a != "--json"])
    assert md.returncode == 0 and md.stdout.startswith("| algorithm | learning task | neural architecture |")
    stored = ResultsStore(results).corruption_runs()
    assert (
        len(stored) == 3 * 76
        and json.loads(again.stdout)["corruption_runs"] == json.loads(first.stdout)["corruption_runs"]
    )  # measured once, then read back
    csv = bihost(*[a for a in args if a != "--json"], "--format", "csv")
    assert csv.stdout.splitlines()[0] == (
        "algorithm,learning task,neural architecture,corruption robustness,"
        "training consumption,theoretical complexity"
    )
    assert [line.split(",")[0] for line in csv.stdout.splitlines()[1:]] == ["bnn", "reactnet"]


@pytest.mark.parametrize(
    "flag, value, words",
    [
        (
            "--task",
            "imagenet",
            "unknown task 'imagenet'; known tasks: image_classification, point_cloud_classification, "
            "language_understanding, keyword_spotting, object_detection, part_segmentation",
        ),
        (
            "--track",
            "speed",
            "unknown track 'speed'; known tracks: task, arch, robustness, consumption, complexity, hardware",
        ),
        ("--arch", "resnet21", "unknown architecture 'resnet21'"),
        ("--algo", "bnnx", "unknown algorithm 'bnnx'"),
        (
            "--arch",
            "resnet20 --task point_cloud_classification",
            "none of --arch resnet20 fits the tasks point_cloud",
        ),
    ],
)
def test_bad_names_are_one_clear_line(tmp_path, flag, value, words):
    out = bihost("bench", flag, *value.split(), "--results", str(tmp_path / "r"))
    assert out.returncode == 1 and words in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_malformed_data_root_fails_before_training(tmp_path):
    root = tmp_path / "root" / "cifar-10-batches-py"
    root.mkdir(parents=True)
    (root / "data_batch_1").write_bytes(b"garbage")
    out = bihost(
        "bench", "--track", "task", "--data-root", str(tmp_path / "root"), "--results", str(tmp_path / "r")
    )
    assert out.returncode == 1 and "data_batch_1: not a CIFAR-10 python batch" in out.stderr, out.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()  # nothing was trained


def test_hardware_track_from_stored_measurements(tmp_path):
    store = ResultsStore(tmp_path)

    def row(algo, runtime, board, speedup, storage):
        return Measurement(
            campaign="c",
            board=board,
            chip=board,
            arch="resnet20",
            algorithm=algo,
            runtime=runtime,
            status="ok",
            speedup_vs_fp32=speedup,
            storage_ratio=storage,
            latency_ms={"median": 1.0},
        )

    for m in (
        row("bnn", "custom", "a", 4.0, 20.0),
        row("bnn", "larq", "b", 2.0, 16.0),
        row("xnor", "custom", "a", 3.0, 19.0),
        row("fp32", "onnxruntime", "a", 1.0, 1.0),
    ):
        store.add(m)
    failed = Measurement(
        campaign="c",
        board="a",
        chip="a",
        arch="resnet20",
        algorithm="xnor",
        runtime="larq",
        status="error",
        reason="board died",
    )
    store.add(failed)
    ctx = BenchContext(
        algorithms=["bnn", "xnor", "dorefa"], archs=["resnet20"], tasks=[], measurements=store.rows()
    )
    result = get_track("hardware").score(ctx)
    assert result.overall["bnn"] == pytest.approx(math.sqrt((3.0**2 + 18.0**2) / 2))
    assert result.overall["xnor"] == pytest.approx(
        math.sqrt((3.0**2 + 19.0**2) / 2)
    )  # the error row is not used
    assert math.isnan(result.overall["dorefa"])  # nothing measured: said, not invented
    assert list_tracks() == ["task", "arch", "robustness", "consumption", "complexity", "hardware"]


def test_learning_task_track_groups_by_task_then_takes_the_quadratic_mean():
    def run(task, arch, algo, metric):
        return TrainingRun(
            task=task,
            arch=arch,
            algorithm=algo,
            scale="quick",
            seed=0,
            config_hash="h",
            data_version="v",
            data_source="s",
            metric_name="accuracy",
            metric=metric,
            epochs=1,
            train_seconds=1.0,
            device="cpu",
            threads=1,
        )

    runs = [
        run("t1", "resnet20", "fp32", 0.8),
        run("t1", "resnet20", "bnn", 0.4),
        run("t1", "vgg_small", "fp32", 0.5),
        run("t1", "vgg_small", "bnn", 0.5),
        run("t2", "pointnet", "fp32", 0.9),
        run("t2", "pointnet", "bnn", 0.3),
    ]
    ctx = BenchContext(algorithms=["bnn"], archs=[], tasks=["t1", "t2"], runs=runs)
    task = get_track("task").score(ctx)
    assert task.overall["bnn"] == pytest.approx(math.sqrt(((0.5 + 1.0) / 2) ** 2 / 2 + (1 / 3) ** 2 / 2))
    arch = get_track("arch").score(ctx)  # families: cnn (two archs), mlp (pointnet)
    assert arch.overall["bnn"] == pytest.approx(math.sqrt((0.75**2 + (1 / 3) ** 2) / 2))


def test_hardware_track_profiles_the_local_board_when_the_store_has_no_rows(tmp_path):
    args = [
        "bench",
        "--track",
        "hardware",
        "--algo",
        "bnn",
        "--arch",
        "resnet20",
        "--results",
        str(tmp_path),
        "--json",
    ]
    out = bihost(*args)
    assert out.returncode == 0, out.stderr
    assert "profiling them on the local board" in out.stderr
    result = json.loads(out.stdout)["tracks"][0]
    rows = [d for d in result["details"] if d["algorithm"] == "bnn"]
    assert rows and all(d["board"] == "local" and d["runtime"] == "custom" for d in rows)
    speed, size = rows[0]["speedup"], rows[0]["storage_ratio"]
    assert result["overall"]["bnn"] == pytest.approx(math.sqrt((speed**2 + size**2) / 2))
    stored = {(m.algorithm, m.runtime) for m in ResultsStore(tmp_path).rows()}
    assert stored == {("fp32", "onnxruntime"), ("bnn", "custom")}
    again = bihost(*args)  # now the store has rows: nothing is profiled again
    assert again.returncode == 0 and "profiling" not in again.stderr


def test_an_arch_selection_skips_the_tasks_it_does_not_fit_and_says_so(tmp_path):
    out = bihost(
        "bench",
        "--track",
        "task",
        "--arch",
        "resnet20",
        "--algo",
        "bnn",
        "--results",
        str(tmp_path),
        "--json",
    )
    assert out.returncode == 0, out.stderr
    assert "point_cloud_classification: none of --arch resnet20 fits it" in out.stderr
    assert "language_understanding: none of --arch resnet20 fits it" in out.stderr
    assert "keyword_spotting: none of --arch resnet20 fits it" in out.stderr
    assert {(r["task"], r["arch"]) for r in json.loads(out.stdout)["runs"]} == {
        ("image_classification", "resnet20")
    }


def test_real_dataset_formats_from_data_root_through_the_cli(tmp_path):
    """VOC XML, ShapeNet-part .txt and ImageNet-style class folders, written in their real layouts,
    trained and scored end to end; every row names the data it came from."""
    pytest.importorskip("PIL")
    from tests.models.test_detection import _voc
    from tests.models.test_image_folder import _tree
    from tests.models.test_part_segmentation import _shapenet

    root = tmp_path / "datasets"
    root.mkdir()
    _voc(root)
    _shapenet(root)
    _tree(root / "imagenet")
    out = bihost(
        "bench",
        "--track",
        "task,arch",
        "--task",
        "object_detection,part_segmentation,image_classification",
        "--algo",
        "bnn",
        "--data-root",
        str(root),
        "--results",
        str(tmp_path / "r"),
        "--json",
    )
    assert out.returncode == 0, out.stderr
    runs = {(r["task"], r["algorithm"]): r for r in json.loads(out.stdout)["runs"]}
    assert set(runs) == {
        (t, a)
        for t in ("object_detection", "part_segmentation", "image_classification")
        for a in ("fp32", "bnn")
    }
    expected = {
        "object_detection": ("voc (", "map50"),
        "part_segmentation": ("shapenet-part (", "instance_miou"),
        "image_classification": ("image folders (", "accuracy"),
    }
    for (task, _), r in runs.items():
        source, metric = expected[task]
        assert r["data_source"].startswith(source) and r["metric_name"] == metric and 0 <= r["metric"] <= 1, r
    assert len(ResultsStore(tmp_path / "r").training_runs()) == 6
