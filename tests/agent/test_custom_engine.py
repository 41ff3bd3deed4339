"""The custom runtime's numpy engine, without torch: kernels, validation, the Runtime API."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from biagent.runtimes import InvokeError, ModelLoadError, get_runtime
from biagent.runtimes.custom import CustomRuntime, KernelSettings, load_artifact, ops
from biagent.runtimes.custom.ops import binary, xnor

# the kernels as the runtime would load them (BIAGENT_CUSTOM_KERNELS, BIAGENT_KERNEL_ISA)
KERNELS = KernelSettings.from_env()


def test_agent_custom_runtime_does_not_import_torch():
    code = "import biagent.runtimes.custom, biagent.runtimes.custom.engine, sys; assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# -- bits and popcount ----------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 7, 63, 64, 65, 130, 64 * 31, 64 * 31 + 1, 64 * 70 + 5])
def test_xnor_popcount_dot_equals_the_signed_dot(k):
    rng = np.random.default_rng(k)
    a = rng.choice(np.array([-1, 1], np.int8), size=(37, k))
    w = rng.choice(np.array([-1, 1], np.int8), size=(11, k))
    pa, pw = ops.pack_rows(a < 0), ops.pack_rows(w < 0)
    assert pa.shape == (37, ops.n_words(k)) and pa.dtype == np.dtype("<u8")
    np.testing.assert_array_equal(ops.unpack_signs(pw, k), w)
    dot = ops.xnor_popcount_dot(pa, np.ascontiguousarray(pw.T), k)
    np.testing.assert_array_equal(dot, a.astype(np.int64) @ w.T.astype(np.int64))
    lut = ops.popcount_lut8(pa[:, None, :] ^ pw[None, :, :]).sum(-1)
    np.testing.assert_array_equal(dot, k - 2 * lut)


def test_packing_is_lsb_first_with_zero_tail():
    neg = np.zeros((1, 70), bool)
    neg[0, [0, 5, 64, 69]] = True
    words = ops.pack_rows(neg)
    assert words.tolist() == [[(1 << 0) | (1 << 5), (1 << 0) | (1 << 5)]]


# -- artifacts built by hand ----------------------------------------------------------------
def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _artifact(doc: dict, tensors: dict[str, np.ndarray]) -> bytes:
    npz = io.BytesIO()
    np.savez(npz, **tensors)
    return _zip({"graph.json": json.dumps(doc).encode(), "tensors.npz": npz.getvalue()})


def _binary_graph(pad_value: int = 0, seed: int = 0):
    """input (N, 5, 6, 7) -> binary conv 3x3 (pad 1, stride 1) -> relu -> flatten -> linear."""
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0], np.float32), size=(4, 5, 3, 3))
    t = {
        "bc.weight_bits": ops.pack_rows(signs.reshape(4, -1) < 0),
        "bc.weight_scale": rng.uniform(0.5, 1.5, 4).astype(np.float32),
        "bc.input_shift": rng.normal(0, 0.2, 5).astype(np.float32),
        "bc.bias": rng.normal(0, 1, 4).astype(np.float32),
        "fc.weight": rng.normal(0, 0.1, (3, 4 * 6 * 7)).astype(np.float32),
    }
    doc = {
        "format": "bibench-custom",
        "version": 1,
        "inputs": [{"name": "input", "shape": [2, 5, 6, 7], "dtype": "float32"}],
        "outputs": ["output"],
        "nodes": [
            {
                "op": "binary_conv",
                "name": "bc",
                "inputs": ["input"],
                "outputs": ["bc"],
                "attrs": {
                    "kind": "conv2d",
                    "weight_bits": "bc.weight_bits",
                    "weight_shape": [4, 5, 3, 3],
                    "k": 45,
                    "stride": [1, 1],
                    "dilation": [1, 1],
                    "pads": [[1, 1], [1, 1]],
                    "groups": 1,
                    "pad_value": pad_value,
                    "input_shift": "bc.input_shift",
                    "input_scale": None,
                    "weight_scale": "bc.weight_scale",
                    "channel_scale": None,
                    "output_gain": None,
                    "bias": "bc.bias",
                },
            },
            {"op": "relu", "name": "act", "inputs": ["bc"], "outputs": ["act"], "attrs": {}},
            {
                "op": "flatten",
                "name": "flat",
                "inputs": ["act"],
                "outputs": ["flat"],
                "attrs": {"start": 1, "end": 3},
            },
            {
                "op": "linear",
                "name": "fc",
                "inputs": ["flat"],
                "outputs": ["output"],
                "attrs": {"weight": "fc.weight", "bias": None},
            },
        ],
    }
    return doc, t, signs


def _reference_binary_conv(x, signs, t, pad_value):
    """Direct +/-1 convolution in int64: sum over taps of shifted inputs times weights."""
    s = np.where(x + t["bc.input_shift"].reshape(1, -1, 1, 1) >= 0, 1, -1).astype(np.int64)
    s = np.pad(s, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=pad_value)
    n, _, h, w = x.shape
    dot = np.zeros((n, 4, h, w), np.int64)
    for i in range(3):
        for j in range(3):
            dot += np.einsum(
                "nchw,oc->nohw", s[:, :, i : i + h, j : j + w], signs[:, :, i, j].astype(np.int64)
            )
    return dot


@pytest.mark.parametrize("tiny_chunks", [False, True])
@pytest.mark.parametrize("pad_value", [0, 1, -1])
def test_binary_conv_matches_a_direct_reference(pad_value, tiny_chunks, monkeypatch):
    if tiny_chunks:  # every row block and popcount block boundary gets exercised
        monkeypatch.setattr(binary, "CHUNK_BYTES", 100)
        monkeypatch.setattr(xnor, "POP_CHUNK_ELEMS", 3)
    doc, t, signs = _binary_graph(pad_value)
    doc["outputs"] = ["bc"]
    graph = load_artifact(_artifact(doc, t), KERNELS)
    x = np.random.default_rng(1).normal(size=(3, 5, 6, 7)).astype(np.float32)  # batch 3, declared 2
    x[0, 0, 0, :] = -t["bc.input_shift"][0]  # x + shift == 0 exactly: sign is +1
    (out,) = graph.run([x])
    dot = _reference_binary_conv(x, signs, t, pad_value)
    expected = dot.astype(np.float32) * t["bc.weight_scale"].reshape(1, -1, 1, 1) + t["bc.bias"].reshape(
        1, -1, 1, 1
    )
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-5)


# -- corrupt artifacts -------------------------------------------------------------------------
def _mutated(mutate) -> bytes:
    doc, t, _ = _binary_graph()
    result = mutate(doc, t)
    return result if isinstance(result, bytes) else _artifact(doc, t)


def _set(d: dict, key: str, value) -> None:
    d[key] = value


CORRUPTIONS = {
    "random bytes": (
        lambda d, t: bytes(random.Random(0).randrange(256) for _ in range(4000)),
        "not a readable zip",
    ),
    "empty": (lambda d, t: b"", "not a readable zip"),
    "truncated zip": (lambda d, t: _artifact(d, t)[: len(_artifact(d, t)) // 2], "not a readable zip"),
    # A cut end of central directory can make zipfile read the stored inner tensors.npz instead.
    "tail cut": (lambda d, t: _artifact(d, t)[:-30], "not a readable zip|has no graph.json"),
    "no graph.json": (lambda d, t: _zip({"tensors.npz": b""}), "no graph.json"),
    "bad json": (lambda d, t: _zip({"graph.json": b"{nope", "tensors.npz": b""}), "not valid UTF-8 JSON"),
    "bad npz": (
        lambda d, t: _zip({"graph.json": json.dumps(d).encode(), "tensors.npz": b"garbage"}),
        "tensors.npz is not a readable",
    ),
    "wrong format": (lambda d, t: _set(d, "format", "onnx"), "format must be 'bibench-custom'"),
    "wrong version": (lambda d, t: _set(d, "version", 2), "unsupported custom format version 2"),
    "unknown op": (lambda d, t: _set(d["nodes"][1], "op", "rotate"), "node act: unknown op 'rotate'"),
    "missing tensor": (
        lambda d, t: t.pop("bc.weight_scale"),
        r"node bc \(binary_conv\): tensor 'bc.weight_scale' \(attr 'weight_scale'\) is missing",
    ),
    "wrong dtype": (
        lambda d, t: _set(t, "fc.weight", t["fc.weight"].astype(np.float64)),
        "tensor 'fc.weight' must be float32",
    ),
    "bits shape": (
        lambda d, t: _set(t, "bc.weight_bits", np.zeros((4, 2), np.uint64)),
        r"tensor 'bc.weight_bits' must have shape \(4, 1\), got \(4, 2\)",
    ),
    "tail bits": (
        lambda d, t: _set(t, "bc.weight_bits", t["bc.weight_bits"] | np.uint64(1 << 50)),
        "node bc .*nonzero padding bits",
    ),
    "wrong k": (lambda d, t: _set(d["nodes"][0]["attrs"], "k", 44), "node bc .*k=44"),
    "channels": (lambda d, t: _set(d["inputs"][0], "shape", [2, 6, 6, 7]), "node bc .*input has 6 channels"),
    "linear shape": (
        lambda d, t: _set(t, "fc.weight", np.zeros((3, 10), np.float32)),
        "node fc .*does not fit input shape",
    ),
    "missing attr": (lambda d, t: d["nodes"][0]["attrs"].pop("stride"), "node bc .*missing attr 'stride'"),
    "bad pads": (
        lambda d, t: _set(d["nodes"][0]["attrs"], "pads", "same"),
        "node bc .*attr 'pads' has the wrong type",
    ),
    "pad value": (
        lambda d, t: _set(d["nodes"][0]["attrs"], "pad_value", 2),
        "node bc .*pad_value must be 0, 1 or -1",
    ),
    "dangling input": (
        lambda d, t: _set(d["nodes"][1], "inputs", ["nowhere"]),
        "node act: input 'nowhere' is not produced",
    ),
    "missing output": (lambda d, t: _set(d, "outputs", ["ghost"]), "graph output 'ghost' is not produced"),
    "duplicate value": (
        lambda d, t: _set(d["nodes"][1], "outputs", ["bc"]),
        "node act: output 'bc' is produced twice",
    ),
    "input dtype": (
        lambda d, t: _set(d["inputs"][0], "dtype", "int8"),
        "input input: dtype must be one of float32, int64, got 'int8'",
    ),
    "token ids into a conv": (
        lambda d, t: _set(d["inputs"][0], "dtype", "int64"),
        r"node bc \(binary_conv\): input 'input' is int64, it takes float32",
    ),
    "kernel too big": (
        lambda d, t: (
            _set(d["inputs"][0], "shape", [2, 5, 1, 1])
            or _set(d["nodes"][0]["attrs"], "pads", [[0, 0], [0, 0]])
        ),
        "node bc .*too small for kernel",
    ),
    "not an object": (
        lambda d, t: _zip({"graph.json": b"[1, 2]", "tensors.npz": b""}),
        "graph.json must hold a JSON object",
    ),
}


@pytest.mark.parametrize("case", CORRUPTIONS, ids=str)
def test_corrupt_artifacts_raise_model_load_error(case):
    mutate, message = CORRUPTIONS[case]
    with pytest.raises(ModelLoadError, match=message):
        load_artifact(_mutated(mutate), KERNELS)


def _token_graph():
    """Every op a token model or a T-Net adds, chained: ids (N, 5) -> (N, 5, 2, 3)."""
    rng = np.random.default_rng(0)
    t = {
        "emb": rng.standard_normal((10, 4)).astype(np.float32),
        "pos": rng.standard_normal((5, 4)).astype(np.float32),
        "ln.w": rng.standard_normal(4).astype(np.float32),
        "ln.b": rng.standard_normal(4).astype(np.float32),
    }

    def node(op, name, inputs, **attrs):
        return {"op": op, "name": name, "inputs": inputs, "outputs": [name], "attrs": attrs}

    nodes = [
        node("embedding", "e", ["ids"], weight="emb"),
        node("constant", "c", [], value="pos"),
        node("add", "x", ["e", "c"]),
        node("layer_norm", "ln", ["x"], normalized_shape=[4], weight="ln.w", bias="ln.b", eps=1e-5),
        node("reshape", "r", ["ln"], shape=[5, 2, 2]),
        node("transpose", "q", ["r"], perm=[0, 2, 1, 3]),  # (N, 2, 5, 2)
        node("transpose", "k", ["q"], perm=[0, 1, 3, 2]),  # (N, 2, 2, 5)
        node("matmul", "s", ["q", "k"]),  # (N, 2, 5, 5)
        node("scalar", "d", ["s"], fn="div", value=2.0),
        node("softmax", "p", ["d"], axis=3),
        node("gelu", "g", ["p"], approximate="none"),
        node("tanh", "h", ["g"]),
        node("select", "h0", ["h"], axis=1, index=0),  # (N, 5, 5)
        node("slice", "sl", ["h0"], axis=2, start=0, stop=4, step=2),  # (N, 5, 2)
        node("reshape", "u", ["sl"], shape=[5, 2, 1]),
        node("expand", "out", ["u"], shape=[5, 2, 3]),
    ]
    doc = {
        "format": "bibench-custom",
        "version": 1,
        "inputs": [{"name": "ids", "shape": [2, 5], "dtype": "int64"}],
        "outputs": ["out"],
        "nodes": nodes,
    }
    return doc, t


def _token_reference(ids: np.ndarray, t: dict) -> np.ndarray:
    """The same chain in float64 numpy (math.erf for GELU)."""
    import math

    x = t["emb"][ids].astype(np.float64) + t["pos"]
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    x = (x - mu) / np.sqrt(var + 1e-5) * t["ln.w"] + t["ln.b"]
    q = x.reshape(len(ids), 5, 2, 2).transpose(0, 2, 1, 3)
    s = q @ q.transpose(0, 1, 3, 2) / 2.0
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    g = 0.5 * p * (1 + np.vectorize(math.erf)(p / math.sqrt(2)))
    h = np.tanh(g)[:, 0][:, :, 0:4:2]
    return np.broadcast_to(h.reshape(len(ids), 5, 2, 1), (len(ids), 5, 2, 3))


def test_the_token_ops_chain_and_compute_what_they_say():
    doc, t = _token_graph()
    graph = load_artifact(_artifact(doc, t), KERNELS)
    ids = np.array([[0, 3, 9, 2, 2], [1, 1, 1, 1, 1], [9, 8, 7, 6, 5]], np.int64)
    (out,) = graph.run([ids])
    assert out.shape == (3, 5, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, _token_reference(ids, t), rtol=1e-5, atol=1e-6)
    with pytest.raises(InvokeError, match="token id -1 is outside"):
        graph.run([np.array([[0, -1, 0, 0, 0]], np.int64)])


def _node(doc: dict, name: str) -> dict:
    return next(n for n in doc["nodes"] if n["name"] == name)


TOKEN_CORRUPTIONS = {
    "float ids": (
        lambda d, t: _set(d["inputs"][0], "dtype", "float32"),
        r"node e \(embedding\): input 'ids' is float32",
    ),
    "constant with an input": (lambda d, t: _set(_node(d, "c"), "inputs", ["e"]), "node c .*takes 0 input"),
    "embedding table": (
        lambda d, t: _set(t, "emb", np.zeros(4, np.float32)),
        r"node e .*weight must be \(vocab, dim\)",
    ),
    "norm shape": (
        lambda d, t: _set(_node(d, "ln")["attrs"], "normalized_shape", [5]),
        r"node ln .*normalized_shape \[5\] does not end input shape",
    ),
    "norm eps": (lambda d, t: _set(_node(d, "ln")["attrs"], "eps", float("nan")), "node ln .*eps.* finite"),
    "norm weight": (
        lambda d, t: _set(t, "ln.w", np.zeros(3, np.float32)),
        r"tensor 'ln.w' must have shape \(4,\)",
    ),
    "reshape size": (
        lambda d, t: _set(_node(d, "r")["attrs"], "shape", [5, 2, 3]),
        "node r .*does not hold the 20 values",
    ),
    "perm moves batch": (
        lambda d, t: _set(_node(d, "q")["attrs"], "perm", [1, 0, 2, 3]),
        "node q .*keep axis 0 first",
    ),
    "perm repeats": (
        lambda d, t: _set(_node(d, "q")["attrs"], "perm", [0, 1, 1, 3]),
        "node q .*must permute",
    ),
    "matmul chain": (lambda d, t: _set(_node(d, "s"), "inputs", ["q", "q"]), "node s .*do not chain"),
    "scalar fn": (lambda d, t: _set(_node(d, "d")["attrs"], "fn", "pow"), "node d .*fn must be one of"),
    "scalar value": (
        lambda d, t: _set(_node(d, "d")["attrs"], "value", float("inf")),
        "node d .*finite float32",
    ),
    "softmax batch": (lambda d, t: _set(_node(d, "p")["attrs"], "axis", 0), "node p .*axis in 1..3"),
    "gelu kind": (
        lambda d, t: _set(_node(d, "g")["attrs"], "approximate", "sigmoid"),
        "node g .*'none' or 'tanh'",
    ),
    "select index": (
        lambda d, t: _set(_node(d, "h0")["attrs"], "index", 2),
        "node h0 .*index 2 is outside axis 1 of size 2",
    ),
    "slice empty": (
        lambda d, t: _set(_node(d, "sl")["attrs"], "stop", 0),
        "node sl .*non-empty forward slice",
    ),
    "slice past end": (
        lambda d, t: _set(_node(d, "sl")["attrs"], "stop", 6),
        "node sl .*non-empty forward slice",
    ),
    "expand": (
        lambda d, t: _set(_node(d, "out")["attrs"], "shape", [5, 3, 3]),
        "node out .*does not broadcast",
    ),
}


@pytest.mark.parametrize("case", TOKEN_CORRUPTIONS, ids=str)
def test_malformed_token_ops_raise_model_load_error(case):
    doc, t = _token_graph()
    mutate, message = TOKEN_CORRUPTIONS[case]
    mutate(doc, t)
    with pytest.raises(ModelLoadError, match=message):
        load_artifact(_artifact(doc, t), KERNELS)


def test_byte_level_corruption_only_ever_raises_model_load_error():
    doc, t, _ = _binary_graph()
    data = _artifact(doc, t)
    rng = random.Random(7)
    for trial in range(300):
        corrupt = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            corrupt[rng.randrange(len(corrupt))] = rng.randrange(256)
        if trial % 3 == 0:
            corrupt = corrupt[: rng.randrange(len(corrupt))]
        try:
            load_artifact(bytes(corrupt), KERNELS)
        except ModelLoadError:
            pass


# -- the Runtime interface ----------------------------------------------------------------------
def test_runtime_describe_and_registry():
    info = get_runtime("custom").describe()
    assert get_runtime("custom") is CustomRuntime
    assert info.installed and info.name == "custom" and info.formats == ("custom",)
    assert "XNOR-popcount" in info.detail and "numpy" in info.detail
    import biagent

    assert info.version == biagent.__version__


def test_runtime_load_invoke_and_errors(tmp_path):
    doc, t, _ = _binary_graph()
    path = tmp_path / "model.custom"
    path.write_bytes(_artifact(doc, t))
    model = CustomRuntime().load(path, threads=2)
    assert [(s.name, s.shape, s.dtype) for s in model.inputs] == [("input", (2, 5, 6, 7), "float32")]
    assert [(s.name, s.shape, s.dtype) for s in model.outputs] == [("output", (2, 3), "float32")]
    with pytest.raises(InvokeError):
        model.get_outputs()
    x = np.random.default_rng(0).normal(size=(1, 5, 6, 7)).astype(np.float32)
    model.set_inputs([x])
    model.invoke()
    (out,) = model.get_outputs()
    assert out.shape == (1, 3)
    np.testing.assert_array_equal(out, load_artifact(path.read_bytes(), KERNELS).run([x])[0])
    model.set_inputs([x[:, :4]])
    with pytest.raises(InvokeError, match=r"input input must have shape \('N', 5, 6, 7\)"):
        model.invoke()
    model.set_inputs([x.astype(np.float64)])
    with pytest.raises(InvokeError, match="must be float32"):
        model.invoke()
    model.close()
    with pytest.raises(ModelLoadError, match="cannot read"):
        CustomRuntime().load(tmp_path / "missing.custom", threads=1)
    (tmp_path / "bad.custom").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ModelLoadError):
        CustomRuntime().load(tmp_path / "bad.custom", threads=1)
