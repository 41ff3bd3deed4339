"""The deployability matrix: computed by export attempts and, where installed, real runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from biagent.runtimes import get_runtime, list_runtimes
from bihost.deployability import cell

larq_installed = get_runtime("larq").describe().installed


def bihost(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bihost.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_matrix_json_has_every_algorithm_and_runtime():
    out = bihost("matrix", "--arch", "resnet20", "--algo", "bnn,xnor,reactnet", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) == {"bnn", "xnor", "reactnet"}
    for row in data.values():
        assert set(row) == set(list_runtimes())
        for c in row.values():
            assert c["status"] in {"native", "composite", "unsupported"}
            assert isinstance(c["extra_ops"], dict) and isinstance(c["reason"], str)
        assert row["custom"]["status"] == "native" and row["custom"]["checked"]
        assert row["onnxruntime"]["status"] == "composite"
    if larq_installed:
        assert data["xnor"]["larq"]["extra_ops"]["MUL (XNOR beta)"] == 18
        assert data["reactnet"]["larq"]["extra_ops"]["ADD (ReActNet threshold)"] == 18
        assert data["bnn"]["larq"]["checked"]


@pytest.mark.skipif(not larq_installed, reason="larq-compute-engine not installed")
def test_plus_one_padding_makes_lce_native_and_zero_padding_composite():
    assert cell("resnet20", "bnn", "larq", pad_value=1.0).status == "native"
    zero = cell("resnet20", "bnn", "larq", pad_value=0.0)
    # LCE pads natively (SAME, pad_values 0) wherever SAME is PyTorch's padding: only the two
    # stride-2 convs on even maps (32 -> 16, 16 -> 8) keep a correction map
    assert zero.status == "composite" and zero.extra_ops == {"ADD (zero-padding correction)": 2}
    assert zero.checked and zero.max_rel_error < 1e-3


def test_unsupported_cells_name_the_reason():
    c = cell("bert_tiny", "bnn", "larq", check=False)
    assert c.status == "unsupported" and "float32 input" in c.reason
    c = cell("bert_tiny", "bnn", "dabnn", check=False)
    assert c.status == "unsupported" and "float32 input" in c.reason


@pytest.mark.skipif(not larq_installed, reason="larq-compute-engine not installed")
def test_lce_deploys_keyword_spotting_as_one_row_images():
    c = cell("dfsmn", "reactnet", "larq")
    assert c.status == "composite" and c.checked, c.reason
    assert c.extra_ops == {"ADD (ReActNet threshold)": 8}


def test_the_custom_runtime_deploys_token_models_natively():
    c = cell("bert_tiny", "xnor", "custom")
    assert c.status == "native" and c.checked, c.reason


def test_table_output_for_people():
    out = bihost("matrix", "--arch", "resnet20", "--algo", "bnn", "--runtime", "custom,onnxruntime")
    assert out.returncode == 0 and "native" in out.stdout and "composite" in out.stdout


def test_a_runtime_present_but_unusable_says_so_instead_of_an_unchecked_native(tmp_path, monkeypatch):
    (tmp_path / "dabnn").mkdir()  # a daBNN "build" without its library: configured, not usable
    monkeypatch.setenv("BIAGENT_DABNN_ROOT", str(tmp_path))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bihost.cli",
            "matrix",
            "--arch",
            "reactnet",
            "--algo",
            "bnn",
            "--runtime",
            "dabnn",
            "--pad-value",
            "-1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert (
        f"dabnn: not checked against torch: dabnn is not usable here: BIAGENT_DABNN_ROOT={tmp_path} is not a "
        "usable daBNN build: missing libdabnn.so or libdabnn.a" in " ".join(out.stdout.split())
    )
    c = cell("reactnet", "bnn", "custom")  # checked: every input's error, and the largest as max_rel_error
    assert c.checked and not c.unchecked and len(c.rel_errors) == 3 and c.max_rel_error == max(c.rel_errors)
