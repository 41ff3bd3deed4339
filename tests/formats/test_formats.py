"""biformats: one definition of each artifact format, read and written the same on both sides."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biformats import (
    FORMATS,
    Format,
    FormatError,
    UnknownFormat,
    bits,
    custom,
    dabnn,
    get_format,
    lce,
    register_format,
)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 5), k=st.integers(1, 200), seed=st.integers(0, 2**16))
def test_custom_bits_round_trip_with_zero_tails(rows, k, seed):
    neg = np.random.default_rng(seed).random((rows, k)) < 0.5
    words = bits.pack_rows(neg)
    assert words.shape == (rows, bits.n_words(k)) and words.dtype == np.dtype("<u8")
    np.testing.assert_array_equal(bits.unpack_signs(words, k), np.where(neg, -1, 1))
    tail = bits.unpack_signs(words, 64 * words.shape[1])[:, k:]
    assert (tail == 1).all()  # bits past K are 0 (+1): the popcount identity needs it
    signs = np.where(neg, -1.0, 1.0)
    packed, kk = bits.pack_sign_rows(signs)
    assert kk == k and np.array_equal(packed, words)
    np.testing.assert_array_equal(bits.unpack_sign_rows(packed, k), signs.astype(np.float32))


def test_custom_bit_order_is_lsb_first_and_bit_one_is_minus_one():
    signs = np.ones((1, 70))
    signs[0, [0, 65]] = -1
    words = bits.pack_rows(signs < 0)
    assert words.tolist() == [[1, 2]]


def test_lce_and_dabnn_layouts():
    c = np.ones((2, 40))
    c[0, 0] = c[0, 33] = c[1, 31] = -1
    lce_words = bits.pack_lce_bits(c)
    assert lce_words.dtype == np.dtype("<i4") and lce_words.shape == (2, 2)
    assert lce_words.tolist() == [[1, 2], [-(2**31), 0]]  # bit 31 of an int32 word is its sign
    signs = -np.ones((3, 9 * 64))  # 3x3x64: daBNN's unaligned layout, bit 1 = +1
    signs[0, 0] = 1
    flat, words = bits.pack_dabnn_filters(signs, aligned=False)
    assert words == 9 and flat.shape == (27,) and flat[0] == 1 and not flat[1:].any()
    assert bits.pack_dabnn_filters(signs[:, :100], aligned=True)[1] == 2  # 100 bits -> one 128-bit block


def test_format_registry_names_and_aliases():
    assert set(FORMATS) == {"onnx", "custom", "lce", "dabnn"}
    assert get_format("tflite").name == "lce" and get_format("dab").binary_pad_value == -1.0
    with pytest.raises(UnknownFormat, match="known formats: onnx"):
        get_format("caffe")
    with pytest.raises(ValueError, match="already registered"):
        register_format(Format("lce2", "x", aliases=("dab",)))


def test_custom_container_round_trip_is_deterministic():
    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(2, "<u8")}
    nodes = [{"op": "identity", "name": "n", "inputs": ["input"], "outputs": ["output"], "attrs": {}}]
    ins = [{"name": "input", "shape": [1, 3], "dtype": "float32"}]
    data = custom.write_artifact(ins, ["output"], nodes, tensors)
    assert data == custom.write_artifact(ins, ["output"], nodes, tensors)
    art = custom.read_artifact(data)
    assert art.doc["nodes"] == nodes and art.doc["version"] == custom.VERSION
    assert set(art.tensors) == {"w", "b"} and np.array_equal(art.tensors["w"], tensors["w"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a zip", "not a readable zip"),
        (custom.write_zip([("graph.json", b"{}")]), "no tensors.npz"),
        (custom.write_zip([("graph.json", b"\xff"), ("tensors.npz", b"")]), "not valid UTF-8 JSON"),
        (custom.write_zip([("graph.json", b'{"format": "x"}'), ("tensors.npz", b"")]), "format must be"),
        (
            custom.write_zip(
                [("graph.json", b'{"format": "bibench-custom", "version": 9}'), ("tensors.npz", b"")]
            ),
            "version 9",
        ),
        (
            custom.write_zip(
                [("graph.json", b'{"format": "bibench-custom", "version": 1}'), ("tensors.npz", b"x")]
            ),
            "tensors.npz is not a readable npz",
        ),
    ],
)
def test_custom_reader_names_what_is_wrong(data, message):
    with pytest.raises(FormatError, match=message):
        custom.read_artifact(data)


def _dab() -> bytes:
    layers = [
        dabnn.DabLayer(
            "FpConv2D",
            {
                "input": "input",
                "weight": "w",
                "bias": "b",
                "pads": [1, 1, 1, 1],
                "strides": [1, 1],
                "dilations": [1, 1],
                "output": "y",
            },
            name="conv",
        ),
        dabnn.DabLayer("Concat", {"inputs": ["y", "y"], "axis": 3, "output": "z"}),
    ]
    inits = [
        dabnn.DabTensor("w", [4, 3, 3, 4], float32_data=np.linspace(-1, 1, 144, dtype=np.float32)),
        dabnn.DabTensor("b", [4], float32_data=np.zeros(4, np.float32)),
        dabnn.DabTensor("bits", [2, 3, 3, 64], bin_data=np.array([1, 2**63], "<u8"), align_hwc_to_128=True),
    ]
    return dabnn.write_dab(layers, inits, "input", [1, 8, 8, 4])


def test_dab_round_trip_without_flatbuffers_on_the_reading_side():
    model = dabnn.read_dab(_dab())
    assert model["version"] == dabnn.VERSION and model["inputs"] == [{"name": "input", "shape": [1, 8, 8, 4]}]
    conv, concat = model["layers"]
    assert conv["type"] == "FpConv2D" and conv["name"] == "conv" and conv["param_slots"] == ["FpConv2D"]
    assert conv["params"]["pads"] == [1, 1, 1, 1] and conv["params"]["output"] == "y"
    assert concat["params"] == {"inputs": ["y", "y"], "axis": 3, "output": "z"}
    w, b, packed = model["initializers"]
    assert w["data_type"] == "Float32" and np.array_equal(
        w["float32_data"], np.linspace(-1, 1, 144, dtype=np.float32)
    )
    assert (
        packed["data_type"] == "Bit"
        and packed["bin_data"].tolist() == [1, 2**63]
        and packed["align_hwc_to_128"]
    )
    assert dabnn.inspect_dab(_dab()) == {
        "version": 2,
        "input": "input",
        "input_shape": [1, 8, 8, 4],
        "layer_types": ["FpConv2D", "Concat"],
        "output": "z",
    }


@pytest.mark.parametrize("cut", [0, 7, 40, 200, -1])
def test_a_damaged_dab_is_a_format_error(cut):
    data = _dab()
    bad = data[:cut] if cut >= 0 else bytes(b ^ 0x5A for b in data)
    with pytest.raises(FormatError, match="not a daBNN model"):
        dabnn.read_dab(bad)


def test_tflite_check_accepts_the_exporter_and_names_damage():
    torch = pytest.importorskip("torch")
    if importlib.util.find_spec("larq_compute_engine") is None:  # its __init__ wants TensorFlow
        pytest.skip("the LCE exporter needs the larq-compute-engine wheel's TFLite schema")
    import bimodels

    model = bimodels.binarize(bimodels.create_model("resnet20"), "reactnet").eval()
    data = bimodels.export(model, "lce", torch.zeros(1, 3, 32, 32))
    summary = lce.check_tflite(data)
    assert summary["custom_ops"] == ["LceBconv2d", "LceQuantize"] and summary["operators"] > 40
    with pytest.raises(FormatError, match="TFL3 missing"):
        lce.check_tflite(data[:4] + b"XXXX" + data[8:])
    with pytest.raises(FormatError, match="damaged TFLite flatbuffer"):
        lce.check_tflite(data[: len(data) // 2])
    rng = np.random.default_rng(0)
    refused = 0
    for _ in range(50):  # random damage: a FormatError or a file the check cannot tell apart
        bad = bytearray(data)
        for pos in rng.integers(8, 4096, 8):
            bad[pos] ^= int(rng.integers(1, 256))
        try:
            lce.check_tflite(bytes(bad))
        except FormatError:
            refused += 1
    assert refused > 10


def test_biformats_imports_neither_torch_nor_flatbuffers():
    code = (
        "import sys, biformats, biformats.bits, biformats.custom, biformats.dabnn, biformats.lce\n"
        "assert 'torch' not in sys.modules and 'flatbuffers' not in sys.modules, sorted(sys.modules)\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
