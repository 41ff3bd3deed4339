"""CONTRIBUTING.md's recipes, followed: a toy algorithm and a toy runtime, each one file plus
one registration, and the rest of the project picks them up from the registries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

import bimodels
from biagent.runtimes import base as runtime_base
from biagent.runtimes import get_runtime, list_runtimes
from bihost.artifacts import export_format, pad_value_for
from bihost.commands.common import resolve_algorithms
from bihost.inventory import Board
from bimodels.algorithms.base import ALGORITHMS, Binarizer, DeployForm, register_algorithm, signed
from bimodels.complexity import complexity
from bimodels.ste import sign_clip_ste
from tests.helpers import assert_numerics, randomize_norms

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def toy_algorithm():
    """Recipe "an algorithm", step 1 (a Binarizer, registered); step 2 is the import."""

    @register_algorithm
    class ToyScaled(Binarizer):
        """BNN's signs with XNOR-Net's per-channel weight scale: the smallest new algorithm."""

        name = "toyscaled"
        paper = "a test's toy"

        def binarize_input(self, x: Tensor) -> Tensor:
            return sign_clip_ste(x)

        def binarize_weight(self, w: Tensor) -> Tensor:
            return sign_clip_ste(w) * self.channel_mean_abs(w)

        def deploy_form(self, weight: Tensor, bias: Tensor | None) -> DeployForm:
            return DeployForm(
                weight_sign=signed(weight), weight_scale=self.channel_mean_abs(weight).flatten(), bias=bias
            )

    yield ToyScaled.name
    ALGORITHMS.unregister(ToyScaled.name)


@pytest.fixture
def toy_runtime():
    """Recipe "a runtime", step 2 as a lab does it without editing the agent (a plugin)."""
    runtime_base.register_plugins("toy=tests.toy_runtime:ToyRuntime")
    yield "toy"
    runtime_base.RUNTIMES.pop("toy")


def test_a_new_algorithm_trains_exports_and_runs(toy_algorithm):
    assert toy_algorithm in bimodels.list_algorithms()
    assert resolve_algorithms(toy_algorithm) == [toy_algorithm]  # the CLI's --algo takes it
    model = randomize_norms(bimodels.binarize(bimodels.create_model("resnet20"), toy_algorithm))
    x = torch.randn(4, 3, 32, 32)
    model(x).sum().backward()  # trainable: gradients reach the latent weights
    layer = bimodels.binary_layers(model)[0]
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    model.eval()
    artifact = bimodels.export(model, "custom", x[:1])
    assert_numerics("custom", artifact, "custom", model, [x[:1], x[1:2]])  # deploy form == training form
    report = complexity(model, x[:1])  # the theoretical-complexity track counts it
    assert report.bops > 0 and report.compression_ratio > 1


def test_a_new_runtime_is_known_to_the_inventory_the_host_and_the_contract(toy_runtime):
    assert toy_runtime in list_runtimes() and get_runtime(toy_runtime).name == toy_runtime
    assert export_format(toy_runtime) == "custom" and pad_value_for(toy_runtime, "bnn") == 0.0
    Board.from_dict("toyboard", {"address": "127.0.0.1:1", "runtimes": ["custom", toy_runtime]})
    model = randomize_norms(bimodels.binarize(bimodels.create_model("resnet20"), "bnn")).eval()
    x = torch.randn(1, 3, 32, 32)
    assert_numerics(toy_runtime, bimodels.export(model, "custom", x), "custom", model, [x])


def test_a_plugin_runtime_is_profiled_end_to_end(tmp_path):
    """The same toy, named only in BIAGENT_RUNTIMES: the host lists it, the local agent
    serves it, and `bihost profile` files a checked row for it."""
    env = dict(os.environ, BIAGENT_RUNTIMES="toy=tests.toy_runtime:ToyRuntime", PYTHONPATH=str(ROOT))
    args = ["--chip", "local", "--arch", "resnet20", "--algo", "bnn", "--runtime", "toy"]
    out = subprocess.run(
        [sys.executable, "-m", "bihost.cli", "profile", *args, "--runs", "3", "--min-duration", "0.05"]
        + ["--warmup", "1", "--json", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    rows = {(r["algorithm"], r["runtime"]): r for r in json.loads(out.stdout)}
    toy = rows[("bnn", "toy")]
    assert toy["status"] == "ok", toy["reason"]
    assert toy["latency_ms"]["median"] > 0
