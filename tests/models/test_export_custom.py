"""The "custom" exporter against the torch reference, run by the numpy engine.

Layer level: the XNOR-popcount integer dot must equal torch's conv of +/-1 tensors exactly
(every padding mode, odd channel counts, strides, dilations, groups, conv1d and linear);
with the algorithms' scales the layer output must match to 1e-5. Network level: every CNN
(plus PointNet-vanilla and DFSMN), full precision and binarized with every algorithm,
must match the model's eval output to 1e-4 + 1e-5 * max|ref|.
"""

from __future__ import annotations

import io
import json
import re
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

import bimodels
from biagent.runtimes.base import InvokeError
from biagent.runtimes.custom import KernelSettings, load_artifact
from biformats.bits import pack_sign_rows
from bimodels import (
    ExportError,
    binarize,
    create_model,
    example_input,
    export,
    list_algorithms,
    trained_like_norms,
)
from bimodels.layers import DeployedBinaryLayer
from bimodels.ste import sign
from tests.helpers import TinyTransformer, assert_numerics, perturb_binarizers, randomize_norms

ALGORITHMS = list_algorithms()
# the kernels as the runtime would load them (BIAGENT_CUSTOM_KERNELS, BIAGENT_KERNEL_ISA)
KERNELS = KernelSettings.from_env()


def run_custom(model: nn.Module, x: torch.Tensor, run_x: torch.Tensor | None = None) -> np.ndarray:
    graph = load_artifact(export(model, "custom", x), KERNELS)
    (out,) = graph.run([(x if run_x is None else run_x).numpy()])
    return out


def assert_close(out: np.ndarray, ref: np.ndarray) -> None:
    err, scale = float(np.abs(out - ref).max()), float(np.abs(ref).max())
    assert err <= 1e-4 + 1e-5 * scale, f"max abs error {err:.3g} (output range {scale:.3g})"


# -- single layers: exact integer dot ---------------------------------------------------
CONV2D_CASES = [
    # cin, cout, kernel, stride, padding, dilation, groups, H, W
    (3, 8, 3, 1, 1, 1, 1, 9, 11),
    (37, 5, 3, 2, 1, 1, 1, 10, 7),
    (65, 16, 1, 1, 0, 1, 1, 6, 6),
    (65, 6, 7, 2, 3, 1, 1, 13, 12),
    (130, 12, 3, 1, 1, 2, 2, 9, 9),
    (64, 66, 3, 2, 0, 1, 2, 8, 9),
    (37, 9, 7, 1, 3, 2, 1, 15, 14),
    (6, 4, 2, 1, 1, 1, 2, 5, 5),
]


def _with_zeros(x: torch.Tensor) -> torch.Tensor:
    """sign(0) = +1: make sure some inputs are exactly zero."""
    x = x.clone()
    x.view(-1)[::17] = 0.0
    return x


def _reference_dot(layer: DeployedBinaryLayer, x: torch.Tensor) -> np.ndarray:
    """torch's conv of the +/-1 input (padded as the layer pads) with the +/-1 weights, in float64."""
    s, w = sign(x).double(), layer.form.weight_sign.double()
    if layer.kind == "linear":
        return torch.nn.functional.linear(s, w).numpy()
    conv = torch.nn.functional.conv1d if layer.kind == "conv1d" else torch.nn.functional.conv2d
    s = torch.nn.functional.pad(s, layer.pads, value=layer.pad_value)
    return conv(s, w, None, layer.stride, 0, layer.dilation, layer.groups).numpy()


def _exact_case(fp: nn.Module, pad_value: float, x: torch.Tensor) -> None:
    model = binarize(nn.Sequential(fp), "bnn", fp_layers=[], pad_value=pad_value)
    out = run_custom(model, x)
    ref = _reference_dot(bimodels.to_deploy(model)[0], x)
    assert np.array_equal(out, np.round(out)), "a bnn layer without bias must output integers"
    np.testing.assert_array_equal(out.astype(np.int64), ref.astype(np.int64))


@pytest.mark.parametrize("pad_value", [0.0, 1.0, -1.0])
@pytest.mark.parametrize("case", CONV2D_CASES, ids=lambda c: "c{}-o{}-k{}-s{}-p{}-d{}-g{}".format(*c[:7]))
def test_binary_conv2d_dot_is_exact(case, pad_value):
    cin, cout, k, stride, pad, dil, groups, h, w = case
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dil, groups=groups, bias=False)
    _exact_case(conv, pad_value, _with_zeros(torch.randn(2, cin, h, w)))


@pytest.mark.parametrize("pad_value", [0.0, 1.0, -1.0])
@pytest.mark.parametrize(
    "cin,cout,k,stride,pad,dil,groups",
    [(3, 7, 3, 1, 1, 1, 1), (65, 10, 5, 2, 2, 1, 1), (130, 8, 3, 1, 2, 2, 2), (64, 64, 1, 1, 0, 1, 1)],
)
def test_binary_conv1d_dot_is_exact(cin, cout, k, stride, pad, dil, groups, pad_value):
    conv = nn.Conv1d(cin, cout, k, stride=stride, padding=pad, dilation=dil, groups=groups, bias=False)
    _exact_case(conv, pad_value, _with_zeros(torch.randn(2, cin, 23)))


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_binary_conv_same_padding_is_exact():
    conv = nn.Conv2d(5, 4, (3, 4), padding="same", bias=False)  # asymmetric "same" padding
    _exact_case(conv, 0.0, _with_zeros(torch.randn(1, 5, 7, 8)))


@pytest.mark.parametrize("shape", [(3, 37), (2, 5, 130), (4, 64), (2, 3, 4, 65)], ids=str)
def test_binary_linear_dot_is_exact(shape):
    _exact_case(nn.Linear(shape[-1], 9, bias=False), 0.0, _with_zeros(torch.randn(shape)))


# -- single layers: every algorithm's scales ----------------------------------------------
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("kind", ["conv2d", "conv1d", "linear2d", "linear3d"])
def test_binary_layer_with_scales_matches_torch(algorithm, kind):
    torch.manual_seed(3)
    if kind == "conv2d":
        fp, x = nn.Conv2d(37, 20, 3, stride=2, padding=1, bias=True), torch.randn(2, 37, 11, 9)
    elif kind == "conv1d":
        fp, x = nn.Conv1d(65, 12, 3, padding=1, bias=True), torch.randn(2, 65, 17)
    elif kind == "linear2d":
        fp, x = nn.Linear(70, 11, bias=True), torch.randn(3, 70)
    else:
        fp, x = nn.Linear(70, 11, bias=True), torch.randn(2, 5, 70)
    model = perturb_binarizers(binarize(nn.Sequential(fp), algorithm, fp_layers=[], example_input=x)).eval()
    out = run_custom(model, x)
    with torch.no_grad():
        ref = model(x).numpy()
    assert out.shape == ref.shape
    err = np.abs(out - ref).max()
    assert err <= 1e-5 * max(1.0, np.abs(ref).max()), f"{algorithm}/{kind}: max error {err:.3g}"


# -- whole networks ------------------------------------------------------------------------
# Seeds whose weights put a pre-sign value within rounding of zero for our summation order
# (a legitimate flip, see bimodels.numerics), replaced as the comment below prescribes:
# resnet18/reactnet flipped once the stem conv moved to the direct AVX-512 kernel.
SEEDS = {("resnet18", "reactnet"): 1}


def _network(arch: str, algorithm: str | None) -> nn.Module:
    torch.manual_seed(SEEDS.get((arch, algorithm), 0))
    model = randomize_norms(create_model(arch))
    if algorithm is not None:
        model = perturb_binarizers(binarize(model, algorithm))
    return model.eval()


def _check_network(arch: str, algorithm: str | None, batch: int) -> None:
    model = _network(arch, algorithm)
    x = example_input(model, batch_size=batch)
    out = run_custom(model, x)  # the unfused reference engine
    with torch.no_grad():
        ref = model(x).numpy()
    assert out.shape == ref.shape
    assert_close(out, ref)
    assert_numerics(
        "custom", export(model, "custom", x), "custom", model, [x]
    )  # fused kernels, the agent's rule


# No rounding sign flip showed up with these seeds in the unfused comparison above (example_input seed 0, weights from
# torch.manual_seed(0)); were one to appear, change the seed here, never the tolerance.
@pytest.mark.parametrize("algorithm", [None] + ALGORITHMS, ids=lambda a: a or "fp")
@pytest.mark.parametrize("arch", ["resnet18", "resnet20", "vgg_small", "pointnet_vanilla", "dfsmn"])
def test_network_matches_torch(arch, algorithm):
    _check_network(arch, algorithm, batch=2)


@pytest.mark.parametrize("algorithm", [None] + ALGORITHMS, ids=lambda a: a or "fp")
def test_birealnet18_matches_torch(algorithm):
    _check_network("birealnet18", algorithm, batch=1)


# resnet34 and ReActNet take seconds per run in numpy: batch 1 and a few algorithms.
@pytest.mark.parametrize(
    "arch,algorithm",
    [
        ("resnet34", None),
        ("resnet34", "xnor"),
        ("resnet34", "reactnet"),
        ("reactnet", None),
        ("reactnet", "reactnet"),
        ("reactnet", "xnorpp"),
        ("reactnet", "dorefa"),
    ],
    ids=str,
)
def test_large_network_matches_torch(arch, algorithm):
    _check_network(arch, algorithm, batch=1)


@pytest.mark.parametrize("arch", ["resnet18", "resnet20", "birealnet18"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_fused_graph_gives_the_unfused_graphs_floats(arch, algorithm):
    """The engine's rewrites (conv epilogues, affine + clamp) change no bit of the output."""
    model = _network(arch, algorithm)
    x = example_input(model, batch_size=1).numpy()
    data = export(model, "custom", torch.from_numpy(x))
    fused, plain = load_artifact(data, KERNELS), load_artifact(data, KERNELS, fuse=False)
    assert len(fused.nodes) < len(plain.nodes)
    np.testing.assert_array_equal(fused.run([x])[0], plain.run([x])[0])


def test_any_batch_size_runs():
    model = _network("resnet20", "xnorpp")  # XNOR++'s spatial gain must not pin the batch
    data = export(model, "custom", example_input(model, batch_size=2))
    graph = load_artifact(data, KERNELS)
    for batch in (1, 3):
        x = example_input(model, batch_size=batch, seed=batch)
        (out,) = graph.run([x.numpy()])
        with torch.no_grad():
            assert_close(out, model(x).numpy())


# -- the artifact ------------------------------------------------------------------------
def test_artifact_layout_and_determinism():
    model = _network("resnet20", "reactnet")
    x = example_input(model, batch_size=2)
    data = export(model, "custom", x)
    assert data == export(model, "custom", x), "export must be deterministic"
    zf = zipfile.ZipFile(io.BytesIO(data))
    assert zf.namelist() == ["graph.json", "tensors.npz"]
    assert all(
        i.compress_type == zipfile.ZIP_STORED and i.date_time == (1980, 1, 1, 0, 0, 0) for i in zf.infolist()
    )
    doc = json.loads(zf.read("graph.json"))
    assert doc["format"] == "bibench-custom" and doc["version"] == 1
    assert doc["inputs"] == [{"name": "input", "shape": [2, 3, 32, 32], "dtype": "float32"}]
    assert doc["outputs"] == ["output"]
    tensors = np.load(io.BytesIO(zf.read("tensors.npz")))
    binary = [n for n in doc["nodes"] if n["op"] == "binary_conv"]
    assert len(binary) == 18
    deployed = [m for m in bimodels.to_deploy(model).modules() if isinstance(m, DeployedBinaryLayer)]
    for node, layer in zip(binary, deployed):
        bits = tensors[node["attrs"]["weight_bits"]]
        signs = layer.form.weight_sign.numpy()
        assert bits.dtype == np.dtype("<u8") and node["attrs"]["k"] == signs[0].size
        # The contract: bit i of row o (PyTorch flattening order) is word i // 64, bit i % 64; 1 = -1.
        flat = signs.reshape(len(signs), -1)
        o, i = len(flat) - 1, flat.shape[1] - 1
        assert bool((int(bits[o, i // 64]) >> (i % 64)) & 1) == (flat[o, i] < 0)
        np.testing.assert_array_equal(bits, pack_sign_rows(signs)[0])
        assert node["attrs"]["input_shift"] is not None and node["attrs"]["weight_scale"] is not None


# -- the registry's other architectures: tokens, T-Nets, part segmentation, detection ----------
@pytest.mark.parametrize("arch", ["bert_tiny", "pointnet", "pointnet_part_seg", "ssd_resnet"])
def test_every_architecture_exports_and_matches_torch_at_any_batch(arch):
    """Full precision, so every op's floats are compared (no sign decision can flip)."""
    torch.manual_seed(0)
    model = trained_like_norms(create_model(arch), 0).eval()
    x, run_x = example_input(model, 1, seed=1), example_input(model, 3, seed=2)
    graph = load_artifact(export(model, "custom", x), KERNELS)
    with torch.no_grad():
        for inp in (x, run_x):
            (out,) = graph.run([inp.numpy()])
            assert out.shape == tuple(model(inp).shape)
            assert_close(out, model(inp).numpy())


def test_bert_takes_int64_tokens_and_refuses_ids_outside_its_table():
    model = create_model("bert_tiny").eval()
    x = example_input(model, 1)
    graph = load_artifact(export(model, "custom", x), KERNELS)
    assert graph.inputs[0].dtype == "int64"
    ops = {n.op for n in graph.nodes}
    assert {"embedding", "constant", "layer_norm", "gelu", "softmax", "matmul", "select", "tanh"} <= ops
    with pytest.raises(InvokeError, match="must be int64, got float32"):
        graph.run([x.numpy().astype(np.float32)])
    bad = x.numpy().copy()
    bad[0, 5] = 30522
    with pytest.raises(InvokeError, match="token id 30522 is outside the embedding table's 30522 rows"):
        graph.run([bad])


def test_transformer_ops_export_and_match():
    torch.manual_seed(0)
    net = TinyTransformer().eval()
    x = torch.randint(0, 50, (1, 6))
    with torch.no_grad():
        for run_x in (x, torch.randint(0, 50, (3, 6))):
            assert_close(run_custom(net, x, run_x), net(run_x).numpy())


class _Wrap(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize(
    ("fn", "says"),
    [
        (lambda x: x.view(-1), "Tensor.view that moves or merges the batch axis"),
        (lambda x: x.transpose(0, 1), "Tensor.transpose that moves the batch axis"),
        (lambda x: torch.softmax(x, 0), "torch.softmax over the batch axis"),
        (lambda x: x[0], "indexing with 0"),
        (lambda x: torch.cat([x, torch.zeros_like(x)], 1), "torch.cat of a constant tensor"),
        (lambda x: x * x, "of two tensors"),
        (lambda x: torch.cumsum(x, 1), "cannot express torch.cumsum (node cumsum)"),
        (lambda x: torch.matmul(x, torch.ones(4, 3)), "of a rank-2 operand"),
    ],
)
def test_what_the_format_cannot_express_is_refused_naming_it(fn, says):
    with pytest.raises(ExportError, match=re.escape(says)):
        export(_Wrap(fn), "custom", torch.randn(2, 4))


def test_an_integer_input_needs_a_runtime_that_takes_tokens():
    with pytest.raises(
        ExportError,
        match="takes one float32 input tensor; the example input for BertClassifier is torch.int64",
    ):
        export(create_model("bert_tiny"), "lce", example_input("bert_tiny"))


def test_small_ops_export_and_match():
    """Flatten module, Dropout, pools with padding, max over a dim, amax, cat, mean, PReLU."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 6, 3, padding=1)
            self.pool = nn.MaxPool1d(2)
            self.avg = nn.AvgPool1d(3, stride=1, padding=1, count_include_pad=False)
            self.act = nn.PReLU()
            self.drop = nn.Dropout(0.5)
            self.flat = nn.Flatten()

        def forward(self, x):
            y = self.act(self.avg(self.drop(self.pool(self.conv(x)))))  # (N, 6, 5)
            z = torch.cat([y, torch.nn.functional.hardtanh(y, -0.5, 0.5)], dim=-2)  # (N, 12, 5)
            pooled = torch.max(z, 2)[0] + z.amax(dim=-1) + z.mean(-1)  # (N, 12)
            return torch.cat([pooled, self.flat(y)], dim=1)  # (N, 42)

    net = Net().eval()
    with torch.no_grad():
        net.act.weight.fill_(0.3)
    x = torch.randn(2, 4, 10)
    assert run_custom(net, x, torch.randn(3, 4, 10)).shape == (3, 42)
    with torch.no_grad():
        assert_close(run_custom(net, x), net(x).numpy())


class _OneBatchOnly(nn.Module):
    def forward(self, x):
        return x.view(1, 2, 2) + torch.ones(1, 2, 2)  # a batch size written into the model


def test_a_model_that_takes_one_batch_size_is_refused_with_the_reason():
    with pytest.raises(ExportError, match="does not run at batch size 2"):
        export(_OneBatchOnly(), "custom", torch.randn(1, 4))
