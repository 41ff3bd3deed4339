"""The numerics rule through a real agent and real runtimes: a rounding flip is told from an
export error by the values the runtime's signs are taken of, or, where the runtime cannot
show them (LCE), by torch reproducing its output with one decision near zero flipped.

The flip is staged on torch's side (the rule does not care which side flipped): the reference
is computed with one decision of the first binary layer forced the other way, either the
decision nearest zero (moved to 1e-7 of the layer's range on the other side: a rounding
flip) or the one farthest from it (a real margin). The runtimes compute the true model.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

import bimodels
from biagent.runtimes import get_runtime
from bihost.artifacts import export_format
from bihost.client import AgentClient, BenchmarkSettings
from bihost.deployability import export_for
from bimodels.binarize import to_deploy
from bimodels.layers import DeployedBinaryLayer
from bimodels.numerics import reference_cases

QUICK = BenchmarkSettings(warmup_runs=0, min_runs=1, min_duration_s=0.0, max_duration_s=5)
LARQ = get_runtime("larq").describe().installed


def model(seed: int = 0):
    torch.manual_seed(seed)
    return bimodels.binarize(
        bimodels.trained_like_norms(bimodels.create_model("resnet20"), seed), "bnn"
    ).eval()


def staged_case(net, x, fragile: bool):
    deployed = to_deploy(net).double()
    first = next(m for m in deployed.modules() if isinstance(m, DeployedBinaryLayer))

    def force(_module, args):
        v = args[0].clone()
        flat = v.view(-1)
        r = float(flat.abs().max())
        i = int(flat.abs().argmin()) if fragile else int(flat.abs().argmax())
        flat[i] = -math.copysign(1e-7 * r, float(flat[i])) if fragile else -flat[i]
        return (v,)

    first.register_forward_pre_hook(force)
    (case,) = reference_cases(
        net, [x], deployed=deployed, alternatives=True
    )  # as profile sends them on a retry
    return case


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    from tests.conftest import AgentProcess

    proc = AgentProcess(tmp_path_factory.mktemp("flips") / "store", "flip-board")
    yield proc
    proc.stop()


def run(agent, artifact: bytes, runtime: str, fmt: str, case):
    with AgentClient(agent.address, "flip-board", timeout_s=120) as client:
        model_id = client.push(artifact, fmt, "resnet20-bnn").model_id
        return client.benchmark(model_id, runtime, QUICK, checks=[case])


RUNTIMES = [
    "custom",
    "onnxruntime",
    pytest.param("larq", marks=pytest.mark.skipif(not LARQ, reason="larq runtime not installed")),
]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_rounding_flip_is_explained_and_a_real_margin_is_not(agent, runtime):
    net = model()
    x = bimodels.example_input(net, 1, seed=5)
    artifact, _ = export_for(runtime, net, x)
    rounding = run(agent, artifact, runtime, export_format(runtime), staged_case(net, x, fragile=True))
    real = run(agent, artifact, runtime, export_format(runtime), staged_case(net, x, fragile=False))
    assert rounding.max_abs_errors[0] > 1e-3 and real.max_abs_errors[0] > 1e-3  # the outputs do differ
    assert rounding.status == "ok", rounding.reason
    if runtime == "larq":  # LCE's interpreter cannot show its sign inputs: torch's alternatives explain it
        assert "explained by a rounding flip: torch (float64) with decision" in rounding.reason
        assert "of binary layer 0" in rounding.reason and "larq cannot show" in rounding.reason
        assert real.status == "numerics_error" and "cannot be told from an export error" in real.reason
        return
    assert "explained by a rounding flip at binary layer 0: 1 of" in rounding.reason
    assert real.status == "numerics_error", real.reason
    assert "binary layer 0: 1 of" in real.reason and "not rounding" in real.reason


@pytest.mark.parametrize("runtime", ["custom", "onnxruntime"])
def test_a_flipped_weight_channel_fails_with_margin(agent, runtime):
    net = model()
    x = bimodels.example_input(net, 1, seed=5)
    (case,) = reference_cases(net, [x])
    broken = model()
    layer = bimodels.binary_layers(broken)[0]
    with torch.no_grad():
        layer.weight[0] = -layer.weight[0]
    artifact, _ = export_for(runtime, broken, x)
    out = run(agent, artifact, runtime, export_format(runtime), case)
    assert out.status == "numerics_error" and "not rounding" in out.reason, out.reason
    margin = float(re.search(r"one at ([0-9.e+-]+) of the layer's range", out.reason).group(1))
    assert margin > 1e-3, out.reason  # far beyond the 1e-5 rounding margin


@pytest.mark.skipif(not LARQ, reason="larq runtime not installed")
def test_profile_explains_a_real_lce_rounding_flip(tmp_path):
    """reactnet/xnor, seed 1: LCE takes one sign of the third check input the other way (a
    decision at ~3e-9 of its layer's range). The board files numerics_error; profile makes
    torch's alternatives, runs again, and the row is ok with the flip named."""
    import json

    from tests.e2e.test_profile import bihost

    out = bihost(
        "profile",
        "--chip",
        "local",
        "--arch",
        "reactnet",
        "--algo",
        "xnor",
        "--runtime",
        "larq",
        "--seed",
        "1",
        "--runs",
        "1",
        "--min-duration",
        "0",
        "--warmup",
        "0",
        "--json",
        "--results",
        str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    rows = {(r["algorithm"], r["runtime"]): r for r in json.loads(out.stdout)}
    row = rows[("xnor", "larq")]
    assert row["status"] == "ok", row["reason"]
    assert re.search(
        r"case 2: max abs error 0\.\d+ > .*explained by a rounding flip: torch \(float64\) with decision "
        r"\d+ of binary layer \d+ \(\d\.\de-(09|1\d) of its range\)",
        row["reason"],
    ), row["reason"]
