"""The "dabnn" exporter: daBNN's FlatBuffers .dab, read back field by field and run.

daBNN itself is not available here, so the writer is checked end to end in two ways: the
file is parsed back with `read_dab` (every field of every table), and a numpy interpreter of
daBNN's documented semantics (docs/dabnn-format.md: BinConv2D = number of mismatching bits with
x > 0 -> 1 and padding bit 0, in-place Affine/Relu/PRelu/Add, NHWC) runs the parsed file
against the torch model. Every refusal has a test with its message.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch import nn

from biformats.dabnn import LAYER_TYPES, PARAM_FIELDS, DabLayer, DabTensor, read_dab, write_dab
from bimodels import ExportError, binarize, create_model, export, list_formats
from tests.helpers import perturb_binarizers, randomize_norms


# -- a numpy interpreter of daBNN's semantics ------------------------------------------
def _pad(x: np.ndarray, p: int, value: float) -> np.ndarray:
    return np.pad(x, ((p, p), (p, p), (0, 0)), constant_values=value) if p else x


def _windows(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """(H, W, C) -> (OH, OW, k, k, C) windows at stride s."""
    win = sliding_window_view(x, (k, k), axis=(0, 1))[::s, ::s]  # (OH, OW, C, k, k)
    return win.transpose(0, 1, 3, 4, 2)


def run_dab(model: dict, x_nchw: np.ndarray) -> np.ndarray:
    """Run a parsed .dab on one NCHW input; returns the last layer's output (NCHW, or [1, C] for 1x1)."""
    assert model["version"] == 2
    inits = {t["name"]: t for t in model["initializers"]}
    assert len(inits) == len(model["initializers"]), "initializer names must be unique"
    for t in inits.values():
        if t["data_type"] == "Float32":
            assert len(t["shape"]) in (1, 4), f"{t['name']}: daBNN drops 2-D/3-D float tensors"
            assert t["float32_data"].size == int(np.prod(t["shape"]))
        else:
            assert len(t["shape"]) == 4 and t["float32_data"] is None

    def floats(name: str, ndim: int) -> np.ndarray:
        t = inits[name]
        assert t["data_type"] == "Float32" and len(t["shape"]) == ndim, name
        return t["float32_data"].reshape(t["shape"])

    (inp,) = model["inputs"]
    n, h, w, c = inp["shape"]
    assert n == 1 and x_nchw.shape == (1, c, h, w)
    blobs = {inp["name"]: np.ascontiguousarray(x_nchw[0].transpose(1, 2, 0), dtype=np.float32)}
    out_name = None
    for layer in model["layers"]:
        t, p = layer["type"], layer["params"]
        assert layer["param_slots"] == [t], layer
        assert t not in ("Softmax", "FC", "Binarize", "Split", "Shuffle"), f"daBNN cannot run {t}"
        if "pads" in p:
            assert len(p["pads"]) == 4 and p["pads"][0] == p["pads"][2] == p["pads"][1] == p["pads"][3]
            assert len(p["strides"]) == 2 and p["strides"][0] == p["strides"][1]
        if t == "FpConv2D":
            x = blobs[p["input"]]
            wt = floats(p["weight"], 4).astype(np.float64)  # OHWI
            b = floats(p["bias"], 1)
            assert p["dilations"] == [1, 1]
            win = _windows(_pad(x, p["pads"][0], 0.0).astype(np.float64), wt.shape[1], p["strides"][0])
            y = (np.tensordot(win, wt, axes=([2, 3, 4], [1, 2, 3])) + b).astype(np.float32)
        elif t == "BinConv2D":
            x = blobs[p["input"]]
            wi = inits[p["weight"]]
            assert wi["data_type"] == "Bit" and p["bias"] is None and p["dilations"] == [1, 1]
            o, kh, kw, cin = wi["shape"]
            kk = kh * kw * cin
            words = wi["bin_data"].size // o
            aligned = not (cin == 64 and kh == kw == 3)  # the fact sheet's safe rule
            assert words == (2 * -(-kk // 128) if aligned else kk // 64) and wi["align_hwc_to_128"] == aligned
            wbytes = wi["bin_data"].astype("<u8").reshape(o, words).view(np.uint8)
            wbits = np.unpackbits(wbytes, axis=1, bitorder="little")
            assert not wbits[:, kk:].any(), "weight pad bits must be 0"
            wbits = wbits[:, :kk].astype(np.float64)  # (O, K) in (kh, kw, c) order, 1 = +1
            xb = _pad((x > 0).astype(np.float64), p["pads"][0], 0.0)  # x > 0 -> 1; padding is bit 0 (-1)
            win = _windows(xb, kh, p["strides"][0])
            oh, ow = win.shape[:2]
            cols = win.reshape(oh * ow, kk)
            mism = cols.sum(1, keepdims=True) + wbits.sum(1)[None] - 2 * cols @ wbits.T
            y = mism.reshape(oh, ow, o).astype(np.float32)
        elif t in ("MaxPool", "AvePool"):
            x = blobs[p["input"]]
            k, s, pad = p["kernel_shape"][0], p["strides"][0], p["pads"][0]
            assert p["kernel_shape"][0] == p["kernel_shape"][1] > 0 and s > 0, "never the global form"
            if t == "MaxPool":
                y = _windows(_pad(x, pad, -np.inf), k, s).max(axis=(2, 3))
            else:
                ones = _windows(_pad(np.ones_like(x[..., :1]), pad, 0.0), k, s).sum(axis=(2, 3))
                y = (_windows(_pad(x.astype(np.float64), pad, 0.0), k, s).sum(axis=(2, 3)) / ones).astype(
                    np.float32
                )
        elif t == "Concat":
            assert len(p["inputs"]) == 2 and p["axis"] == 3
            a, b = (blobs[v] for v in p["inputs"])
            assert a.shape == b.shape
            y = np.concatenate([a, b], axis=-1)
        elif t == "Affine":  # in place
            y = blobs[p["input"]]
            y *= floats(p["a"], 1)
            y += floats(p["b"], 1)
        elif t == "Relu":
            y = blobs[p["input"]]
            np.maximum(y, 0, out=y)
        elif t == "PRelu":
            y = blobs[p["input"]]
            slope = floats(p["slope"], 1)
            assert slope.size in (1, y.shape[-1])
            np.copyto(y, np.where(y > 0, y, slope * y))
        elif t == "Add":
            y = blobs[p["input1"]]
            b = blobs[p["input2"]]
            assert y.shape == b.shape
            y += b
        else:
            raise AssertionError(f"unexpected layer {t}")
        out_name = p["output"]
        assert out_name not in inits
        blobs[out_name] = y
    y = blobs[out_name]
    return y.reshape(1, -1) if y.shape[:2] == (1, 1) else y.transpose(2, 0, 1)[None]


def assert_close(out: np.ndarray, ref: np.ndarray) -> None:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    err, scale = float(np.abs(out - ref).max()), float(np.abs(ref).max())
    assert err <= 1e-4 * max(scale, 1.0), f"max abs error {err:.3g} (output range {scale:.3g})"


def no_zeros(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    return torch.where(x == 0, torch.full_like(x, 0.5), x)


def perturb(model: nn.Module, seed: int = 1) -> nn.Module:
    """Trained-looking algorithm parameters and biases, plus PReLU slopes inside daBNN's range."""
    perturb_binarizers(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.PReLU):
                m.weight.uniform_(0.05, 0.5, generator=g)
    return model


def check_numerics(model: nn.Module, x: torch.Tensor) -> dict:
    model.eval()
    data = export(model, "dabnn", x)
    parsed = read_dab(data)
    with torch.no_grad():
        ref = model(x).numpy()
    assert_close(run_dab(parsed, x.numpy()), ref)
    return parsed


# -- test networks ---------------------------------------------------------------------
class SmallNet(nn.Module):
    """stem -> BN -> PReLU -> bconv -> BN -> PReLU -> maxpool -> bconv -> BN (+ shortcut) ->
    1x1 bconv with bias, no BN -> concat -> avgpool -> BN -> ReLU -> global mean -> linear."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=True)
        self.bn0, self.act0 = nn.BatchNorm2d(16), nn.PReLU(16)
        self.conv1 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn1, self.act1 = nn.BatchNorm2d(32), nn.PReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 32, 1, bias=True)
        self.avg = nn.AvgPool2d(2)
        self.bn3 = nn.BatchNorm2d(64)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.bn0(self.stem(x)))
        x = self.pool(self.act1(self.bn1(self.conv1(x))))
        y = self.bn2(self.conv2(x)) + x
        c = self.avg(torch.cat([y, self.conv3(y)], 1))
        c = torch.relu(self.bn3(c))
        return self.fc(self.gap(c).flatten(1))

    def full_precision_layers(self) -> list[str]:
        return ["stem", "fc"]


class FlatNet(nn.Module):
    """A binary conv read twice (so its BN is a separate in-place Affine, scheduled after the
    other reader although the forward calls it first), and a linear on a flattened 4x4 map."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn0, self.act0 = nn.BatchNorm2d(8), nn.PReLU(8)
        self.conv1 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.mp1, self.mp2 = nn.MaxPool2d(2), nn.MaxPool2d(2)
        self.fc = nn.Linear(32 * 4 * 4, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.bn0(self.stem(x)))
        v = self.conv1(x)
        y = self.bn1(v)  # in place on v in daBNN: must run after mp1 reads v
        p = self.mp1(v)
        return self.fc(torch.cat([self.mp2(y), p], 1).flatten(1))

    def full_precision_layers(self) -> list[str]:
        return ["stem", "fc"]


class ChainNet(nn.Module):
    """No shortcut around the binary conv: ReActNet's threshold is a safe in-place Affine."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn0, self.act0 = nn.BatchNorm2d(16), nn.PReLU(16)
        self.conv1 = nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False)
        self.bn1, self.act1 = nn.BatchNorm2d(16), nn.PReLU(16)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.bn0(self.stem(x)))
        x = self.act1(self.bn1(self.conv1(x)))
        return self.fc(torch.flatten(self.gap(x), 1))

    def full_precision_layers(self) -> list[str]:
        return ["stem", "fc"]


def binarized(model: nn.Module, algo: str = "bireal", pad_value: float = -1, **kw) -> nn.Module:
    return perturb(
        randomize_norms(binarize(model, algo, pad_value=pad_value, example_input=kw.pop("x", None), **kw))
    ).eval()


# -- the writer, field by field ----------------------------------------------------------
def test_registered():
    assert "dabnn" in list_formats()


def test_write_read_every_field():
    layers = [
        DabLayer(
            "FpConv2D",
            {
                "input": "in",
                "weight": "w",
                "bias": "b",
                "pads": [1, 1, 1, 1],
                "strides": [2, 2],
                "dilations": [1, 1],
                "output": "c0",
            },
            "conv",
        ),
        DabLayer(
            "BinConv2D",
            {
                "input": "c0",
                "weight": "bw",
                "pads": [0, 0, 0, 0],
                "strides": [1, 1],
                "dilations": [1, 1],
                "output": "c1",
            },
        ),
        DabLayer("Affine", {"input": "c1", "a": "a", "b": "b", "output": "c2"}),
        DabLayer("Relu", {"input": "c2", "output": "c3"}),
        DabLayer("PRelu", {"input": "c3", "slope": "a", "output": "c4"}),
        DabLayer("Add", {"input1": "c4", "input2": "c0", "output": "c5"}),
        DabLayer("Concat", {"inputs": ["c5", "c0"], "axis": 3, "output": "c6"}),
        DabLayer(
            "MaxPool",
            {"input": "c6", "kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2], "output": "c7"},
        ),
        DabLayer(
            "AvePool",
            {"input": "c7", "kernel_shape": [4, 4], "pads": [0, 0, 0, 0], "strides": [1, 1], "output": "c8"},
        ),
    ]
    w = np.arange(4 * 3 * 3 * 4, dtype=np.float32)
    bits = np.array([0, 1, 2**63, 2**64 - 1, 12345678901234567890, 7, 8, 9], dtype=np.uint64)
    inits = [
        DabTensor("w", [4, 3, 3, 4], float32_data=w),
        DabTensor("b", [4], float32_data=np.array([0, -1.5, 2, 3], np.float32)),
        DabTensor("bw", [4, 1, 1, 4], bin_data=bits, align_hwc_to_128=True),
        DabTensor("a", [4], float32_data=np.ones(4, np.float32)),
    ]
    data = write_dab(layers, inits, "in", [1, 8, 8, 4])
    assert data[4:8] != b"DABN"  # no file identifier: the root offset is followed by the vtable data
    got = read_dab(data)
    assert got["version"] == 2
    assert got["inputs"] == [{"name": "in", "shape": [1, 8, 8, 4]}]
    assert [l["type"] for l in got["layers"]] == [l.type for l in layers]
    for want, l in zip(layers, got["layers"]):
        assert l["param_slots"] == [want.type] and l["name"] == want.name
        fields = {f for f, _ in PARAM_FIELDS[want.type]}
        assert l["params"] == {f: want.params.get(f) for f in fields}
    t = {x["name"]: x for x in got["initializers"]}
    assert [x["name"] for x in got["initializers"]] == ["w", "b", "bw", "a"]
    assert t["w"]["data_type"] == "Float32" and t["w"]["shape"] == [4, 3, 3, 4] and t["w"]["bin_data"] is None
    np.testing.assert_array_equal(t["w"]["float32_data"], w)
    np.testing.assert_array_equal(t["b"]["float32_data"], [0, -1.5, 2, 3])
    assert (
        t["bw"]["data_type"] == "Bit"
        and t["bw"]["float32_data"] is None
        and t["bw"]["align_hwc_to_128"] is True
    )
    np.testing.assert_array_equal(t["bw"]["bin_data"], bits)
    assert t["w"]["align_hwc_to_128"] is False
    assert LAYER_TYPES["BinConv2D"] == 8 and LAYER_TYPES["PRelu"] == 13


def test_read_rejects_garbage():
    with pytest.raises(ValueError):
        read_dab(b"\x00" * 4)
    with pytest.raises(ValueError):
        read_dab(b"\xff\xff\xff\x7f" + b"\x00" * 60)


def test_small_net_lowering_and_numerics():
    model = binarized(SmallNet())
    x = no_zeros(1, 3, 16, 16)
    parsed = check_numerics(model, x)
    types = [l["type"] for l in parsed["layers"]]
    # each BinConv2D is followed by two Affines: the exact integer dot K - 2m, then scale and shift
    assert types == [
        "FpConv2D",
        "Affine",
        "PRelu",
        "BinConv2D",
        "Affine",
        "Affine",
        "PRelu",
        "MaxPool",
        "BinConv2D",
        "Affine",
        "Affine",
        "Add",
        "BinConv2D",
        "Affine",
        "Affine",
        "Concat",
        "AvePool",
        "Affine",
        "Relu",
        "AvePool",
        "FpConv2D",
    ]
    layers = parsed["layers"]
    inits = {t["name"]: t for t in parsed["initializers"]}
    assert parsed["inputs"] == [{"name": "input", "shape": [1, 16, 16, 3]}]
    # the binary conv: pads -1 exact, OHWI bit weights, the Affine right after it
    bconv = layers[3]["params"]
    assert bconv["input"] == layers[2]["params"]["output"] and bconv["pads"] == [1, 1, 1, 1]
    assert layers[4]["params"]["input"] == bconv["output"]
    assert inits[bconv["weight"]]["shape"] == [32, 3, 3, 16]
    # the shortcut add overwrites the new branch and reads the shortcut
    add = layers[11]["params"]
    assert add["input1"] == layers[10]["params"]["output"] and add["input2"] == layers[7]["params"]["output"]
    # global pooling is an explicit 4x4 AvePool, the classifier a 1x1 FpConv
    assert layers[19]["params"]["kernel_shape"] == [4, 4] and layers[19]["params"]["strides"] == [1, 1]
    fc = layers[20]["params"]
    assert inits[fc["weight"]]["shape"] == [10, 1, 1, 64] and inits[fc["bias"]]["shape"] == [10]


def test_bit_packing_order_and_layout():
    """Bits are (kh, kw, c), 1 = +1, LSB first; unaligned only for Cin 64 with a 3x3 kernel."""
    torch.manual_seed(3)
    for cin, k, aligned in ((64, 3, False), (64, 1, True), (16, 3, True), (130, 3, True), (256, 1, True)):
        conv = nn.Sequential(nn.Conv2d(cin, 8, k, padding=k // 2, bias=False), nn.BatchNorm2d(8))
        model = binarize(conv, "bnn", fp_layers=[], pad_value=-1).eval()
        parsed = read_dab(export(model, "dabnn", no_zeros(1, cin, 4, 4)))
        (w,) = [t for t in parsed["initializers"] if t["data_type"] == "Bit"]
        kk = cin * k * k
        words = 2 * -(-kk // 128) if aligned else kk // 64
        assert (
            w["shape"] == [8, k, k, cin]
            and w["align_hwc_to_128"] == aligned
            and w["bin_data"].size == 8 * words
        )
        bits = np.unpackbits(
            w["bin_data"].astype("<u8").reshape(8, words).view(np.uint8), axis=1, bitorder="little"
        )
        expect = (model[0].weight.detach() > 0).numpy().transpose(0, 2, 3, 1).reshape(8, kk)
        np.testing.assert_array_equal(bits[:, :kk], expect)
        assert not bits[:, kk:].any()


def test_flattened_map_linear_and_rescheduled_in_place_affine():
    model = binarized(FlatNet(), "dorefa")
    parsed = check_numerics(model, no_zeros(1, 3, 16, 16, seed=2))
    types = [l["type"] for l in parsed["layers"]]
    # BinConv, its popcount Affine, then the max pool that reads v BEFORE bn1's in-place Affine
    i = types.index("BinConv2D")
    assert types[i : i + 5] == ["BinConv2D", "Affine", "Affine", "MaxPool", "Affine"]
    fc = parsed["layers"][-1]["params"]
    w = {t["name"]: t for t in parsed["initializers"]}[fc["weight"]]
    assert w["shape"] == [7, 4, 4, 32] and fc["pads"] == [0, 0, 0, 0]


def test_reactnet_threshold_is_an_affine_when_safe():
    model = binarized(ChainNet(), "reactnet")
    parsed = check_numerics(model, no_zeros(1, 3, 8, 8, seed=4))
    types = [l["type"] for l in parsed["layers"]]
    assert types[3:6] == ["Affine", "BinConv2D", "Affine"]
    shift = parsed["layers"][3]["params"]
    inits = {t["name"]: t for t in parsed["initializers"]}
    np.testing.assert_array_equal(inits[shift["a"]]["float32_data"], np.ones(16, np.float32))
    assert np.abs(inits[shift["b"]]["float32_data"]).max() > 0


@pytest.mark.parametrize("algo", ["bnn", "bireal", "recu"])
def test_reactnet_architecture_exports_and_matches(algo):
    model = binarized(create_model("reactnet", num_classes=16), algo)
    check_numerics(model, no_zeros(1, 3, 32, 32, seed=5))


# -- refusals ----------------------------------------------------------------------------
def refused(model: nn.Module, x: torch.Tensor) -> str:
    with pytest.raises(ExportError) as info:
        export(model.eval(), "dabnn", x)
    return str(info.value)


def test_refuses_zero_and_plus_one_padding():
    msg = refused(binarized(SmallNet(), pad_value=0), no_zeros(1, 3, 16, 16))
    assert (
        "zero padding" in msg
        and "pad_value=-1" in msg
        and "bimodels.binarize(model, algo, pad_value=-1)" in msg
    )
    msg = refused(binarized(SmallNet(), pad_value=1), no_zeros(1, 3, 16, 16))
    assert "+1 padding" in msg and "pad_value=-1" in msg


def test_unpadded_binary_conv_takes_any_pad_value():
    conv = nn.Sequential(nn.Conv2d(16, 8, 3, padding=0, bias=False), nn.BatchNorm2d(8))
    for pad_value in (0, 1):
        model = perturb(randomize_norms(binarize(conv, "bireal", fp_layers=[], pad_value=pad_value))).eval()
        check_numerics(model, no_zeros(1, 16, 6, 6))


def test_refuses_batch_two():
    msg = refused(binarized(SmallNet()), no_zeros(2, 3, 16, 16))
    assert "batch 1" in msg and "batch 2" in msg


def test_refuses_non_square():
    msg = refused(binarized(SmallNet()), no_zeros(1, 3, 16, 12))
    assert "square" in msg and "16x12" in msg
    conv = nn.Sequential(nn.Conv2d(4, 8, (3, 1), padding=(1, 0), bias=False), nn.BatchNorm2d(8))
    msg = refused(binarize(conv, "bnn", fp_layers=[], pad_value=-1), no_zeros(1, 4, 8, 8))
    assert "non-square kernel [3, 1]" in msg
    conv = nn.Sequential(nn.Conv2d(4, 8, 3, stride=(1, 2), padding=1, bias=False), nn.BatchNorm2d(8))
    msg = refused(binarize(conv, "bnn", fp_layers=[], pad_value=-1), no_zeros(1, 4, 8, 8))
    assert "non-square stride [1, 2]" in msg


class Clip(nn.Module):
    def __init__(self, shortcut: bool):
        super().__init__()
        self.shortcut = shortcut
        self.stem, self.bn0, self.act = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Hardtanh()
        self.conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)

    def forward(self, x):
        h = self.act(self.bn0(self.stem(x)))
        y = self.bn(self.conv(h))
        return y + h if self.shortcut else y


def test_hardtanh_read_by_full_precision_ops_is_an_affine_relu_chain():
    """clip(x) = hi - relu((hi - lo) - relu(x - lo)): five in-place layers, no copy of x."""
    from bimodels.export.dabnn import export_dabnn

    model = perturb(
        randomize_norms(binarize(Clip(shortcut=True), "bnn", fp_layers=["stem"], pad_value=-1))
    ).eval()
    x = no_zeros(1, 3, 8, 8) * 3  # well outside [-1, 1]: both sides of the clip are exercised
    parsed = check_numerics(model, x)
    types = [l["type"] for l in parsed["layers"]]
    assert types[2:7] == ["Affine", "Relu", "Affine", "Relu", "Affine"]  # after the stem and bn0
    extra = export_dabnn(model, x).extra_ops
    assert extra == {"Hardtanh as Affine/Relu/Affine/Relu/Affine": 1}


def test_hardtanh_read_only_by_binary_convs_is_dropped():
    model = perturb(
        randomize_norms(binarize(Clip(shortcut=False), "bireal", fp_layers=["stem"], pad_value=-1))
    ).eval()
    parsed = check_numerics(model, no_zeros(1, 3, 8, 8))
    assert [l["type"] for l in parsed["layers"]] == ["FpConv2D", "Affine", "BinConv2D", "Affine", "Affine"]


@pytest.mark.parametrize("arch", ["resnet18", "vgg_small"])
def test_binarized_resnet18_and_vgg_small_export_with_their_hardtanh_lowered(arch):
    model = perturb(
        randomize_norms(binarize(create_model(arch, num_classes=10), "bireal", pad_value=-1))
    ).eval()
    check_numerics(model, no_zeros(1, 3, 32, 32))


def test_refuses_xnor_beta():
    msg = refused(binarized(SmallNet(), "xnor"), no_zeros(1, 3, 16, 16))
    assert "input_scale='mean_abs'" in msg and "XNOR-Net" in msg and "algorithm xnor" in msg


def test_refuses_xnorpp_spatial_gamma():
    msg = refused(binarized(SmallNet(), "xnorpp", x=no_zeros(1, 3, 16, 16)), no_zeros(1, 3, 16, 16))
    assert "output_gain of shape [1, 16, 16]" in msg and "Gamma" in msg and "algorithm xnorpp" in msg


def test_refuses_reactnet_shift_shared_with_a_shortcut():
    msg = refused(binarized(create_model("reactnet", num_classes=16), "reactnet"), no_zeros(1, 3, 32, 32))
    assert "input_shift of algorithm reactnet" in msg and "in-place" in msg and "also read" in msg


def test_refuses_in_place_hazard():
    class Hazard(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x):
            v = self.stem(x)
            return torch.cat([self.bn(v), v], 1)  # the concat reads v after bn overwrote it

    msg = refused(Hazard(), no_zeros(1, 3, 8, 8))
    assert "in-place Affine (node bn)" in msg and "cat" in msg and "no copy op" in msg


def test_refuses_in_place_on_the_input():
    class First(nn.Module):
        def forward(self, x):
            return torch.relu(x)

    msg = refused(First(), no_zeros(1, 4, 8, 8))
    assert "in-place Relu" in msg and "model's input" in msg


def test_refuses_binary_conv_after_relu():
    class ReluNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.conv = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            return self.conv(torch.relu(self.stem(x)))

    msg = refused(binarize(ReluNet(), "bnn", fp_layers=["stem"], pad_value=-1), no_zeros(1, 3, 8, 8))
    assert "reading the output of ReLU" in msg and "x > 0" in msg


def test_refuses_conv1d_models():
    msg = refused(binarize(create_model("dfsmn"), "bireal", pad_value=-1), no_zeros(1, 40, 98))
    assert "[1, C, H, W]" in msg
