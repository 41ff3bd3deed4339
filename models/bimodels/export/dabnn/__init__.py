"""Export to daBNN (JDAI-CV/dabnn): its FlatBuffers ``.dab`` model, written directly.

The model is traced into the IR (`bimodels.export.ir`) with `trace_ir(..., runtime="daBNN")`
and lowered op by op to daBNN layers: `lowering` (state, names, the walk), `layers` (float
ops), `binconv`, `limits` (the runtime's asserts), `schedule` (in-place order). The file's tables, its
writer and its reader are `biformats.dabnn`, shared with the agent's runtime. The facts
about the format and the runtime this relies on are in docs/dabnn-format.md.

Lowering (x = an IR value; daBNN activations are float32 NHWC with N = 1)
-----------------------------------------------------------------------
* input ``[1, C, H, W]`` -> ``Input`` ``[1, H, W, C]`` named ``input``; batch 1 only.
* ``conv`` -> ``FpConv2D``: weight OHWI ``[O, KH, KW, I]``, 1-D bias (zeros when the conv has
  none), pads ``[p, p, p, p]``, strides ``[s, s]``, dilations ``[1, 1]``.
* ``binary_conv`` (conv2d) -> ``BinConv2D`` then two ``Affine`` layers. The BinConv2D weight is a
  Bit tensor of logical shape ``[O, KH, KW, I]``: each filter flattened in (kh, kw, c) order
  (the IR packs (c, kh, kw): reordered here), bit 1 = +1, LSB first in 64-bit words; layout
  "unaligned" (K/64 words a filter) only for I == 64 with a 3x3 kernel and equal strides,
  otherwise "aligned" (each filter zero-padded to a multiple of 128 bits). BinConv2D returns
  the number of mismatching bits m, so the dot product is K - 2m (K = KH*KW*I): the first
  Affine (``a = -2``, ``b = K``) makes that integer exactly, the second carries ``a = s*g``,
  ``b = t + s*bias`` (one fused ``a*m + b`` cancels a large b against a*m, and its rounding
  flips signs the next binary layer takes near zero), where g is the product of the layer's
  per-channel factors (weight_scale alpha, channel_scale, and output_gain when it is
  per-channel) and (s, t) the following ``channel_affine`` (batch norm) when only this conv
  reads the conv's output, else (1, 0).
* ``channel_affine`` -> ``Affine``; ``relu`` -> ``Relu``; ``prelu`` -> ``PRelu``;
  ``add`` -> ``Add`` (input1 is the operand overwritten: the new branch, input2 the
  shortcut); ``concat`` of exactly two equal-channel maps on the channel axis -> ``Concat``
  (axis 3); ``max_pool`` -> ``MaxPool``; ``avg_pool`` (no padding) -> ``AvePool``;
  ``reduce_mean`` / ``reduce_max`` over H, W -> ``AvePool`` / ``MaxPool`` with kernel
  ``[H, W]``, stride ``[1, 1]``, pads 0 (daBNN's "global" form hangs, so it is never written).
* ``flatten`` and ``identity`` are aliases. ``linear`` -> ``FpConv2D`` whose kernel covers the
  map it reads: ``[O, 1, 1, C]`` after global pooling, ``[O, H, W, C]`` (reordered from
  PyTorch's C*H*W flatten order) after flattening an H x W map.
* The model ends at its logits (no Softmax: daBNN cannot run one).

Semantics and refusals (an ExportError names the operator and the node)
-----------------------------------------------------------------------
* daBNN binarizes ``x > 0 -> +1``, so an exact 0 becomes -1 where this project's sign gives +1
  (``sign(0) = +1``). Results agree on every input without exact zeros reaching a binary
  conv. A binary conv reading a ReLU's output (whose zeros are the common case) is refused.
* daBNN pads binary-conv inputs with -1. A binary conv with padding must be binarized with
  ``pad_value=-1`` (``bimodels.binarize(model, algo, pad_value=-1)``): exact. Zero padding
  (the reference) and +1 padding are refused.
* No daBNN layer for: Hardtanh (the binarized ResNets/VGG's activation; dropped where binary
  convs alone read it, since sign(hardtanh(x)) = sign(x); otherwise refused, and the
  compatibility matrix records those models as unsupported on daBNN), XNOR-Net's activation
  scale beta (``input_scale``), XNOR-Net++'s spatial gain Gamma (``output_gain`` varying over
  H, W), 1-D convs, grouped or dilated convs, binary linears, non-square maps/kernels/
  strides/pads, batch > 1.
* In-place layers (Affine, Relu, PRelu, Add into input1) overwrite their input's buffer. The
  layers are scheduled so that every other reader of that value runs first; when that is
  impossible (e.g. ReActNet's threshold, written as an in-place ``Affine(a=1, b=shift)``, on
  a tensor its shortcut also reads), or the value is the model input or output, the export
  is refused (no copies are inserted).
* Runtime limits that would assert, compute wrong values or corrupt memory (see
  docs/dabnn-format.md): the input and the tensors read by Affine/Add/pools need rows of
  W*C % 4 == 0 floats; a ReLU needs a multiple of 4 values; 2x2/3x3 max pools need C % 4 == 0;
  64-channel binary convs need an even map width; the aarch64 3x3 direct kernel's channel
  asserts; the BGEMM buffer size; the im2col size.
"""

from __future__ import annotations

from torch import Tensor, nn

from biformats.dabnn import write_dab

from ...layers import DeployedBinaryLayer, is_binary
from .. import ExportError, ExportResult, register_exporter
from ..trace import trace_ir
from . import binconv as _binconv  # noqa: F401  (registers binary_conv)
from . import layers as _layers  # noqa: F401  (registers the float ops)
from .lowering import LOWERINGS, RUNTIME, Lowering


def _algorithms(model: nn.Module) -> dict[str, str]:
    """fx node name of each binary layer -> its algorithm (for messages)."""
    return {
        name.replace(".", "_"): m.algorithm
        for name, m in model.named_modules()
        if is_binary(m) or isinstance(m, DeployedBinaryLayer)
    }


def lower(model: nn.Module, example_input: Tensor) -> Lowering:
    """The model lowered to daBNN layers (`Lowering.run` has run), or ExportError."""
    if isinstance(example_input, Tensor) and example_input.dim() >= 1 and example_input.shape[0] != 1:
        raise ExportError(
            f"{RUNTIME} runs batch 1 only (its input is [1, H, W, C] and it has no batch axis); the "
            f"example input has batch {example_input.shape[0]}: export with a batch-1 example input"
        )
    ir = trace_ir(model, example_input, runtime=RUNTIME, input_dtypes=("float32",))
    lowering = Lowering(ir, _algorithms(model))
    lowering.run()
    return lowering


@register_exporter("dabnn")
def export_dabnn(model: nn.Module, example_input: Tensor) -> ExportResult:
    """The model as a daBNN ``.dab`` (FlatBuffers, flatbnn version 2), with what had to be
    composed of several daBNN layers (-> how many times): the deployability matrix's
    'composite' cells."""
    lw = lower(model, example_input)
    return ExportResult(write_dab(lw.layers, lw.inits, lw.input_dab, lw.input_shape), dict(lw.extra))


__all__ = ["LOWERINGS", "export_dabnn", "lower"]
