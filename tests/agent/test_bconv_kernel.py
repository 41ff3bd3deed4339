"""The channel-packed binary conv (kernels/bconv.c) and the FP kernels (kernels/fpops.c).

Every popcount path this CPU can run (AVX-512 VPOPCNTDQ, AVX2 nibble lookup, POPCNT,
portable C) must give exactly the numpy reference path's floats: the dots are integers
and the epilogue runs the same float32 operations in the same order.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from biagent import kernels
from biagent.runtimes.custom import KernelSettings, ops
from biagent.runtimes.custom.ops import binary as binary_ops
from biagent.runtimes.custom.ops import conv as conv_ops
from biagent.worker import openblas_coretype, thread_env

pytestmark = pytest.mark.skipif(not kernels.available(), reason="C kernels not built on this machine")

# the kernels as the runtime would load them (BIAGENT_CUSTOM_KERNELS, BIAGENT_KERNEL_ISA)
KERNELS = KernelSettings.from_env()

ISAS = [
    isa
    for isa in ("avx512", "avx2", "popcnt", "portable")
    if kernels.available() and kernels._xnor.bconv_isa(isa)
]

# (C_in, C_out, kernel, stride, dilation, pad, pad_value, H, W): odd channel counts (not a
# multiple of 64, and more than one word), 1x1 to 7x7, stride 2, dilation 2, pads 0/1/3,
# outputs whose position count is not a multiple of any tile (7x7, 11x13, 1x1).
SHAPES = [
    (3, 5, 3, 1, 1, 1, 0, 11, 13),
    (37, 13, 1, 1, 1, 0, 0, 7, 7),
    (65, 17, 7, 2, 1, 3, 0, 15, 12),
    (130, 9, 3, 2, 2, 2, -1, 13, 11),
    (64, 64, 3, 1, 1, 1, 1, 8, 9),
    (64, 24, 3, 1, 1, 1, 0, 14, 14),
    (200, 8, 3, 1, 1, 1, 0, 3, 3),
    (17, 3, 3, 1, 1, 0, 0, 3, 3),
    # channels that divide 64: several taps per word (one 16-channel 3x3 patch is 3 words)
    (16, 24, 3, 1, 1, 1, 0, 9, 10),
    (32, 9, 3, 2, 1, 1, -1, 11, 13),
    (8, 16, 5, 1, 2, 2, 0, 12, 12),
    (4, 8, 2, 2, 1, 1, 0, 7, 9),
    (5, 9, 7, 1, 1, 3, 0, 13, 13),  # 49 padding classes: past what one or two registers hold
    (512, 256, 3, 1, 1, 1, 0, 4, 4),  # few positions, big enough for 2 threads: they split the channels
]


def _op(attrs, tensors, settings=KERNELS):
    return ops.make_binary_conv(ops.BinaryLayer.from_attrs(attrs, tensors), settings)


def _with(op, isa=None, threads=1):
    """The same layer under other kernel settings (the op is rebuilt from its layer)."""
    return ops.make_binary_conv(op.layer, replace(KERNELS, isa=isa or KERNELS.isa, threads=threads))


def _conv(cin, cout, k, s, d, p, pv, extras, seed=0, nd=2, mean_abs=True, gain=None):
    rng = np.random.default_rng(seed)
    kernel = (k,) * nd
    bits = ops.pack_rows(rng.random((cout, cin * k**nd)) < 0.5)
    attrs = dict(
        kind=f"conv{nd}d",
        k=cin * k**nd,
        weight_shape=[cout, cin, *kernel],
        weight_bits="w",
        groups=1,
        stride=[s] * nd,
        dilation=[d] * nd,
        pads=[[p, p]] * nd,
        pad_value=pv,
    )
    tensors = {"w": bits}
    if extras:
        for key, n in (("input_shift", cin), ("weight_scale", cout), ("channel_scale", cout), ("bias", cout)):
            attrs[key] = key
            tensors[key] = rng.standard_normal(n).astype(np.float32)
        if mean_abs:
            attrs["input_scale"] = "mean_abs"
    if gain is not None:
        attrs["output_gain"] = "gain"
        tensors["gain"] = gain
    return _op(attrs, tensors)


def _reference(conv, x):
    return ops.BinaryConvReference(conv.layer, conv.settings)(x)


def _inputs(cin, h, w, seed=1, n=2):
    x = np.random.default_rng(seed).standard_normal((n, cin, h, w)).astype(np.float32)
    x[0, 0, 0, :3] = [0.0, -0.0, np.nan][: min(3, w)]  # sign(+-0) = +1, NaN -> -1
    return x


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("extras", [False, True], ids=["plain", "scales"])
def test_every_kernel_matches_the_numpy_reference_exactly(isa, shape, extras):
    cin, cout, k, s, d, p, pv, h, w = shape
    conv = _conv(cin, cout, k, s, d, p, pv, extras)
    assert conv.packed is not None
    x = _inputs(cin, h, w)
    expected = _reference(conv, x)
    for threads in (1, 2):
        assert np.array_equal(_with(conv, isa, threads)(x), expected, equal_nan=True), (isa, threads)


@pytest.mark.parametrize("isa", ISAS)
def test_conv1d_and_spatial_gain(isa):
    gain = np.random.default_rng(3).standard_normal((1, 1)).astype(np.float32)
    conv = _conv(70, 11, 5, 2, 1, 2, 0, extras=True, nd=1, gain=gain)
    x = np.random.default_rng(4).standard_normal((3, 70, 29)).astype(np.float32)
    expected = _reference(conv, x)
    assert np.array_equal(_with(conv, isa)(x), expected)


def _linear(cin, cout, extras, seed=0):
    rng = np.random.default_rng(seed)
    attrs = dict(kind="linear", k=cin, weight_shape=[cout, cin], weight_bits="w")
    tensors = {"w": ops.pack_rows(rng.random((cout, cin)) < 0.5)}
    if extras:
        for key, n in (("input_shift", cin), ("weight_scale", cout), ("channel_scale", cout), ("bias", cout)):
            attrs[key] = key
            tensors[key] = rng.standard_normal(n).astype(np.float32)
    return _op(attrs, tensors)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    "cin, cout, lead", [(70, 13, (1,)), (130, 64, (5,)), (3, 1000, (2, 3)), (512, 512, (300,))]
)
@pytest.mark.parametrize("extras", [False, True], ids=["plain", "scales"])
def test_binary_linear_runs_on_the_packed_conv_exactly(isa, cin, cout, lead, extras, monkeypatch):
    monkeypatch.setattr(binary_ops, "LINEAR_PACKED_MIN_OUT", 1)  # narrow ones too, here
    lin = _linear(cin, cout, extras)
    assert lin.packed_linear is not None
    x = np.random.default_rng(2).standard_normal((*lead, cin)).astype(np.float32)
    x.reshape(-1)[:3] = [0.0, -0.0, np.nan]
    expected = _reference(lin, x)
    for threads in (1, 2):  # 300 rows x 512 outputs x 8 words: big enough for 2 threads
        got = _with(lin, isa, threads)(x)
        assert got.shape == (*lead, cout) and np.array_equal(got, expected), (isa, threads)


def test_xnor_and_narrow_linears_keep_the_gemm():
    lin = _linear(70, 130, extras=False)
    assert lin.packed_linear is not None
    xnor = _op(
        dict(kind="linear", k=70, weight_shape=[130, 70], weight_bits="w", input_scale="mean_abs"),
        {"w": lin.weights_rows[0]},
    )
    assert xnor.packed_linear is None  # beta (per row) sits inside the epilogue's order
    assert _linear(70, 13, extras=False).packed_linear is None


def test_the_dots_are_the_signed_integer_dots():
    """Independent of the numpy path: a direct +/-1 convolution in int64."""
    conv = _conv(67, 9, 3, 1, 1, 1, 0, extras=False, seed=5)
    x = _inputs(67, 6, 5, seed=6, n=1)
    signs = ops.unpack_signs(ops.pack_rows(ops.unpack_signs(conv.weights_rows[0], conv.k) < 0), conv.k)
    wsig = signs.reshape(9, 67, 3, 3).astype(np.int64)
    xs = np.pad(np.where(x >= 0, 1, -1).astype(np.int64), ((0, 0), (0, 0), (1, 1), (1, 1)))  # zero padding
    expected = np.zeros((1, 9, 6, 5), np.int64)
    for i in range(3):
        for j in range(3):
            expected += np.einsum("nchw,oc->nohw", xs[:, :, i : i + 6, j : j + 5], wsig[:, :, i, j])
    assert np.array_equal(conv(x), expected.astype(np.float32))


def test_channel_packed_weights_layout():
    rng = np.random.default_rng(7)
    cout, cin, k = 11, 70, 3
    neg = rng.random((cout, cin, k, k)) < 0.5
    blocks = ops.channel_packed_weights(ops.pack_rows(neg.reshape(cout, -1)), cin, (k, k))
    assert blocks.shape == (2, k * k * 2, 8) and blocks.dtype == np.uint64
    for o in range(cout):
        for tap in range(k * k):
            for cw in range(2):
                word = int(blocks[o // 8, tap * 2 + cw, o % 8])
                chans = neg[o, cw * 64 : (cw + 1) * 64].reshape(-1, k * k)[:, tap]
                assert word == sum(1 << i for i, bit in enumerate(chans) if bit)
    assert not blocks[1, :, cout % 8 :].any()  # padded output channels are zero


@pytest.mark.parametrize("cin, k, words", [(16, 3, 3), (32, 3, 5), (8, 5, 4), (4, 2, 1), (16, 1, 1)])
def test_narrow_channels_share_words_between_taps(cin, k, words):
    rng = np.random.default_rng(8)
    cout, taps = 11, k * k
    neg = rng.random((cout, cin, k, k)) < 0.5
    blocks = ops.channel_packed_weights(ops.pack_rows(neg.reshape(cout, -1)), cin, (k, k))
    assert blocks.shape == (2, words, 8) and ops.patch_words(cin, (k, k)) == words
    per = min(64 // cin, taps)
    for o in range(cout):
        for j in range(words):
            chans = (
                neg[o].reshape(cin, taps)[:, j * per : (j + 1) * per].T.reshape(-1)
            )  # tap-major, then channel
            assert int(blocks[o // 8, j, o % 8]) == sum(1 << i for i, bit in enumerate(chans) if bit)


def test_bad_arguments_are_value_errors_not_crashes():
    bconv = kernels._xnor.bconv2d
    x = np.zeros((1, 3, 5, 5), np.float32)
    w = np.zeros((1, 9, 8), np.uint64)
    out = np.zeros((1, 4, 5, 5), np.float32)
    geom = (3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 0)
    ok = (None, None, None, None, None, None, None, "auto", 1)
    bconv(x, w, out, geom, *ok)
    with pytest.raises(ValueError, match="out must be"):
        bconv(x, w, np.zeros((1, 4, 4, 5), np.float32), geom, *ok)
    with pytest.raises(ValueError, match="weights must be"):
        bconv(x, np.zeros((1, 8, 8), np.uint64), out, geom, *ok)
    with pytest.raises(ValueError, match="float32"):
        bconv(x.astype(np.float64), w, out, geom, *ok)
    with pytest.raises(ValueError, match="contiguous"):
        bconv(np.zeros((1, 3, 5, 10), np.float32)[..., ::2], w, out, geom, *ok)
    with pytest.raises(ValueError, match="geometry"):
        bconv(x, w, out, (9, 9, 1, 1, 1, 1, 0, 0, 0, 0, 0), *ok)
    table = np.zeros((4, 2), np.int32)
    with pytest.raises(ValueError, match="not a class"):
        bconv(x, w, out, geom, None, np.full(25, 2, np.int32), table, *ok[3:])
    with pytest.raises(ValueError, match="corr_cls"):
        bconv(x, w, out, geom, None, np.zeros(25, np.int32), None, *ok[3:])
    with pytest.raises(ValueError, match="cannot run|kernel"):
        bconv(x, w, out, geom, *ok[:-2], "sparc", 1)


def test_kernel_info_and_ceiling():
    info = kernels.info()
    assert info["bconv"] in ("avx512", "avx2", "popcnt", "portable")
    assert kernels._xnor.bconv_ceiling("auto", 3) > 0
    assert kernels._xnor.bconv_isa("nonsense") is None


# -- full-precision kernels -------------------------------------------------------------
def test_channel_fma_is_one_rounding():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 5, 7, 9)).astype(np.float32) * 100
    scale, shift = rng.standard_normal(5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    y = np.empty_like(x)
    kernels._xnor.channel_fma(x, scale, shift, y)
    exact = (x.astype(np.float64) * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)).astype(
        np.float32
    )
    assert np.array_equal(y, exact)  # float64 holds the product exactly; double rounding is ~1e-9 rare
    assert np.array_equal(ops.channel_affine(x, scale, shift, KERNELS), exact)


def test_clamp_keeps_nan_like_np_clip():
    x = np.array([-3, -1, -0.5, 0, 0.5, 1, 2, np.nan, np.inf, -np.inf], np.float32)
    assert np.array_equal(
        ops.clamp(x, np.float32(-1), np.float32(1), KERNELS), np.clip(x, -1, 1), equal_nan=True
    )


@pytest.mark.parametrize("isa", ["auto", "avx512", "avx2", "portable"])
@pytest.mark.parametrize("k, s, p, d", [(3, 2, 1, 1), (2, 2, 0, 1), (3, 1, 1, 2), (5, 3, 2, 1), (3, 2, 0, 1)])
@pytest.mark.parametrize(
    "h, w", [(13, 11), (9, 70), (64, 70)]
)  # 70 columns: vector blocks and a tail; 64 rows: 2 threads
def test_max_pool_matches_numpy(isa, k, s, p, d, h, w):
    x = np.random.default_rng(9).standard_normal((2, 3, h, w)).astype(np.float32)
    x[0, 1, 4, 4] = np.nan
    x[1, 2, 3, w - 1] = np.nan  # in the last column: the tail and the padding
    x[1, 0, 2, 5:9] = np.inf
    for threads in (1, 2):
        settings = replace(KERNELS, isa=isa, threads=threads)
        got = ops.max_pool(x, (k, k), (s, s), [[p, p], [p, p]], (d, d), settings)
        expected = ops.max_pool(x, (k, k), (s, s), [[p, p], [p, p]], (d, d), replace(settings, use_c=False))
        assert np.array_equal(got, expected, equal_nan=True), (threads, isa)


def test_fp_kernels_refuse_bad_buffers():
    x = np.zeros((1, 2, 3, 3), np.float32)
    with pytest.raises(ValueError):
        kernels._xnor.channel_fma(x, np.zeros(3, np.float32), np.zeros(2, np.float32), np.empty_like(x))
    with pytest.raises(ValueError):
        kernels._xnor.clamp(x, 1.0, -1.0, np.empty_like(x))
    with pytest.raises(ValueError):
        kernels._xnor.max_pool2d(x, np.zeros((1, 2, 9, 9), np.float32), (3, 3, 1, 1, 1, 1, 0, 0))


# -- threads -------------------------------------------------------------------------------
def test_custom_owns_its_threads_and_blas_gets_the_right_kernels():
    env = thread_env(2, "custom")
    assert env["OMP_NUM_THREADS"] == "2" and env["OPENBLAS_NUM_THREADS"] == "1"
    assert thread_env(2, "onnxruntime")["OPENBLAS_NUM_THREADS"] == "2"
    assert openblas_coretype({"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"}) == "SkylakeX"
    assert openblas_coretype({"avx2", "fma"}) == "Haswell"
    assert openblas_coretype({"neon"}) is None


@pytest.mark.parametrize("k, s, p, d", [(7, 2, 3, 1), (1, 2, 0, 1), (3, 1, 1, 2), (3, 3, 2, 1)])
def test_im2col_matches_the_numpy_window_view(k, s, p, d):
    x = np.random.default_rng(10).standard_normal((5, 17, 13)).astype(np.float32)
    out = tuple(ops.out_size(n, (p, p), k, s, d) for n in x.shape[1:])
    view = ops.windows(
        ops.pad_spatial(x, [[p, p], [p, p]], 0.0), (k, k), (s, s), (d, d), out
    )  # (C, OH, OW, k, k)
    expected = view.transpose(0, 3, 4, 1, 2).reshape(5 * k * k, out[0], out[1])
    for oy0, oy1 in ((0, out[0]), (1, min(3, out[0]))):
        cols = np.empty((5 * k * k, (oy1 - oy0) * out[1]), np.float32)
        kernels._xnor.im2col2d(x, cols, (k, k, s, s, d, d, p, p), out[1], oy0, oy1, 2)
        assert np.array_equal(cols, expected[:, oy0:oy1].reshape(5 * k * k, -1))


def test_fp_conv_c_path_matches_numpy(monkeypatch):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 6, 23, 19)).astype(np.float32)
    attrs = {
        "weight": "w",
        "bias": "b",
        "groups": 2,
        "stride": [2, 1],
        "dilation": [1, 1],
        "pads": [[3, 2], [1, 1]],
    }
    tensors = {
        "w": rng.standard_normal((8, 3, 5, 3)).astype(np.float32),
        "b": rng.standard_normal(8).astype(np.float32),
    }
    conv = ops.make_conv(attrs, tensors, replace(KERNELS, threads=2))
    monkeypatch.setattr(conv_ops, "COLS_BYTES", 2000)  # many blocks
    monkeypatch.setattr(conv_ops, "PARALLEL_MACS", 1)  # and the thread pool
    got = conv(x)
    numpy_conv = ops.make_conv(attrs, tensors, replace(KERNELS, use_c=False, threads=2))
    np.testing.assert_allclose(got, numpy_conv(x), rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(
    not (kernels.available() and kernels._xnor.conv2d_direct_supported()), reason="needs AVX-512"
)
@pytest.mark.parametrize(
    "cin, cout, k, s, p, h, w",
    [(64, 128, 1, 2, 0, 56, 56), (37, 13, 3, 1, 1, 9, 11), (20, 70, 3, 2, 1, 17, 33)],
)
def test_openmp_gemm_conv_matches_float64(cin, cout, k, s, p, h, w, monkeypatch):
    """Small FP convs at 2 threads go through im2col + fp_gemm; against a float64 reference."""
    rng = np.random.default_rng(17)
    attrs = {
        "weight": "w",
        "bias": "b",
        "groups": 1,
        "stride": [s, s],
        "dilation": [1, 1],
        "pads": [[p, p], [p, p]],
    }
    wt = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    conv = ops.make_conv(attrs, {"w": wt, "b": b}, replace(KERNELS, threads=2))
    x = rng.standard_normal((2, cin, h, w)).astype(np.float32)
    monkeypatch.setattr(conv_ops, "DIRECT_MAX_CHANNELS", 0)
    got = conv(x)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    oh, ow = got.shape[2:]
    ref = np.zeros(got.shape, np.float64) + b.reshape(1, -1, 1, 1)
    for i in range(k):
        for j in range(k):
            ref += np.einsum(
                "nchw,oc->nohw",
                xp[:, :, i : i + s * oh : s, j : j + s * ow : s],
                wt[:, :, i, j].astype(np.float64),
            )
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4 * np.abs(ref).max())
    with pytest.raises(ValueError):
        kernels._xnor.fp_gemm(
            conv.gemm_w, np.zeros((3, 5), np.float32), None, np.zeros((cout, 5), np.float32)
        )


def test_affine_then_hardtanh_is_fused_with_the_same_floats():
    import io
    import json
    import zipfile

    from biagent.runtimes.custom import load_artifact

    rng = np.random.default_rng(12)
    tensors = {"s": rng.standard_normal(4).astype(np.float32), "h": rng.standard_normal(4).astype(np.float32)}

    def graph(outputs):
        doc = {
            "format": "bibench-custom",
            "version": 1,
            "inputs": [{"name": "x", "shape": [1, 4, 5, 5], "dtype": "float32"}],
            "outputs": outputs,
            "nodes": [
                {
                    "op": "channel_affine",
                    "name": "bn",
                    "inputs": ["x"],
                    "outputs": ["a"],
                    "attrs": {"scale": "s", "shift": "h"},
                },
                {
                    "op": "hardtanh",
                    "name": "act",
                    "inputs": ["a"],
                    "outputs": ["y"],
                    "attrs": {"min_val": -1.0, "max_val": 1.0},
                },
            ],
        }
        npz, buf = io.BytesIO(), io.BytesIO()
        np.savez(npz, **tensors)
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("graph.json", json.dumps(doc))
            zf.writestr("tensors.npz", npz.getvalue())
        return load_artifact(buf.getvalue(), KERNELS)

    fused, unfused = graph(["y"]), graph(["y", "a"])  # a graph output must stay materialised
    assert [n.op for n in fused.nodes] == ["channel_affine+hardtanh"]
    assert [n.op for n in unfused.nodes] == ["channel_affine", "hardtanh"]
    x = (rng.standard_normal((3, 4, 5, 5)) * 3).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    (y,) = fused.run([x])
    y2, a = unfused.run([x])
    assert np.array_equal(y, y2, equal_nan=True)
    assert np.array_equal(y, np.clip(a, -1, 1), equal_nan=True)


@pytest.mark.skipif(
    not (kernels.available() and kernels._xnor.fp_gemm_supported()), reason="needs the FP GEMM"
)
def test_a_1x1_conv_takes_the_gemm_not_the_direct_kernel():
    # resnet20's 16-channel stride-2 shortcut: the direct kernel's phase split copies the whole
    # input for its one tap (13 us against 4 through im2col + GEMM)
    attrs = {
        "weight": "w",
        "bias": "b",
        "groups": 1,
        "stride": [2, 2],
        "dilation": [1, 1],
        "pads": [[0, 0], [0, 0]],
    }
    tensors = {"w": np.ones((32, 16, 1, 1), np.float32), "b": np.zeros(32, np.float32)}
    conv = ops.make_conv(attrs, tensors, KERNELS)
    assert conv.direct is None and conv.gemm_w is not None


@pytest.mark.skipif(
    not (kernels.available() and kernels._xnor.conv2d_direct_supported()), reason="needs AVX-512"
)
@pytest.mark.parametrize(
    "cin, cout, k, s, p, d, h, w",
    [
        (3, 64, 7, 2, 3, 1, 37, 41),
        (3, 13, 3, 1, 1, 1, 9, 50),
        (16, 9, 5, 3, 2, 2, 23, 19),
        (1, 8, 2, 1, 0, 1, 5, 5),
        (3, 64, 7, 2, 3, 1, 70, 66),
    ],
)  # 11M MACs: on 2 threads
def test_direct_stem_conv_matches_the_sgemm_path(cin, cout, k, s, p, d, h, w, monkeypatch):
    rng = np.random.default_rng(13)
    attrs = {
        "weight": "w",
        "bias": "b",
        "groups": 1,
        "stride": [s, s],
        "dilation": [d, d],
        "pads": [[p, p], [p, p]],
    }
    tensors = {
        "w": rng.standard_normal((cout, cin, k, k)).astype(np.float32),
        "b": rng.standard_normal(cout).astype(np.float32),
    }
    x = rng.standard_normal((2, cin, h, w)).astype(np.float32)
    direct = ops.make_conv(attrs, tensors, replace(KERNELS, threads=2))
    assert direct.direct is not None
    got = direct(x)
    monkeypatch.setattr(conv_ops, "DIRECT_MAX_CHANNELS", 0)
    expected = ops.make_conv(attrs, tensors, replace(KERNELS, threads=2))(x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))
