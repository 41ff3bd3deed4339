"""The `bihost` console script, run as a real subprocess."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import bimodels
from bimodels.numerics import compare_onnx

BIHOST = Path(sys.executable).with_name("bihost")


def bihost(*args: str) -> subprocess.CompletedProcess:
    cmd = [str(BIHOST)] if BIHOST.exists() else [sys.executable, "-m", "bihost.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300)


def test_models_json_lists_the_registries():
    out = bihost("models", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["algorithms"] == bimodels.list_algorithms()
    assert data["architectures"] == bimodels.list_architectures()
    assert {"bnn", "xnor", "dorefa", "bireal", "xnorpp", "reactnet", "recu", "fda"} == set(data["algorithms"])


def test_models_table_for_people():
    out = bihost("models")
    assert out.returncode == 0 and "pointnet" in out.stdout and "Courbariaux" in out.stdout


def test_complexity_json_one_algorithm():
    out = bihost("complexity", "--arch", "resnet18", "--algo", "bnn", "--json")
    assert out.returncode == 0, out.stderr
    (entry,) = json.loads(out.stdout)["models"]
    assert entry["algorithm"] == "bnn" and entry["arch"] == "resnet18"
    assert (
        entry["params"] == 11_689_512 and entry["flops"] == 1_814_073_344 and entry["bops"] == 1_676_279_808
    )
    assert entry["compression_ratio"] == pytest.approx(
        entry["params"] / (entry["params_bin"] / 32 + entry["params_fp"])
    )
    assert entry["speedup_ratio"] == pytest.approx(entry["flops"] / (entry["bops"] / 64 + entry["flops_fp"]))


def test_complexity_all_gives_one_entry_per_algorithm():
    out = bihost("complexity", "--arch", "resnet20", "--algo", "all", "--json", "--layers")
    assert out.returncode == 0, out.stderr
    models = json.loads(out.stdout)["models"]
    assert [m["algorithm"] for m in models] == bimodels.list_algorithms()
    assert all(len([l for l in m["layers"] if l["binary"]]) == 18 for m in models)


def test_unknown_names_are_one_line_errors():
    for args in (
        ["complexity", "--arch", "resnet19"],
        ["complexity", "--algo", "bnnn"],
        ["export", "--arch", "resnet20", "--format", "tflite", "-o", "x.bin"],
    ):
        out = bihost(*args)
        assert out.returncode == 1, args
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: unknown"), out.stderr
        assert "known" in lines[0] and "Traceback" not in out.stderr


def test_export_onnx_runs_in_onnxruntime(tmp_path):
    path = tmp_path / "model.onnx"
    out = bihost(
        "export",
        "--arch",
        "resnet20",
        "--algo",
        "reactnet",
        "--format",
        "onnx",
        "--output",
        str(path),
        "--seed",
        "3",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    data = path.read_bytes()
    assert summary["sha256"] == hashlib.sha256(data).hexdigest() and summary["binary_layers"] == 18
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    y = session.run(
        None, {"input": np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)}
    )[0]
    assert y.shape == (4, 10) and np.isfinite(y).all()
    # Same seed, same bytes: the export is reproducible.
    again = tmp_path / "again.onnx"
    assert (
        bihost(
            "export", "--arch", "resnet20", "--algo", "reactnet", "-o", str(again), "--seed", "3"
        ).returncode
        == 0
    )
    assert again.read_bytes() == data


def test_export_with_a_trained_checkpoint(tmp_path):
    torch.manual_seed(7)
    model = bimodels.binarize(bimodels.create_model("vgg_small"), "bireal").eval()
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    path = tmp_path / "m.onnx"
    out = bihost(
        "export",
        "--arch",
        "vgg_small",
        "--algo",
        "bireal",
        "--checkpoint",
        str(tmp_path / "ckpt.pt"),
        "-o",
        str(path),
    )
    assert out.returncode == 0, out.stderr
    # The artifact is the trained model's, byte for byte, and computes its function.
    assert path.read_bytes() == bimodels.export(model, "onnx", bimodels.example_input(model))
    x = bimodels.example_input(model, 2)
    assert compare_onnx(model, path.read_bytes(), x).exact()


def test_export_bad_checkpoint_and_bad_output_lose_nothing(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    out = bihost(
        "export",
        "--arch",
        "resnet20",
        "--checkpoint",
        str(tmp_path / "junk.pt"),
        "-o",
        str(tmp_path / "m.onnx"),
    )
    assert out.returncode == 1 and "junk.pt" in out.stderr and "Traceback" not in out.stderr
    out = bihost("export", "--arch", "resnet20", "-o", str(tmp_path / "missing" / "m.onnx"))
    assert out.returncode == 1 and "does not exist" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pt"]  # no partial artifacts
