"""LCE export checked in LCE's own interpreter (larq-compute-engine 0.16, no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bimodels
from biagent.runtimes import get_runtime
from biformats.bits import pack_lce_bits
from bimodels.export.lce import export_lce, tflite_schema
from tests.helpers import assert_numerics

info = get_runtime("larq").describe()
pytestmark = pytest.mark.skipif(not info.installed, reason=f"larq runtime: {info.detail}")


def build(arch: str, algo: str, pad_value: float = 0.0):
    torch.manual_seed(0)
    return bimodels.binarize(
        bimodels.trained_like_norms(bimodels.create_model(arch)), algo, pad_value=pad_value
    ).eval()


def run_lce(data: bytes, tmp_path, xs: list[np.ndarray]) -> list[np.ndarray]:
    path = tmp_path / "m.tflite"
    path.write_bytes(data)
    model = get_runtime("larq")().load(path, threads=1)
    outs = []
    for x in xs:
        model.set_inputs([x])
        model.invoke()
        outs.append(model.get_outputs()[0])
    return outs


def op_names(data: bytes) -> list[str]:
    s = tflite_schema()
    m = s.ModelT.InitFromPackedBuf(data, 0)
    names = {
        i: (c.customCode.decode() if c.customCode else f"builtin{c.builtinCode}")
        for i, c in enumerate(m.operatorCodes)
    }
    return [names[o.opcodeIndex] for o in m.subgraphs[0].operators]


def test_bit_packing_matches_the_fact_sheet():
    signs = np.ones((1, 40))
    signs[0, [0, 33, 39]] = -1
    words = pack_lce_bits(signs)
    assert words.shape == (1, 2) and words[0, 0] == 1 and words[0, 1] == (1 << 1) | (1 << 7)


@pytest.mark.parametrize("arch", ["resnet20", "resnet18"])
@pytest.mark.parametrize("algo", bimodels.list_algorithms())
def test_lce_matches_torch(arch, algo, tmp_path):
    model = build(arch, algo)
    # Seed 2 makes LCE flip one sign on xnor-resnet18 (in the last binary layer, a decision at
    # 6e-8 of its range); torch reproduces it (test_an_lce_rounding_flip_is_explained_by_torch).
    xs = [bimodels.example_input(model, 1, seed=s) for s in (1, 2, 3)]
    report = export_lce(model, xs[0])
    data = report.data
    ops = op_names(data)
    assert ops.count("LceBconv2d") == len(bimodels.binary_layers(model)) == ops.count("LceQuantize")
    # LCE cannot show its sign inputs: every input matches, or torch reproduces its flip
    assert_numerics("larq", data, "lce", model, xs)
    extra = {e for layer in report.layers for e in layer.extra_ops}
    assert "ADD (zero-padding correction)" in extra  # resnets pad with zeros
    assert ("MUL (XNOR++ spatial Gamma)" in extra) == (algo == "xnorpp")
    assert ("ADD (ReActNet threshold)" in extra) == (algo == "reactnet")
    assert ("MUL (XNOR beta)" in extra) == (algo == "xnor")


def test_argmax_agrees_on_100_inputs(tmp_path):
    model = build("resnet20", "bireal")
    xs = [bimodels.example_input(model, 1, seed=s).numpy() for s in range(100)]
    outs = run_lce(bimodels.export(model, "lce", torch.from_numpy(xs[0])), tmp_path, xs)
    with torch.no_grad():
        refs = model(torch.from_numpy(np.concatenate(xs))).numpy()
    agree = np.mean([o.argmax() == r.argmax() for o, r in zip(outs, refs)])
    errors = [np.abs(o[0] - r).max() / np.abs(r).max() for o, r in zip(outs, refs)]
    assert agree == 1.0 and np.median(errors) < 1e-5


def test_plus_one_padding_is_native(tmp_path):
    model = build("resnet20", "dorefa", pad_value=1.0)
    x = bimodels.example_input(model, 1, seed=4)
    report = export_lce(model, x)
    data = report.data
    assert report.native and report.layers
    (out,) = run_lce(data, tmp_path, [x.numpy()])
    with torch.no_grad():
        assert np.abs(out - model(x).numpy()).max() <= 1e-5


@pytest.mark.parametrize("arch", ["dfsmn", "pointnet_vanilla", "pointnet", "pointnet_part_seg", "ssd_resnet"])
@pytest.mark.parametrize("algo", bimodels.list_algorithms())
def test_lce_runs_sequences_point_clouds_and_detection(arch, algo):
    """1-D models as images one row high, binary linears as 1 x 1 binary convs, the T-Nets'
    reshape/transpose/matmul, part segmentation's expand, SSD's permuted heads."""
    model = build(arch, algo)
    xs = [bimodels.example_input(model, 1, seed=s) for s in (1, 2)]
    report = export_lce(model, xs[0])
    ops = op_names(report.data)
    assert ops.count("LceBconv2d") == len(bimodels.binary_layers(model)) == ops.count("LceQuantize")
    assert_numerics("larq", report.data, "lce", model, xs)


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("stride", [1, 2])
def test_maps_smaller_than_the_kernel_are_padded_explicitly(size, stride, tmp_path):
    """LCE's own zero padding is wrong on a map smaller than the kernel (3 x 3 on 1 x 1 or 2 x 2:
    off by up to 24); the exporter pads and corrects there instead."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, stride=stride, padding=1, bias=False))
    model = bimodels.binarize(net, "bnn", fp_layers=[]).eval()
    x = torch.randn(1, 16, size, size)
    report = export_lce(model, x)
    (out,) = run_lce(report.data, tmp_path, [x.numpy()])
    with torch.no_grad():
        np.testing.assert_array_equal(out, model(x).numpy())
    corrected = any("zero-padding correction" in e for layer in report.layers for e in layer.extra_ops)
    assert corrected == (size < 3 or size % 2 == 0 and stride == 2)


@pytest.mark.parametrize(("arch", "words"), [("bert_tiny", "float32"), ("gelu", "no lowering for op 'gelu'")])
def test_what_lce_cannot_express_is_refused_clearly(arch, words):
    if arch == "gelu":
        model = bimodels.binarize(
            torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 2)), "bnn"
        ).eval()
        x = torch.randn(1, 8)
    else:
        model, x = build(arch, "bnn"), bimodels.example_input(arch)
    with pytest.raises(bimodels.ExportError, match=words):
        bimodels.export(model, "lce", x)


def test_an_lce_rounding_flip_is_explained_by_torch(tmp_path):
    """xnor-resnet18 on input seed 2: LCE takes one sign the other way. Torch in float64 with
    that one decision flipped reproduces LCE's output; nothing else does."""
    from biagent import numerics
    from bimodels.numerics import alternatives_on_demand, reference_cases

    model = build("resnet18", "xnor")
    x = bimodels.example_input(model, 1, seed=2)
    data = export_lce(model, x).data
    (out,) = run_lce(data, tmp_path, [x.numpy()])
    cases = reference_cases(model, [x])
    plain = numerics.judge(0, [out], cases[0], probe="larq cannot show them")
    assert not plain.ok and plain.error > 1e-4, plain  # the output does differ
    cases[0].alternatives = alternatives_on_demand(model, cases)(0)
    verdict = numerics.judge(0, [out], cases[0], probe="larq cannot show them")
    assert verdict.ok and "explained by a rounding flip" in verdict.reason, verdict.reason
    assert verdict.flip.margin < 1e-6 and verdict.flip.layer == len(cases[0].signs) - 1
