"""Malformed input, fuzzed (a few hundred cases here; bench/fuzz.py runs 10,000+): every
rejection is a clear error, the agent never crashes and keeps nothing half-written."""

from __future__ import annotations

import torch
from torch import nn

import bimodels
from biagent.runtimes.custom import KernelSettings, load_artifact
from bihost.client import AgentClient
from tests.fuzz import (
    custom_artifact_mutations,
    double_model_onnx,
    executor_plan_mutations,
    nan_and_inf_checks,
    raw_bytes_to_every_rpc,
    silent_and_slow_clients,
    structured_requests,
    token_model_artifact,
)


def _alive_and_clean(agent) -> None:
    assert agent.proc.poll() is None, "".join(agent.output[-20:])
    with AgentClient(agent.address, "fuzzed", timeout_s=10) as client:
        assert client.health()
    assert not list((agent.store / "tmp").iterdir())  # no half-written upload left behind


def test_random_bytes_to_every_rpc(start_agent):
    agent = start_agent()
    outcomes = raw_bytes_to_every_rpc(agent.address, 300)
    assert sum(outcomes.values()) == 300 and set(outcomes) - {"OK"}, outcomes
    _alive_and_clean(agent)


def test_hostile_values_in_well_formed_requests(start_agent):
    agent = start_agent()
    outcomes = structured_requests(agent.address, 300, model_ids=[])
    assert sum(outcomes.values()) == 300
    assert any(k.startswith("bench:") for k in outcomes) and any(k.startswith("push:") for k in outcomes), (
        outcomes
    )
    _alive_and_clean(agent)


def test_mutated_custom_artifacts_only_raise_load_or_invoke_errors():
    torch.manual_seed(0)
    model = bimodels.binarize(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.Hardtanh(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.Flatten(),
            nn.Linear(8 * 25, 4),
        ),
        "xnor",
        fp_layers=["0", "5"],
    ).eval()
    seed = bimodels.export(model, "custom", torch.randn(1, 3, 5, 5))
    outcomes = custom_artifact_mutations(seed, 300)
    assert _cases(outcomes) == 300 and outcomes.get("rejected"), outcomes


def test_mutated_fused_resnet_artifacts_only_raise_load_or_invoke_errors():
    """A binary ResNet: its graph loads fused (conv epilogues, packed-bits outputs, the stem),
    so mutations reach the fused kernels' argument checks too."""
    torch.manual_seed(0)
    model = bimodels.binarize(bimodels.create_model("resnet20"), "bnn").eval()
    seed = bimodels.export(model, "custom", torch.randn(1, 3, 32, 32))
    ops = {n.op for n in load_artifact(seed, KernelSettings.from_env()).nodes}
    assert {"binary_conv+channel_affine+add+hardtanh", "binary_conv+channel_affine+hardtanh+sign"} <= ops, ops
    outcomes = custom_artifact_mutations(seed, 200)
    assert _cases(outcomes) == 200 and outcomes.get("rejected") and outcomes.get("ran"), outcomes
    assert outcomes.get("executor: ran"), outcomes  # the loadable mutants ran through the executor too


def test_mutated_executor_plans_are_refused_or_run_never_crash():
    torch.manual_seed(0)
    model = bimodels.binarize(bimodels.create_model("resnet20"), "xnor").eval()
    seed = bimodels.export(model, "custom", torch.randn(1, 3, 32, 32))
    outcomes = executor_plan_mutations(seed, 300)
    assert sum(outcomes.values()) == 300 and outcomes.get("refused at build"), outcomes
    tokens = executor_plan_mutations(token_model_artifact(), 300)
    assert sum(tokens.values()) == 300 and tokens.get("refused at build"), tokens


def _cases(outcomes: dict[str, int]) -> int:
    """Mutants tried (the executor's outcomes count the same mutants again)."""
    return sum(v for k, v in outcomes.items() if not k.startswith("executor:"))


def test_regressions_the_fuzzer_found(start_agent):
    """A shape whose product overflows int64 was an UNKNOWN error; a timing input the model
    cannot take was INTERNAL (so the host retried it): both are INVALID_ARGUMENT now."""
    import numpy as np
    import pytest

    from biagent.wire import WireError, to_array
    from bihost.client import BenchmarkSettings
    from bihost.errors import BoardError
    from biproto import agent_pb2 as pb

    with pytest.raises(WireError, match="larger than the limit"):
        to_array(pb.Tensor(shape=[2**40, 2**40, 2**40], dtype="float32", data=b""))
    torch.manual_seed(0)
    model = bimodels.binarize(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Hardtanh(), nn.Flatten(), nn.Linear(8 * 25, 4)),
        "bnn",
        fp_layers=["0", "3"],
    ).eval()
    agent = start_agent()
    with AgentClient(agent.address, "fuzzed", timeout_s=30) as client:
        model_id = client.push(bimodels.export(model, "custom", torch.randn(1, 3, 5, 5)), "custom").model_id
        with pytest.raises(BoardError, match="INVALID_ARGUMENT.*rejected the timing input") as info:
            client.benchmark(
                model_id,
                "custom",
                BenchmarkSettings(min_runs=1, min_duration_s=0),
                timing_inputs=[np.zeros((0,), np.float32)],
            )
        assert not info.value.transient
    _alive_and_clean(agent)


def test_nan_and_inf_in_checks_and_tolerances_get_the_independent_verdict(start_agent):
    agent = start_agent()
    with AgentClient(agent.address, "fuzzed") as client:
        model_id = client.push(double_model_onnx(), "onnx").model_id
    outcomes = nan_and_inf_checks(agent.address, 40, model_id)
    assert sum(outcomes.values()) == 40 and {"ok", "numerics_error", "INVALID_ARGUMENT"} <= set(outcomes), (
        outcomes
    )
    _alive_and_clean(agent)


def test_silent_and_slow_clients_end_as_they_must_and_health_always_answers(start_agent):
    agent = start_agent(extra=("--upload-idle-timeout", "1"))
    outcomes = silent_and_slow_clients(agent.address, 8, idle_s=1.0)
    assert sum(outcomes.values()) >= 8, outcomes
    _alive_and_clean(agent)
