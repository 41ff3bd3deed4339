"""Every architecture x every algorithm: forward shape, finite gradients, ONNX round trip.

Parametrised over the registries, so a newly registered model or algorithm is tested
without anyone remembering to add it here.
"""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

import bimodels
from bimodels.numerics import compare_onnx
from tests.helpers import randomize_norms

ARCHS = bimodels.list_architectures()
ALGOS = bimodels.list_algorithms()


def build(arch: str, algo: str | None, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = randomize_norms(bimodels.create_model(arch), seed)
    return model if algo is None else bimodels.binarize(model, algo)


@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_metadata_is_consistent(arch):
    info = bimodels.get_arch_info(arch)
    assert info.family in {"cnn", "mlp", "transformer"}
    model = bimodels.create_model(arch)
    assert model.eval()(bimodels.example_input(arch, batch_size=1)).shape == (1, *info.output_shape)
    names = dict(model.named_modules())
    for name in model.full_precision_layers():
        assert isinstance(names[name], (nn.Conv1d, nn.Conv2d, nn.Linear)), name
    for name in model.binary_activation_swaps():
        assert name in names, name


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_shape_and_finite_gradients(arch, algo):
    model = build(arch, algo)
    bimodels.set_epoch(model, 0, 10)  # schedules running: FDA's noise branch is live
    model.train()
    info = bimodels.get_arch_info(arch)
    x = bimodels.example_input(model, batch_size=2)
    y = model(x)
    assert y.shape == (2, *info.output_shape)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    layers = bimodels.binary_layers(model)
    assert layers, "nothing was binarized"
    for layer in layers:
        assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
        for name, p in layer.binarizer.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{layer.algorithm}: {name}"
    assert any(l.weight.grad.abs().sum() > 0 for l in layers)


@pytest.mark.parametrize("algo", [None, *ALGOS])
@pytest.mark.parametrize("arch", ARCHS)
def test_onnx_round_trip(arch, algo):
    model = build(arch, algo).eval()
    x = bimodels.example_input(model, batch_size=2, seed=1)
    data = bimodels.export(model, "onnx", x)
    proto = onnx.load_from_string(data)
    assert proto.opset_import[0].version >= 13
    assert all(op.domain in ("", "ai.onnx") for op in proto.opset_import)  # standard ops only
    report = compare_onnx(model, data, x)
    assert report.exact(), report  # the numerics rule, atol 1e-4 + rtol 1e-5 * range
    assert report.argmax_agreement == 1.0 or report.first_flip_layer >= 0, report
    if algo is not None:  # every sign in the graph was compared with torch's
        assert report.sign_decisions > 0
