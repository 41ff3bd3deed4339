"""The custom runtime's ops: numpy only (no torch: this runs on the boards), C kernels where built.

* common: the C-or-numpy switch (`compiled`) and window geometry shared by every op,
* xnor: packed bits, the XNOR-popcount dot (numpy reference and C), the weight layouts,
* binary: the binary_conv op (BinaryLayer; BinaryConvReference, BinaryConvGemm, BinaryConvC),
* conv: the full-precision conv (ConvReference, ConvC) and the stem's fused nodes,
* elementwise: affine, clamp, prelu, linear and the pools,
* simple: the parameter-only ops as classes the whole-graph planner can read,
* layout: constants, reshape, transpose, expand, slice, select and the embedding lookup,
* transformer: layer norm, GELU, tanh, softmax, arithmetic with a constant, batched matmul.

Each op takes the model's KernelSettings (settings.py) when it is built. The names below
are what the engine, the fusion passes and the tests use; the tuning constants stay in
their modules (set them there).
"""

from biformats.bits import n_words, pack_rows, unpack_signs

from .binary import (
    BinaryConv,
    BinaryConvC,
    BinaryConvGemm,
    BinaryConvReference,
    BinaryLayer,
    PackedActs,
    PostOps,
    make_binary_conv,
)
from .common import compiled, geometry2d, out_size, out_spatial, pad_spatial, tap_slices, windows
from .conv import Conv, ConvC, ConvReference, StemPost, make_conv
from .elementwise import (
    ChannelAffine,
    Clamp,
    MaxPool,
    avg_pool,
    channel_affine,
    clamp,
    linear,
    max_pool,
    prelu,
)
from .layout import Constant, Embedding, Expand, Reshape, Select, Slice, Transpose
from .simple import Add, AvgPool, Concat, Flatten, Identity, Linear, PRelu, Reduce, Relu
from .transformer import Gelu, LayerNorm, MatMul, Scalar, Softmax, Tanh
from .xnor import channel_packed_weights, patch_words, popcount_lut8, xnor_gemm, xnor_popcount_dot

__all__ = [
    "Constant",
    "Embedding",
    "Expand",
    "Gelu",
    "LayerNorm",
    "MatMul",
    "Reshape",
    "Scalar",
    "Select",
    "Slice",
    "Softmax",
    "Tanh",
    "Transpose",
    "Add",
    "AvgPool",
    "Concat",
    "Flatten",
    "Identity",
    "Linear",
    "PRelu",
    "Reduce",
    "Relu",
    "BinaryConv",
    "BinaryConvC",
    "BinaryConvGemm",
    "BinaryConvReference",
    "BinaryLayer",
    "ChannelAffine",
    "Clamp",
    "Conv",
    "ConvC",
    "ConvReference",
    "MaxPool",
    "PackedActs",
    "PostOps",
    "StemPost",
    "avg_pool",
    "channel_affine",
    "channel_packed_weights",
    "patch_words",
    "clamp",
    "compiled",
    "geometry2d",
    "linear",
    "make_binary_conv",
    "make_conv",
    "max_pool",
    "n_words",
    "out_size",
    "out_spatial",
    "pack_rows",
    "pad_spatial",
    "popcount_lut8",
    "prelu",
    "tap_slices",
    "unpack_signs",
    "windows",
    "xnor_gemm",
    "xnor_popcount_dot",
]
