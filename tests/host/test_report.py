"""`bihost report`: a page rendered from a store a quick run filled (plus a local-board
profile), every figure a valid PNG, and a selection that never mixes scales or recipes."""

from __future__ import annotations

import base64
import json
import re
import sqlite3

import numpy as np
import pytest
from PIL import Image

from bihost.records import Measurement, TrainingRun
from bihost.report import select
from bihost.report.figures import FIGURES
from bihost.results import FILENAME, ResultsStore
from bihost.tracks.hardware import latest_measurements
from tests.host.helpers import bihost

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_store(quick_bench, tmp_path_factory):
    """A copy of the quick run's store, with the local board profiled for the hardware figures."""
    _, results, _ = quick_bench
    copy = tmp_path_factory.mktemp("report") / "results"
    copy.mkdir()
    with sqlite3.connect(results / FILENAME) as src, sqlite3.connect(copy / FILENAME) as dst:
        src.backup(dst)  # a consistent copy, WAL included
    out = bihost(
        "bench", "--track", "hardware", "--algo", "bnn,reactnet", "--scale", "quick", "--results", str(copy)
    )
    assert out.returncode == 0, out.stderr
    return copy


def test_report_from_a_quick_store_draws_every_figure_as_a_valid_png(quick_store, tmp_path):
    out = bihost(
        "report", "--results", str(quick_store), "--out", str(tmp_path / "rep"), "--algo", "bnn,reactnet"
    )
    assert out.returncode == 0, out.stderr
    assert "not drawn" not in out.stderr
    page = (tmp_path / "rep" / "index.html").read_text()
    for spec in FIGURES:
        png = tmp_path / "rep" / "figures" / f"{spec.name}.png"
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC), spec.name
        with Image.open(png) as im:
            im.verify()  # checksums of every chunk
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 100
            assert len(np.unique(np.asarray(im.convert("L")))) > 8, f"{spec.name} is blank"
        # the page stands alone: the same bytes are embedded in it, under the figure's caption
        assert base64.b64encode(data).decode() in page
        block = page[page.index(f"<figure id='{spec.name}'>") :]
        caption = block[block.index("<figcaption>") : block.index("</figcaption>")]
        assert "UTC" in caption, spec.name  # every caption dates its rows
        if spec.section in ("accuracy", "robustness", "consumption"):
            assert "quick scale, seed 0" in caption, spec.name
        if spec.section == "hardware":
            assert "boards: local" in caption, spec.name


def test_the_page_marks_the_best_per_column_from_the_same_numbers_as_bench(quick_store, tmp_path):
    out = bihost(
        "report", "--results", str(quick_store), "--out", str(tmp_path / "rep"), "--algo", "bnn,reactnet"
    )
    assert out.returncode == 0, out.stderr
    bench = bihost(
        "bench",
        "--track",
        "all",
        "--algo",
        "bnn,reactnet",
        "--scale",
        "quick",
        "--results",
        str(quick_store),
        "--json",
    )  # everything is stored: this only scores
    assert bench.returncode == 0, bench.stderr
    table = json.loads(bench.stdout)["table"]
    page = (tmp_path / "rep" / "index.html").read_text()
    html_rows = dict(re.findall(r"<tr><th>(bnn|reactnet)</th>(.*?)</tr>", page))
    for j, _column in enumerate(table["columns"][1:], start=1):
        values = {row[0]: row[j] for row in table["rows"]}
        best = max(values, key=values.get)
        cells = {
            a: re.findall(r"<td class=\"num( best)?\">([^<]*)</td>", html_rows[a])[j - 1] for a in values
        }
        for algo, (is_best, text) in cells.items():
            assert float(text.split()[0]) == pytest.approx(values[algo], abs=5e-4)
            assert bool(is_best) == (algo == best) and ("★" in text) == (algo == best)


def _run(algo, metric, created, config_hash="h1", scale="quick", task="t"):
    return TrainingRun(
        task=task,
        arch="resnet20",
        algorithm=algo,
        scale=scale,
        seed=0,
        config_hash=config_hash,
        data_version="v",
        data_source="s",
        metric_name="accuracy",
        metric=metric,
        epochs=1,
        train_seconds=1.0,
        device="cpu",
        threads=2,
        host="h",
        created_at=created,
    )


def test_selection_keeps_the_newest_recipe_of_one_scale_and_says_what_it_left_out(tmp_path):
    store = ResultsStore(tmp_path)
    for r in (
        _run("fp32", 0.9, 1.0),
        _run("bnn", 0.3, 2.0),  # an old recipe
        _run("fp32", 0.8, 10.0, "h2"),
        _run("bnn", 0.6, 11.0, "h2"),  # retrained: the newest
        _run("fp32", 0.95, 5.0, scale="default"),
        _run("bnn", 0.9, 6.0, scale="default"),
    ):
        store.add_training_run(r)
    data = select(store, algorithms=["bnn"])
    assert data.scale == "quick"  # the newest row's scale
    assert {(r.algorithm, r.config_hash) for r in data.runs} == {("fp32", "h2"), ("bnn", "h2")}
    assert data.track("task").overall["bnn"] == pytest.approx(0.6 / 0.8)
    assert any("2 training runs of older recipes" in x for x in data.left_out)
    assert any("2 training/grid runs of another scale" in x for x in data.left_out)
    other = select(store, scale="default", algorithms=["bnn"])
    assert other.track("task").overall["bnn"] == pytest.approx(0.9 / 0.95)


def test_a_newer_failure_does_not_hide_an_ok_measurement_and_repeats_count_once():
    def m(status, created, speedup):
        return Measurement(
            campaign=f"c{created}",
            board="b",
            chip="c",
            arch="resnet20",
            algorithm="bnn",
            runtime="custom",
            status=status,
            speedup_vs_fp32=speedup,
            created_at=created,
        )

    rows = [m("ok", 1.0, 2.0), m("ok", 2.0, 3.0), m("error", 3.0, None)]
    assert [(r.status, r.speedup_vs_fp32) for r in latest_measurements(rows)] == [("ok", 3.0)]


def test_report_errors_are_clear_and_create_nothing(tmp_path):
    out = bihost("report", "--results", str(tmp_path / "none"))
    assert out.returncode != 0 and "no results store at" in out.stderr
    assert not (tmp_path / "none").exists()
    ResultsStore(tmp_path / "empty")
    out = bihost("report", "--results", str(tmp_path / "empty"))
    assert out.returncode != 0 and "holds nothing to report" in out.stderr
    store = ResultsStore(tmp_path / "q")
    store.add_training_run(_run("fp32", 0.9, 1.0))
    out = bihost("report", "--results", str(tmp_path / "q"), "--scale", "paper")
    assert out.returncode != 0 and "holds no paper-scale run (it holds: quick)" in out.stderr
    out = bihost(
        "report", "--results", str(tmp_path / "q")
    )  # an FP run alone: a page that says what is missing
    assert out.returncode == 0, out.stderr
    assert "not drawn: learning-task: no binarized run with its FP run" in out.stderr
    assert "not drawn: hardware: no successful hardware measurement" in out.stderr
    page = (tmp_path / "q" / "report" / "index.html").read_text()
    assert "Not drawn: no binarized run" in page and '<td class="num">n/a</td>' in page
