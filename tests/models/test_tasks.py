"""Tasks and their data: real formats on tiny fixture files, clear errors, and a test split
that no training step can see."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import time

import numpy as np
import pytest
import torch

from bimodels.data import DataError, read_cifar10, read_idx
from bimodels.data.cifar import write_cifar_batch
from bimodels.data.idx import write_idx
from bimodels.tasks import Split, TaskError, get_task, list_tasks
from bimodels.tasks import image_classification as ic
from bimodels.training import (
    recalibrate_batch_norm,
    resolve_device,
    run_binary,
    run_full_precision,
    stall_free_seconds,
    train,
)


def test_idx_round_trip_and_corrupt_headers(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "x-idx3-ubyte.gz", images)
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte.gz"), images)
    raw = gzip.decompress((tmp_path / "x-idx3-ubyte.gz").read_bytes())
    (tmp_path / "short").write_bytes(raw[:-10])
    with pytest.raises(DataError, match="short: IDX header declares shape"):
        read_idx(tmp_path / "short")
    (tmp_path / "magic").write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(DataError, match="magic: not an IDX file"):
        read_idx(tmp_path / "magic")
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="bad.gz: cannot read or decompress"):
        read_idx(tmp_path / "bad.gz")
    with pytest.raises(DataError, match="missing: file not found"):
        read_idx(tmp_path / "missing")


def _cifar_fixture(folder, n=6):
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(
            folder / name, rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n)
        )
    return folder


def test_cifar10_python_batches_and_their_faults(tmp_path):
    folder = _cifar_fixture(tmp_path / "cifar-10-batches-py")
    x, y = read_cifar10(folder, "train")
    assert x.shape == (30, 3, 32, 32) and x.dtype == np.uint8 and y.shape == (30,)
    assert read_cifar10(folder, "test")[0].shape == (6, 3, 32, 32)
    (folder / "test_batch").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    )
    with pytest.raises(DataError, match="test_batch: b'data' must be N x 3072"):
        read_cifar10(folder, "test")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        read_cifar10(folder, "test")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3: file not found"):
        read_cifar10(folder, "train")


def test_image_task_reads_cifar_from_data_root_and_fails_clearly(tmp_path):
    task = get_task("image_classification")
    _cifar_fixture(tmp_path / "root" / "cifar-10-batches-py")
    data = task.load("quick", tmp_path / "root", seed=0)
    assert data.source.startswith("cifar-10") and len(data.train) == 30 and len(data.test) == 6
    x, _ = data.train.batch(torch.arange(2))
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    with pytest.raises(TaskError, match="paper scale trains on CIFAR-10"):
        task.load("paper", tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else None, seed=0)
    with pytest.raises(DataError, match="not a folder"):
        task.load("quick", tmp_path / "nowhere", seed=0)


def test_fashion_mnist_idx_files_from_a_folder(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    for split, n in (("train", 40), ("test", 20)):
        images, labels = ic.FASHION_FILES[split]
        write_idx(tmp_path / images, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / labels, rng.integers(0, 10, n).astype(np.uint8))
    monkeypatch.setenv("BIBENCH_FASHION_MNIST", str(tmp_path))
    data = get_task("image_classification").load("quick", None, seed=0)
    assert data.source == f"fashion-mnist ({tmp_path})" and (len(data.train), len(data.test)) == (40, 20)
    assert data.train.batch(torch.arange(3))[0].shape == (3, 3, 32, 32)
    write_idx(tmp_path / ic.FASHION_FILES["test"][1], rng.integers(0, 10, 19).astype(np.uint8))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: expected 20 labels"):
        get_task("image_classification").load("quick", None, seed=0)


@pytest.mark.parametrize("name", list_tasks())
def test_no_training_step_sees_the_test_split(name):
    """Train and test are disjoint sets of samples, and the trainer refuses anything but "train"."""
    task = get_task(name)
    data = task.load("quick", None, seed=0)
    train_rows = {bytes(r) for r in data.train.x.reshape(len(data.train), -1).numpy()}
    test_rows = [bytes(r) for r in data.test.x.reshape(len(data.test), -1).numpy()]
    leaked = sum(r in train_rows for r in test_rows)
    assert leaked <= len(test_rows) // 100, (
        f"{leaked} test samples also in the training split"
    )  # duplicates in the source only
    model = task.create_model(task.default_archs("quick")[0])
    with pytest.raises(TaskError, match="takes the train split, not the test split"):
        train(
            model,
            task,
            data.test,
            optimizer="adam",
            lr=1e-3,
            epochs=1,
            batch_size=8,
            weight_decay=0,
            seed=0,
            device=torch.device("cpu"),
            checkpoint=__import__("pathlib").Path("/nonexistent/x.pt"),
        )
    with pytest.raises(TaskError):
        recalibrate_batch_norm(model, data.test, 8, torch.device("cpu"))


def test_unknown_task_and_arch_list_the_valid_names():
    from bimodels import UnknownNameError

    with pytest.raises(
        UnknownNameError,
        match="known tasks: image_classification, point_cloud_classification, language_understanding, keyword_spotting, object_detection, part_segmentation",
    ):
        get_task("imagenet")
    with pytest.raises(TaskError, match="does not fit task image_classification; it takes: resnet20"):
        get_task("image_classification").create_model("bert_tiny")


def _tiny(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    y = (x.float().mean((1, 2, 3)) > 127.5).long()  # learnable: brightness
    prepare = ic._Prepare(0.5, 0.29, 1, 28)
    return Split("train", x, y, prepare), Split("test", x[:32], y[:32], prepare)


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    task = get_task("image_classification")
    tr, _ = _tiny()
    kw = dict(
        optimizer="sgd",
        lr=0.05,
        epochs=3,
        batch_size=16,
        weight_decay=5e-4,
        seed=3,
        device=torch.device("cpu"),
    )
    torch.manual_seed(0)
    whole = task.create_model("resnet20")
    train(whole, task, tr, checkpoint=tmp_path / "whole.pt", **kw)

    torch.manual_seed(0)
    part = task.create_model("resnet20")
    with pytest.raises(_Crash):  # the process dies in the middle of the third epoch
        train(part, task, tr, checkpoint=tmp_path / "part.pt", progress=_crash_in_epoch(2), **kw)
    state = torch.load(tmp_path / "part.pt", weights_only=True)
    assert state["epoch"] == 2  # the crash lost only the epoch in flight
    torch.manual_seed(123)  # a fresh process: other random state
    resumed = task.create_model("resnet20")
    seconds, loss, done_before = train(resumed, task, tr, checkpoint=tmp_path / "part.pt", **kw)
    assert done_before == 2
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_stall_free_seconds_counts_a_stalled_batch_at_the_median():
    assert stall_free_seconds([0.1] * 9 + [100.0]) == pytest.approx((1.0, 1))
    assert stall_free_seconds([0.1, 0.2, 0.3, 1.0]) == pytest.approx((1.6, 0))  # slow, not stalled
    assert stall_free_seconds([]) == (0.0, 0)


class _StallingTask:
    """The task, but one loss call sleeps: a process stopped or a machine paused mid-batch."""

    def __init__(self, task, at_call: int, seconds: float):
        self.task, self.at_call, self.seconds, self.calls = task, at_call, seconds, 0

    def loss(self, output, target):
        self.calls += 1
        if self.calls == self.at_call:
            time.sleep(self.seconds)
        return self.task.loss(output, target)


def test_a_paused_batch_is_not_counted_as_training_time(caplog):
    task = get_task("image_classification")
    tr, _ = _tiny()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 2))  # ~1 ms a batch
    stalling = _StallingTask(task, at_call=3, seconds=3.0)
    with caplog.at_level("WARNING", logger="bimodels.training"):
        seconds, _, _ = train(
            model,
            stalling,
            tr,
            optimizer="sgd",
            lr=0.05,
            epochs=1,
            batch_size=8,
            weight_decay=0.0,
            seed=0,
            device=torch.device("cpu"),
            checkpoint=None,
        )
    assert seconds < 2.0  # eight tiny batches, and not the 3 s pause
    assert "1 batch(es) stalled" in caplog.text


class _Crash(Exception):
    pass


def _crash_in_epoch(epoch_index: int):
    def progress(epoch, epochs, batch, batches, loss):
        if epoch == epoch_index and batch == 2:
            raise _Crash()

    return progress


def test_full_precision_then_binary_fine_tune_learns_and_checkpoints(tmp_path):
    task = get_task("image_classification")
    tr, te = _tiny(128)
    te = Split("test", te.x, te.y, te.prepare)
    config = task.config("quick")
    fp, fp_result = run_full_precision(
        task, "resnet20", tr, te, config, 0, resolve_device("cpu"), tmp_path / "fp.pt"
    )
    assert (
        0.0 <= fp_result.metric <= 1.0
        and fp_result.epochs == config.fp_epochs
        and fp_result.train_seconds > 0
    )
    again_model, again = run_full_precision(
        task, "resnet20", tr, te, config, 0, resolve_device("cpu"), tmp_path / "fp.pt"
    )
    assert again.resumed_from == config.fp_epochs and again.metric == fp_result.metric  # nothing retrained
    result = run_binary(
        task, fp, "reactnet", tr, te, config, 0, resolve_device("cpu"), tmp_path / "reactnet.pt"
    )
    assert 0.0 <= result.metric <= 1.0 and (tmp_path / "reactnet.pt").exists()


CUBE_OFF = """OFF
8 6 0
-1 -1 -1
1 -1 -1
1 1 -1
-1 1 -1
-1 -1 1
1 -1 1
1 1 1
-1 1 1
4 0 1 2 3
4 4 5 6 7
4 0 1 5 4
4 2 3 7 6
4 1 2 6 5
4 0 3 7 4
"""
TETRA_OFF = (
    "OFF4 4 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n3 0 1 3\n3 0 2 3\n3 1 2 3\n"  # counts glued to OFF
)


def _modelnet_fixture(root):
    for name, text in (("cube", CUBE_OFF), ("tetra", TETRA_OFF)):
        for split, n in (("train", 3), ("test", 2)):
            folder = root / "ModelNet40" / name / split
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{name}_{i:04d}.off").write_text(text)
    return root


def test_modelnet_off_meshes_are_sampled_on_their_surface(tmp_path):
    from bimodels.data.modelnet import read_modelnet, read_off

    vertices, triangles = read_off(
        _modelnet_fixture(tmp_path) / "ModelNet40" / "cube" / "train" / "cube_0000.off"
    )
    assert vertices.shape == (8, 3) and triangles.shape == (12, 3)  # quads fanned into triangles
    x, y, classes = read_modelnet(tmp_path, "train", points=128, seed=0)
    assert x.shape == (6, 128, 3) and classes == ["cube", "tetra"] and list(y) == [0, 0, 0, 1, 1, 1]
    assert np.allclose(np.abs(x[0]).max(axis=1), 1.0, atol=1e-6)  # every cube point lies on a face
    assert np.all(x[3] >= -1e-9) and np.all(x[3].sum(axis=1) <= 1 + 1e-6)  # inside the tetrahedron's hull
    data = get_task("point_cloud_classification").load("quick", tmp_path, seed=0)
    assert data.source.startswith("modelnet40") and data.num_classes == 2 and len(data.test) == 4
    assert data.train.batch(torch.arange(2))[0].shape == (2, 3, 128)  # the quick scale's points per cloud


@pytest.mark.parametrize(
    "text, words",
    [
        ("PLY\n", "not an OFF mesh"),
        ("OFF\n3 1 0\n0 0 0\n1 0 0\n", "declares 3 vertices and 1 faces; found 2"),
        ("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n", "names a vertex outside 0..2"),
    ],
)
def test_malformed_off_files_name_the_file(tmp_path, text, words):
    from bimodels.data.modelnet import read_off

    (tmp_path / "bad.off").write_text(text)
    with pytest.raises(DataError, match=f"bad.off: .*{words}"):
        read_off(tmp_path / "bad.off")


def test_modelnet_empty_class_folder_and_missing_h5py(tmp_path):
    from bimodels.data.modelnet import read_modelnet

    _modelnet_fixture(tmp_path)
    (tmp_path / "ModelNet40" / "chair" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="chair/train: empty class folder"):
        read_modelnet(tmp_path, "train", 64, 0)
    h5 = tmp_path / "h5" / "ply_data_train0.h5"
    h5.parent.mkdir()
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    try:
        import h5py  # noqa: F401

        words = "not a ModelNet40 HDF5 file"
    except ImportError:
        words = "needs h5py"
    with pytest.raises(DataError, match=words):
        read_modelnet(tmp_path / "h5", "train", 64, 0)


def test_generated_shapes_are_deterministic_balanced_and_not_trivial():
    from bimodels.data import shapes

    a, la = shapes.generate(120, 64, seed=5)
    b, lb = shapes.generate(120, 64, seed=5)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert np.bincount(la).tolist() == [10] * len(shapes.CLASSES)
    c, _ = shapes.generate(120, 64, seed=6)
    assert not np.array_equal(a, c)
    # a nearest-centroid classifier on sorted radii cannot separate all classes: the task is not trivial
    radii = np.sort(np.linalg.norm(a - a.mean(1, keepdims=True), axis=2), axis=1)
    centroids = np.stack([radii[la == k].mean(0) for k in range(len(shapes.CLASSES))])
    guess = np.argmin(((radii[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (guess == la).mean() < 0.9


def test_glue_tsv_files_in_their_real_layouts(tmp_path):
    from bimodels.data.text import read_glue

    sst = tmp_path / "SST-2"
    sst.mkdir()
    (sst / "train.tsv").write_text(
        "sentence\tlabel\nit 's a charming and often affecting journey . \t1\n"
        "unflinchingly bleak and desperate \t0\n"
    )
    (sst / "dev.tsv").write_text("sentence\tlabel\na gorgeous , witty , seductive movie . \t1\n")
    a, b, y = read_glue(sst, "train")
    assert a[1].startswith("unflinchingly") and b == ["", ""] and list(y) == [1, 0]
    cola = tmp_path / "CoLA"
    cola.mkdir()
    (cola / "train.tsv").write_text(
        "gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThey drank the pub.\n"
    )
    assert read_glue(cola, "train")[0] == ["Our friends won't buy this analysis.", "They drank the pub."]
    mrpc = tmp_path / "MRPC"
    mrpc.mkdir()
    (mrpc / "train.tsv").write_text(
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        "1\t702876\t702977\tAmrozi accused his brother .\tHe accused his brother .\n"
    )
    a, b, y = read_glue(mrpc, "train")
    assert b == ["He accused his brother ."] and list(y) == [1]
    (sst / "train.tsv").write_text("sentence\tlabel\ngood\tmaybe\n")
    with pytest.raises(
        DataError, match="SST-2/train.tsv: line 2: expected 2 tab-separated columns with a 0/1"
    ):
        read_glue(sst, "train")
    (sst / "train.tsv").write_text("text\tstars\nfine\t1\n")
    with pytest.raises(DataError, match="expected a header with 'sentence', 'label'"):
        read_glue(sst, "train")


def test_language_task_reads_glue_from_data_root_with_its_own_metric(tmp_path):
    cola = tmp_path / "glue_data" / "CoLA"
    cola.mkdir(parents=True)
    rows = "".join(
        f"src\t{i % 2}\t\tsentence number {i} is {'fine' if i % 2 else 'bad'}\n" for i in range(20)
    )
    (cola / "train.tsv").write_text(rows)
    (cola / "dev.tsv").write_text(rows[: rows.index("sentence number 6")].rsplit("src", 1)[0])
    task = get_task("language_understanding")
    data = task.load("quick", tmp_path, seed=0)
    assert data.source.startswith("glue CoLA") and data.metric_name(task) == "matthews_corr"
    assert len(data.train) == 20 and len(data.test) == 6 and data.train.x.shape[1] == 24
    assert int(data.train.x[0, 0]) == 1  # [CLS]
    assert task.metric == "accuracy"  # the task itself is unchanged: the metric belongs to the data
    assert task.load("quick", None, seed=0).metric_name(task) == "accuracy"
    # the Matthews correlation is what CoLA's split is scored by
    constant = type(
        "Constant",
        (torch.nn.Module,),
        {"forward": lambda self, x: torch.tensor([[0.0, 1.0]]).expand(len(x), 2)},
    )()
    assert task.evaluate(constant, data.test, 8, torch.device("cpu")) == 0.0  # MCC of a constant guess


def test_matthews_correlation():
    from bimodels.tasks.language_understanding import matthews_corr

    assert matthews_corr(np.array([1, 0, 1, 0]), np.array([1, 0, 1, 0])) == 1.0
    assert matthews_corr(np.array([1, 1, 1, 1]), np.array([1, 0, 1, 0])) == 0.0
    assert matthews_corr(np.array([1, 0, 0, 0]), np.array([1, 0, 1, 0])) == pytest.approx(1 / 3**0.5)


def test_generated_text_labels_follow_their_rules():
    from bimodels.data import text

    a, b, y = text.generate(400, seed=3)
    for first, second, label in zip(a, b, y):
        if second:  # a pair: same content words either way
            assert sorted(set(text.tokenize(first)) - {"was", "by"}) != [] and label in (0, 1)
        else:
            clause = first.split(" , but ")[-1]
            words = set(text.tokenize(clause))
            positive = bool(words & set(text.POSITIVE))
            negated = bool(words & set(text.NEGATORS))
            assert label == int(positive != negated), first
    assert 0.4 < y.mean() < 0.6


def _wav(path, samples, rate=16000, width=2):
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(
            (np.asarray(samples) * 20000).astype("<i2").tobytes()
            if width == 2
            else (np.asarray(samples) * 100 + 128).astype(np.uint8).tobytes()
        )


def test_speech_commands_folder_and_bad_wavs(tmp_path):
    from bimodels.data import speech

    t = np.arange(16000) / 16000
    for word in ("yes", "no", "marvin"):
        (tmp_path / word).mkdir()
        for i in range(3):
            _wav(tmp_path / word / f"{i:08x}_nohash_0.wav", np.sin(2 * np.pi * (200 + 100 * i) * t))
    (tmp_path / "_background_noise_").mkdir()
    _wav(tmp_path / "_background_noise_" / "white.wav", np.random.default_rng(0).normal(0, 0.1, 16000))
    (tmp_path / "testing_list.txt").write_text("yes/00000000_nohash_0.wav\nmarvin/00000001_nohash_0.wav\n")
    (tmp_path / "validation_list.txt").write_text("no/00000002_nohash_0.wav\n")
    x, y = speech.read_speech_commands(tmp_path, "train")
    assert x.shape == (6, 40, 98) and sorted(speech.LABELS[i] for i in y) == [
        "no",
        "no",
        "unknown",
        "unknown",
        "yes",
        "yes",
    ]
    xt, yt = speech.read_speech_commands(tmp_path, "test")
    assert [speech.LABELS[i] for i in yt] == ["unknown", "yes"]
    data = get_task("keyword_spotting").load("quick", tmp_path, seed=0)
    assert data.source.startswith("speech commands") and len(data.test) == 2
    bad = tmp_path / "no" / "broken.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt junk")
    with pytest.raises(DataError, match="broken.wav: not a valid WAV file"):
        speech.read_speech_commands(tmp_path, "train")
    bad.unlink()
    _wav(tmp_path / "no" / "eight_bit.wav", np.zeros(100), width=1)
    with pytest.raises(DataError, match="eight_bit.wav: expected 16-bit PCM"):
        speech.read_speech_commands(tmp_path, "train")


def test_log_mel_features_and_resampling():
    from bimodels.data import speech

    t = np.arange(22050) / 22050
    tone = speech.fit_second(np.sin(2 * np.pi * 1000 * t), 22050)
    assert tone.shape == (16000,)
    features = speech.log_mel(tone)
    assert features.shape == (40, 98) and features.dtype == np.float32
    band = int(features.mean(axis=1).argmax())
    centres = [np.argmax(row) * 16000 / 512 for row in speech.mel_filterbank()]
    assert abs(centres[band] - 1000) < 150  # the loudest band is the one around 1 kHz


@pytest.mark.skipif(not __import__("shutil").which("espeak-ng"), reason="espeak-ng not installed")
def test_espeak_keywords_are_deterministic_and_balanced():
    from bimodels.data import speech

    a, la = speech.generate(24, seed=4)
    b, lb = speech.generate(24, seed=4)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert np.bincount(la, minlength=12).tolist() == [2] * 12
    silence = a[la == speech.LABELS.index("silence")]
    spoken = a[la == speech.LABELS.index("yes")]
    assert spoken.max() > silence.max()  # speech is louder than noise alone


def test_a_hung_espeak_is_retried_and_a_repeated_hang_is_a_clear_error(tmp_path, monkeypatch):
    """espeak-ng stand-in on PATH: hangs on the first call, then hands over to the real one."""
    from bimodels.data import speech

    real = shutil.which("espeak-ng")
    if real is None:
        pytest.skip("espeak-ng is not installed")
    marker = tmp_path / "hung-once"
    script = tmp_path / "espeak-ng"
    script.write_text(
        f"#!/bin/sh\nif [ ! -e {marker} ] || [ -e {tmp_path / 'always'} ]; then touch {marker}; "
        f'exec sleep 30; fi\nexec {real} "$@"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    audio, rate = speech.speak("yes", "en", 160, 50, timeout=1.0)
    assert marker.exists() and rate > 0 and np.abs(audio).max() > 0  # the second attempt spoke
    (tmp_path / "always").touch()
    with pytest.raises(DataError, match=r"espeak-ng: did not finish 'yes' in voice en within 1 s, 2 times"):
        speech.speak("yes", "en", 160, 50, attempts=2, timeout=1.0)
