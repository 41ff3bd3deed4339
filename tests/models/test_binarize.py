"""`binarize()`: what is replaced, what is kept, and clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bimodels
from bimodels.layers import BinaryConv2d, BinaryLinear


def test_resnet18_replaces_block_convs_only():
    fp = bimodels.create_model("resnet18")
    model = bimodels.binarize(fp, "bireal")
    binary = {n for n, m in model.named_modules() if bimodels.is_binary(m)}
    assert len(binary) == 16  # 8 basic blocks x 2 convs
    assert all(n.endswith(("conv1", "conv2")) and n.startswith("layers.") for n in binary)
    assert not bimodels.is_binary(model.conv1) and not bimodels.is_binary(model.fc)
    assert not any(bimodels.is_binary(m) for n, m in model.named_modules() if "downsample" in n)
    # Every ReLU became Hardtanh; the input model is untouched (binarize copies).
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert not any(bimodels.is_binary(m) for m in fp.modules())


def test_replacement_keeps_path_weights_bias_and_records_algorithm():
    fp = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=True), nn.Flatten(), nn.Linear(8 * 4 * 4, 2))
    model = bimodels.binarize(fp, "reactnet", example_input=torch.randn(1, 3, 4, 4))
    conv, lin = model[0], model[2]
    assert isinstance(conv, BinaryConv2d) and isinstance(conv, nn.Conv2d)
    assert isinstance(lin, BinaryLinear)
    assert conv.algorithm == lin.algorithm == "reactnet"
    assert torch.equal(conv.weight, fp[0].weight) and torch.equal(conv.bias, fp[0].bias)
    assert conv.weight.shape == (8, 3, 3, 3)
    assert (conv.stride, conv.padding, conv.dilation, conv.groups) == (
        fp[0].stride,
        fp[0].padding,
        fp[0].dilation,
        fp[0].groups,
    )
    assert model.binarized_with == "reactnet"
    # The latent weights are what an optimiser trains: they are registered parameters.
    names = dict(model.named_parameters())
    assert "0.weight" in names and "0.bias" in names and "0.binarizer.threshold" in names


def test_fp_layers_override_per_name():
    model = bimodels.binarize(
        bimodels.create_model("resnet20"), "bnn", fp_layers=["conv1", "fc", "layers.0.0.conv1"]
    )
    assert not bimodels.is_binary(model.get_submodule("layers.0.0.conv1"))
    assert bimodels.is_binary(model.get_submodule("layers.1.0.downsample.0"))  # default no longer applies


def test_unknown_fp_layer_name_is_an_error():
    with pytest.raises(bimodels.BinarizationError, match="layers.9.conv"):
        bimodels.binarize(bimodels.create_model("resnet20"), "bnn", fp_layers=["layers.9.conv"])


def test_unknown_algorithm_lists_known_names():
    with pytest.raises(bimodels.UnknownNameError) as info:
        bimodels.binarize(bimodels.create_model("resnet20"), "xnorr")
    msg = str(info.value)
    assert "xnorr" in msg and all(a in msg for a in bimodels.list_algorithms())


def test_unknown_architecture_lists_known_names():
    with pytest.raises(bimodels.UnknownNameError) as info:
        bimodels.create_model("resnet19")
    assert all(a in str(info.value) for a in bimodels.list_architectures())


@pytest.mark.parametrize("pad_value", [1.0, -1.0])
def test_pad_value_is_the_value_of_padded_positions(pad_value):
    fp = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False))
    model = bimodels.binarize(fp, "bnn", pad_value=pad_value).eval()
    x = torch.randn(1, 2, 5, 5)
    sx = torch.where(x >= 0, 1.0, -1.0)
    sw = torch.where(fp[0].weight >= 0, 1.0, -1.0)
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(sx, [1, 1, 1, 1], value=pad_value), sw)
    with torch.no_grad():
        assert torch.equal(model(x), expected)
        assert torch.equal(bimodels.to_deploy(model)(x), expected)


def test_bad_pad_value_and_padding_mode_are_refused():
    with pytest.raises(bimodels.BinarizationError, match="pad_value"):
        bimodels.binarize(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1)), "bnn", pad_value=0.5)
    with pytest.raises(bimodels.BinarizationError, match="padding_mode"):
        bimodels.binarize(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect")), "bnn")


def test_xnorpp_needs_an_example_input_for_unknown_models():
    with pytest.raises(bimodels.BinarizationError, match="example_input"):
        bimodels.binarize(nn.Sequential(nn.Conv2d(2, 3, 3)), "xnorpp")


def test_xnorpp_gamma_is_sized_by_the_output_and_checks_it():
    model = bimodels.binarize(
        nn.Sequential(nn.Conv2d(2, 3, 3, stride=2)), "xnorpp", example_input=torch.randn(1, 2, 9, 9)
    )
    shapes = sorted(tuple(p.shape) for p in model[0].binarizer.parameters())
    assert shapes == [(1, 1, 4), (1, 3, 1, 1), (1, 4, 1)]  # v per column, o per channel, h per row
    with pytest.raises(ValueError, match="sized for outputs"):
        model(torch.randn(1, 2, 11, 11))


def test_binarizing_twice_is_refused():
    once = bimodels.binarize(bimodels.create_model("resnet20"), "dorefa")
    with pytest.raises(bimodels.BinarizationError, match="already binarized"):
        bimodels.binarize(once, "bnn")
