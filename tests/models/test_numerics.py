"""The ONNX reference on resnet18 (random weights, trained-looking BN statistics), and the
numerics report's ability to tell rounding from a real export bug."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import bimodels
from bimodels.numerics import compare_onnx
from tests.helpers import randomize_norms


def resnet18(algo: str, seed: int = 0):
    torch.manual_seed(seed)
    return bimodels.binarize(randomize_norms(bimodels.create_model("resnet18"), seed), algo).eval()


@pytest.mark.parametrize("algo", bimodels.list_algorithms())
def test_resnet18_onnx_matches_torch_eval(algo):
    model = resnet18(algo)
    x = bimodels.example_input(model, batch_size=2, seed=3)
    report = compare_onnx(model, bimodels.export(model, "onnx", x), x)
    assert report.sign_decisions > 0
    # 1e-4 absolute, unless a sign sat within float rounding of zero (then the report names
    # the first flipped layer and its margin, and later flips follow from it).
    assert report.max_abs_error <= 1e-4 or report.exact(), report
    assert report.argmax_agreement == 1.0 or report.sign_flips > 0, report


def _flip_one_binary_channel(data: bytes) -> bytes:
    proto = onnx.load_from_string(data)
    for init in proto.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.ndim == 4 and w.shape[1] >= 64 and np.unique(np.abs(w[0])).size == 1:  # a binary conv: +/-alpha
            w = w.copy()
            w[0] = -w[0]
            init.CopyFrom(numpy_helper.from_array(w, init.name))
            return proto.SerializeToString()
    raise AssertionError("no binary conv weight found")


def test_a_wrong_export_is_not_excused_as_rounding():
    model = resnet18("dorefa")
    x = bimodels.example_input(model, batch_size=1, seed=3)
    broken = _flip_one_binary_channel(bimodels.export(model, "onnx", x))
    report = compare_onnx(model, broken, x)
    assert not report.exact(), report
    assert report.first_flip_margin > 1e-3  # a real margin, not rounding


def test_report_serialises():
    model = bimodels.binarize(bimodels.create_model("resnet20"), "bnn").eval()
    x = bimodels.example_input(model)
    d = compare_onnx(model, bimodels.export(model, "onnx", x), x).as_dict()
    assert {"max_abs_error", "relative_error", "sign_flips", "first_flip_layer"} <= set(d)
