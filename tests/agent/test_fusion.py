"""Fused node chains (runtimes/custom/fusion.py): the same floats as the nodes one by one.

binary_conv -> channel_affine -> add -> hardtanh runs in the conv's epilogue; every popcount
path must give, bit for bit, what the separate nodes give.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import replace

import numpy as np
import pytest

from biagent import kernels
from biagent.runtimes.custom import load_artifact, ops
from biagent.runtimes.custom.fusion import FusedBinaryConv, FusedStemConv, StemPost

from .test_bconv_kernel import ISAS, KERNELS, _conv, _inputs, _reference, _with

pytestmark = pytest.mark.skipif(not kernels.available(), reason="C kernels not built on this machine")

POSTS = {
    "affine": dict(affine=True),
    "affine+add+clamp": dict(affine=True, residual=True, clamp=(-1.0, 1.0)),
    "add+clamp": dict(residual=True, clamp=(-0.5, 2.0)),
    "affine+clamp": dict(affine=True, clamp=(0.0, 0.0)),  # a degenerate clamp: every value at a bound
    "clamp": dict(clamp=(-1.0, 1.0)),
}


def _post(cout: int, affine=False, residual=False, clamp=None, seed=7) -> ops.PostOps:
    rng = np.random.default_rng(seed)
    scale = rng.standard_normal(cout).astype(np.float32) if affine else None
    shift = rng.standard_normal(cout).astype(np.float32) if affine else None
    return ops.PostOps(scale, shift, residual, clamp)


def _residual(shape, seed=8) -> np.ndarray:
    r = (np.random.default_rng(seed).standard_normal(shape) * 4).astype(np.float32)
    r.reshape(-1)[:3] = [np.nan, np.inf, -np.inf]  # NaN must survive the clamp; inf must clamp
    return r


def _separately(conv, post, x, residual):
    return post.apply(_reference(conv, x), residual, conv.settings)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("post_name", list(POSTS))
@pytest.mark.parametrize(
    "shape",
    [(37, 13, 1, 1, 1, 0, 0, 7, 7), (65, 17, 3, 2, 1, 1, 0, 15, 12), (64, 24, 3, 1, 1, 1, 0, 14, 14)],
    ids=lambda s: "x".join(map(str, s)),
)
@pytest.mark.parametrize("extras", [False, True], ids=["plain", "scales"])
def test_fused_epilogue_equals_the_nodes_one_by_one(isa, post_name, shape, extras):
    cin, cout, k, s, d, p, pv, h, w = shape
    conv = _conv(cin, cout, k, s, d, p, pv, extras)
    post = _post(cout, **POSTS[post_name])
    x = _inputs(cin, h, w)
    out_shape = _reference(conv, x).shape
    residual = _residual(out_shape) if post.residual else None
    expected = _separately(conv, post, x, residual)
    fused = FusedBinaryConv(conv, post)
    assert fused.fused()
    for threads in (1, 2):
        got = FusedBinaryConv(_with(conv, isa, threads), post)(x, residual)
        assert got.dtype == np.float32 and got.shape == out_shape
        assert np.array_equal(got, expected, equal_nan=True), (isa, threads)
    if post.clamp is not None:
        finite = got[np.isfinite(got)]
        assert finite.min() >= post.clamp[0] and finite.max() <= post.clamp[1]


@pytest.mark.parametrize("isa", ISAS)
def test_fused_conv1d_and_a_broadcasting_residual(isa):
    conv = _conv(70, 11, 5, 2, 1, 2, 0, extras=True, nd=1)
    post = _post(11, affine=True, residual=True, clamp=(-1.0, 1.0))
    x = np.random.default_rng(4).standard_normal((3, 70, 29)).astype(np.float32)
    full = _residual(_reference(conv, x).shape)
    assert np.array_equal(
        FusedBinaryConv(_with(conv, isa), post)(x, full), _separately(conv, post, x, full), equal_nan=True
    )
    row = _residual((1, 11, 1))  # broadcasts: the nodes run one by one, same result
    assert np.array_equal(
        FusedBinaryConv(_with(conv, isa), post)(x, row), _separately(conv, post, x, row), equal_nan=True
    )


def test_kernel_refuses_mismatched_post_buffers():
    conv = _conv(8, 8, 3, 1, 1, 1, 0, extras=False)
    x = _inputs(8, 5, 5)
    y = np.empty((2, 8, 5, 5), np.float32)
    geom = (3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 0)
    cls, table = conv.correction_classes((5, 5), (5, 5))
    base = (x, conv.packed, y, geom, None, cls, table, None, None, None, None, "auto", 1)
    ones = np.ones(8, np.float32)
    for post, msg in [
        ((ones, None, None, None), "together"),
        ((np.ones(7, np.float32), np.ones(7, np.float32), None, None), "together"),
        ((None, None, np.zeros((2, 8, 5, 4), np.float32), None), "residual"),
        ((None, None, None, (1.0, -1.0)), "lo <= hi"),
        ((None, None, None, (float("nan"), 1.0)), "lo <= hi"),
    ]:
        with pytest.raises(ValueError, match=msg):
            kernels._xnor.bconv2d(*base, post)


# -- the graph rewrite ------------------------------------------------------------------------
def _block_artifact(outputs: list[str], residual_first: bool = False, seed: int = 3, c: int = 70) -> bytes:
    """x -> binary conv -> batch norm -> (+ shortcut x) -> hardtanh, as an exporter writes a
    binary ResNet block; then a second block, and a stray reader where asked. c: channels."""
    rng = np.random.default_rng(seed)
    k = c * 9
    t = {"w1": ops.pack_rows(rng.random((c, k)) < 0.5), "w2": ops.pack_rows(rng.random((c, k)) < 0.5)}
    for name in ("s1", "h1", "s2", "h2"):
        t[name] = rng.standard_normal(c).astype(np.float32)
    conv = lambda name, src, dst, w: {  # noqa: E731
        "op": "binary_conv",
        "name": name,
        "inputs": [src],
        "outputs": [dst],
        "attrs": {
            "kind": "conv2d",
            "k": k,
            "weight_shape": [c, c, 3, 3],
            "weight_bits": w,
            "groups": 1,
            "stride": [1, 1],
            "dilation": [1, 1],
            "pads": [[1, 1], [1, 1]],
            "pad_value": 0,
        },
    }
    add_inputs = ["x", "b1"] if residual_first else ["b1", "x"]
    nodes = [
        conv("c1", "x", "y1", "w1"),
        {
            "op": "channel_affine",
            "name": "bn1",
            "inputs": ["y1"],
            "outputs": ["b1"],
            "attrs": {"scale": "s1", "shift": "h1"},
        },
        {"op": "add", "name": "add1", "inputs": add_inputs, "outputs": ["r1"], "attrs": {}},
        {
            "op": "hardtanh",
            "name": "act1",
            "inputs": ["r1"],
            "outputs": ["a1"],
            "attrs": {"min_val": -1.0, "max_val": 1.0},
        },
        conv("c2", "a1", "y2", "w2"),
        {
            "op": "channel_affine",
            "name": "bn2",
            "inputs": ["y2"],
            "outputs": ["b2"],
            "attrs": {"scale": "s2", "shift": "h2"},
        },
        {
            "op": "hardtanh",
            "name": "act2",
            "inputs": ["b2"],
            "outputs": ["a2"],
            "attrs": {"min_val": -1.0, "max_val": 1.0},
        },
    ]
    doc = {
        "format": "bibench-custom",
        "version": 1,
        "inputs": [{"name": "x", "shape": [1, c, 9, 11], "dtype": "float32"}],
        "outputs": outputs,
        "nodes": nodes,
    }
    npz, buf = io.BytesIO(), io.BytesIO()
    np.savez(npz, **t)
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("graph.json", json.dumps(doc))
        zf.writestr("tensors.npz", npz.getvalue())
    return buf.getvalue()


@pytest.mark.parametrize("residual_first", [False, True])
def test_resnet_block_tails_fuse_into_the_conv(residual_first):
    data = _block_artifact(["a2", "a1"], residual_first)  # a chain's last value may be read anywhere
    fused, plain = load_artifact(data, KERNELS), load_artifact(data, KERNELS, fuse=False)
    assert [n.op for n in fused.nodes] == [
        "binary_conv+channel_affine+add+hardtanh",
        "binary_conv+channel_affine+hardtanh",
    ]
    assert len(plain.nodes) == 7
    x = (np.random.default_rng(5).standard_normal((2, 70, 9, 11)) * 2).astype(np.float32)
    x[0, 3, 4, 4] = np.nan
    got, expected = fused.run([x]), plain.run([x])
    for a, b in zip(got, expected):
        assert np.array_equal(a, b, equal_nan=True)
    assert np.isnan(got[1]).sum() == 1  # the input's NaN came through the fused add (and only there)


def test_a_value_read_elsewhere_is_not_fused_away():
    data = _block_artifact(["a2", "b1"])  # the first batch norm's output is a graph output too
    fused, plain = load_artifact(data, KERNELS), load_artifact(data, KERNELS, fuse=False)
    assert [n.op for n in fused.nodes] == [
        "binary_conv+channel_affine",
        "add",
        "hardtanh",
        "binary_conv+channel_affine+hardtanh",
    ]
    x = np.random.default_rng(6).standard_normal((1, 70, 9, 11)).astype(np.float32)
    for got, expected in zip(fused.run([x]), plain.run([x])):
        assert np.array_equal(got, expected)


# -- the stem: direct conv -> batch norm -> hardtanh -> max pool --------------------------------
STEM_POSTS = {
    "affine": dict(affine=True),
    "affine+clamp": dict(affine=True, clamp=(-1.0, 1.0)),
    "affine+clamp+pool": dict(
        affine=True, clamp=(-1.0, 1.0), pool=((3, 3), (2, 2), [[1, 1], [1, 1]], (1, 1))
    ),
    "pool": dict(pool=((2, 2), (2, 2), [[0, 0], [0, 0]], (1, 1))),
    "clamp+pool": dict(clamp=(0.0, 6.0), pool=((3, 3), (1, 1), [[1, 1], [1, 1]], (2, 2))),
}


def _stem_post(cout: int, affine=False, clamp=None, pool=None, seed=9, settings=KERNELS) -> StemPost:
    rng = np.random.default_rng(seed)
    scale = rng.standard_normal(cout).astype(np.float32) if affine else None
    shift = rng.standard_normal(cout).astype(np.float32) if affine else None
    return StemPost(scale, shift, clamp, None if pool is None else ops.MaxPool(*pool, settings))


@pytest.mark.skipif(
    not (kernels.available() and kernels._xnor.conv2d_direct_supported()), reason="needs AVX-512"
)
@pytest.mark.parametrize("post_name", list(STEM_POSTS))
@pytest.mark.parametrize(
    "cin, cout, k, s, p, h, w",
    [(3, 64, 7, 2, 3, 37, 41), (3, 13, 3, 1, 1, 9, 50), (16, 9, 5, 3, 2, 23, 19), (3, 64, 7, 2, 3, 70, 66)],
)  # 11M MACs: on 2 threads
def test_fused_stem_equals_the_nodes_one_by_one(post_name, cin, cout, k, s, p, h, w):
    rng = np.random.default_rng(14)
    attrs = {
        "weight": "w",
        "bias": "b",
        "groups": 1,
        "stride": [s, s],
        "dilation": [1, 1],
        "pads": [[p, p], [p, p]],
    }
    tensors = {
        "w": rng.standard_normal((cout, cin, k, k)).astype(np.float32),
        "b": rng.standard_normal(cout).astype(np.float32),
    }
    conv = ops.make_conv(attrs, tensors, KERNELS)
    assert conv.direct is not None
    post = _stem_post(cout, **STEM_POSTS[post_name])
    x = (rng.standard_normal((2, cin, h, w)) * 2).astype(np.float32)
    x[1, 0, h // 2, w // 2] = np.nan
    for threads in (1, 2):
        settings = replace(KERNELS, threads=threads)
        conv = ops.make_conv(attrs, tensors, settings)
        post = _stem_post(cout, **STEM_POSTS[post_name], settings=settings)
        expected = post.apply(conv(x), settings)
        got = FusedStemConv(conv, post)(x)
        assert got.shape == expected.shape
        assert np.array_equal(got, expected, equal_nan=True), threads
        assert np.isnan(got).any()  # the NaN went through affine, clamp and pool


@pytest.mark.skipif(
    not (kernels.available() and kernels._xnor.conv2d_direct_supported()), reason="needs AVX-512"
)
def test_direct_conv_refuses_bad_post_ops():
    x = np.zeros((3, 9, 9), np.float32)
    wt = np.zeros((1, 3, 3, 3, 8), np.float32)
    geom = (3, 3, 1, 1, 1, 1, 1, 1)
    ones = np.ones(8, np.float32)
    pool = ((3, 3, 2, 2, 1, 1, 1, 1), 9, 9)
    for post, out, msg in [
        ((ones, None, None, None), (8, 9, 9), "together"),
        ((None, None, (1.0, 0.0), None), (8, 9, 9), "lo <= hi"),
        ((None, None, None, pool), (8, 9, 9), "must fit"),  # 9 pooled rows do not fit 9 conv rows
        ((None, None, None, ((0, 3, 2, 2, 1, 1, 1, 1), 9, 9)), (8, 5, 5), "must fit"),
    ]:
        with pytest.raises(ValueError, match=msg):
            kernels._xnor.conv2d_direct(x, wt, None, np.zeros(out, np.float32), geom, 1, post)
    y = np.zeros((8, 5, 5), np.float32)
    kernels._xnor.conv2d_direct(x, wt, None, y, geom, 1, (None, None, None, pool))  # the right pooled size


# -- thresholding to packed output bits: a conv writes the next binary conv's packed input ------
def _planes_reference(y, consumer) -> np.ndarray:
    """What the consumer's own C packing makes of the float y: sign bits of y + shift, 64
    channels per word, in its padded plane (border +1 = bit 0, or -1 = bit 1)."""
    n, c, h, w = y.shape
    (pt, pb), (pl, pr) = consumer.pads
    shift = 0 if consumer.shift is None else consumer.shift.reshape(1, -1, 1, 1)
    neg = np.zeros((n, ops.n_words(c) * 64, h + pt + pb, w + pl + pr), bool)
    if consumer.pad_value == -1:
        neg[:, :c] = True
    neg[:, :c, pt : pt + h, pl : pl + w] = ~((y + shift) >= 0)
    words = np.packbits(neg.transpose(0, 2, 3, 1), axis=-1, bitorder="little").view("<u8")  # (n, Hp, Wp, Wc)
    return np.ascontiguousarray(words.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    "cout, pv, k, s, extras",
    [(70, 0, 3, 1, False), (13, -1, 3, 2, True), (64, 1, 1, 1, True), (128, 0, 7, 1, True)],
)
def test_packed_output_bits_are_what_the_next_conv_would_pack(isa, cout, pv, k, s, extras):
    producer = _conv(37, cout, 3, s, 1, 1, 0, extras=True, seed=21)
    # XNOR's beta needs the float input: such a pair is never fused
    consumer = _conv(cout, 11, k, 1, 1, k // 2, pv, extras, seed=22, mean_abs=False)
    post = _post(cout, affine=True, clamp=(-1.0, 1.0))
    x = _inputs(37, 15, 13)
    x[1, :, 3, 3] = np.nan  # NaN floats must become -1 bits
    floats = FusedBinaryConv(_with(producer, isa), post)(x)
    expected_planes = _planes_reference(floats, consumer)
    expected_out = _with(consumer, isa)(floats)
    for threads in (1, 2):
        packed = FusedBinaryConv(_with(producer, isa, threads), post, bits_for=consumer)(x)
        assert isinstance(packed, ops.PackedActs) and packed.shape == floats.shape
        assert np.array_equal(packed.planes, expected_planes), (isa, threads)
        got = _with(consumer, isa, threads)(packed)
        assert np.array_equal(got, expected_out, equal_nan=True), (isa, threads)


def test_packed_input_planes_are_checked():
    conv = _conv(70, 8, 3, 1, 1, 1, 0, extras=False)
    y = np.empty((1, 8, 5, 5), np.float32)
    geom = (3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 0)
    cls, table = conv.correction_classes((5, 5), (5, 5))
    good = np.zeros((1, 2, 7, 7), np.uint64)
    base = (None, conv.packed, y, geom, None, cls, table, None, None, None, None, "auto", 1)
    kernels._xnor.bconv2d(*base, (None, None, None, None, None, (good, 70, 5, 5)))
    with pytest.raises(ValueError, match="input planes must be"):
        kernels._xnor.bconv2d(
            *base, (None, None, None, None, None, (np.zeros((1, 1, 7, 7), np.uint64), 70, 5, 5))
        )
    with pytest.raises(ValueError, match="either x or packed"):
        kernels._xnor.bconv2d(*base)
    with pytest.raises(ValueError, match="output planes must be"):
        kernels._xnor.bconv2d(
            *base,
            (None, None, None, None, (np.zeros((1, 1, 5, 7), np.uint64), None, 1, 1, 0), (good, 70, 5, 5)),
        )


def test_a_narrow_conv_writes_floats_for_its_reader_to_pack():
    """Below fusion.PACKED_OUTPUT_MIN_CHANNELS the bits epilogue costs more than it saves."""
    from biagent.runtimes.custom.fusion import PACKED_OUTPUT_MIN_CHANNELS

    data = _block_artifact(["a2"], c=PACKED_OUTPUT_MIN_CHANNELS - 16)
    fused, plain = load_artifact(data, KERNELS), load_artifact(data, KERNELS, fuse=False)
    assert not any(n.op.endswith("+sign") for n in fused.nodes), [n.op for n in fused.nodes]
    x = (
        np.random.default_rng(8)
        .standard_normal((2, PACKED_OUTPUT_MIN_CHANNELS - 16, 9, 11))
        .astype(np.float32)
    )
    assert np.array_equal(fused.run([x])[0], plain.run([x])[0])


def test_a_block_whose_first_conv_feeds_only_the_second_writes_bits():
    data = _block_artifact(["a2"])
    fused, plain = load_artifact(data, KERNELS), load_artifact(data, KERNELS, fuse=False)
    assert [n.op for n in fused.nodes] == [
        "binary_conv+channel_affine+add+hardtanh+sign",
        "binary_conv+channel_affine+hardtanh",
    ]
    x = (np.random.default_rng(7).standard_normal((2, 70, 9, 11)) * 2).astype(np.float32)
    x[1, 5, 2, 2] = np.nan
    assert np.array_equal(fused.run([x])[0], plain.run([x])[0], equal_nan=True)


# -- layers big enough to run on 2 threads (the small shapes above stay on one) ---------------------
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    "cin, cout, size",
    [(64, 64, 56), (300, 40, 13), (512, 232, 4)],
    ids=["positions-split", "positions-split-5-words", "channels-split"],
)
def test_two_thread_layers_equal_the_reference(isa, cin, cout, size):
    conv = _conv(cin, cout, 3, 1, 1, 1, 0, extras=True, seed=31, mean_abs=False)
    consumer = _conv(cout, 16, 3, 1, 1, 1, -1, extras=False, seed=32)
    post = _post(cout, affine=True, residual=True, clamp=(-1.0, 1.0))
    x = _inputs(cin, size, size, n=1)
    residual = _residual((1, cout, size, size))
    floats = _separately(conv, post, x, residual)
    conv = _with(conv, isa, 2)
    assert np.array_equal(conv(x), _reference(conv, x))
    assert np.array_equal(FusedBinaryConv(conv, post)(x, residual), floats, equal_nan=True)
    packed = FusedBinaryConv(conv, post, bits_for=consumer)(x, residual)
    assert np.array_equal(packed.planes, _planes_reference(floats, consumer))
