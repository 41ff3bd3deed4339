"""The custom runtime's artifact: a zip of ``graph.json`` and ``tensors.npz``, written and read here.

The exporter (`bimodels.export.custom`) stores the traced IR (`bimodels.export.ir` declares
the op list below) with `write_artifact`; the runtime (`biagent.runtimes.custom`) calls `read_artifact` and checks
each op's attributes as it builds its graph. Bit packing is `biformats.bits` (custom layout).

Artifact format, version 1 (the contract between exporter and kernels)
======================================================================

The artifact is a zip archive (ZIP_STORED, every entry dated 1980-01-01 00:00:00, entries
in a fixed order, so one model always gives the same bytes) with two members:

* ``graph.json``: UTF-8 JSON::

      {"format": "bibench-custom", "version": 1,
       "inputs":  [{"name": "input", "shape": [B, ...], "dtype": "float32" | "int64"}],
       "outputs": ["output"],
       "nodes":   [{"op": ..., "name": ..., "inputs": [value names], "outputs": [value names],
                    "attrs": {...}}, ...]}

  ``shape`` is the example input's shape; axis 0 is the batch axis and may take any size
  at run time (every other axis is fixed). Nodes are in execution (topological) order;
  each reads values produced by the graph inputs or by earlier nodes and produces exactly
  one new value (names are unique). An attr that names a tensor holds its key in
  ``tensors.npz``; an optional tensor attr is ``null`` when absent. Axes in attrs are
  non-negative and count the batch axis. Every value is a C-ordered float32 array, except
  an int64 input (token ids), which only ``embedding`` reads; conv and pool values are
  (N, C, L) or (N, C, H, W), channel-wise ops act on axis 1. A ``constant`` has no batch
  axis of its own: only ``add`` reads one, broadcasting it.

* ``tensors.npz``: a zip (same rules) of ``<key>.npy`` members written by
  ``numpy.lib.format.write_array``, loadable with ``numpy.load``. Float tensors are
  little-endian float32 (``<f4``); packed bits are little-endian uint64 (``<u8``).

Ops (x = the first input, N = batch, C = channels, ``pads`` = [[before, after]] per
spatial axis, ``stride``/``dilation``/``kernel`` = one int per spatial axis):

``binary_conv`` (kind: "conv1d" | "conv2d" | "linear") -- a binarized layer in its
  DeployForm. attrs: kind, weight_bits (tensor), weight_shape ([C_out, C_in/groups, *kernel]
  or [out, in] for linear), k (bits per output channel), stride, dilation, pads, groups
  (convs only), pad_value (0, 1 or -1; convs only), and the optional float32 tensors
  input_shift (C_in,), weight_scale (C_out,), channel_scale (C_out,), output_gain
  (broadcasts against the output without its batch axis), bias (C_out,), plus input_scale
  ("mean_abs" or null). It computes::

      s   = sign(x + input_shift)          sign(t) = +1 if t >= 0 else -1 (NaN -> -1)
      dot = conv(pad(s, pads, pad_value), sign weights)   exact integers; pad_value 0 means
                                            a padded tap contributes 0
      y   = dot * weight_scale             (the float32 product, in this order, each factor
      y   = y * mean(|x|)                   only if present; mean(|x|) is float32 over all
      y   = y * channel_scale               non-batch axes for convs, over the last axis
                                            for linear, summation order unspecified)
      y   = y * output_gain
      y   = y + bias

  Linear acts on the last axis of an input of any rank >= 2.

  Bit packing. For output channel (row) o, its weights are flattened in PyTorch order,
  (C_in/groups, kh, kw) for conv2d, (C_in/groups, kw) for conv1d, (in,) for linear, giving
  K = k bits. Bit i of the row is 1 when the weight is -1 and 0 when it is +1; it is stored
  in word i // 64 at bit position i % 64 (LSB first), in W = ceil(K / 64) uint64 words, so
  weight_bits has shape (C_out, W). Bits K..64W-1 of the last word are 0. Activations are
  packed the same way: the im2col patch of one output position, in the same (c, kh, kw)
  order over the group's input channels, bit = 1 where the binarized input is -1. Both
  operands have zero tail bits, so for one output position and channel::

      dot = K - 2 * popcount(act_words XOR weight_words)      (summed over the W words)

  Padded taps: pad_value +1 is packed as bit 0 and -1 as bit 1, with no correction.
  pad_value 0 (the reference zero padding) packs padded taps as bit 0 (+1) and subtracts,
  per output position and channel, the sum of the weight signs over that position's padded
  taps (input independent: cache it per input size). With groups g, output channels
  [j*C_out/g, (j+1)*C_out/g) read input channels [j*C_in/g, (j+1)*C_in/g).

``conv`` -- full-precision Conv1d/Conv2d (zero padding). attrs: weight (C_out, C_in/groups,
  *kernel), bias (C_out,) or null, stride, dilation, pads, groups.
``linear`` -- y = x @ weight.T + bias over the last axis. attrs: weight (out, in), bias or null.
``channel_affine`` -- eval batch norm: y = fma(x, scale[c], shift[c]) on axis 1 (one
  rounding, as torch's CPU kernel does). attrs: scale, shift (C,). The exporter computes
  scale = weight * (1 / sqrt(running_var + eps)) and shift = fma(-running_mean, scale, bias)
  in float32, exactly as torch's eval batch norm.
``relu``; ``hardtanh`` (attrs: min_val, max_val); ``prelu`` (attrs: weight, (C,) applied
  on axis 1 or (1,)): y = x if x > 0 else weight * x.
``max_pool`` (attrs: kernel, stride, pads, dilation; padded taps are -inf) and ``avg_pool``
  (attrs: kernel, stride, pads, count_include_pad; padded taps are 0; the window sum in
  row-major tap order, divided by the kernel size, or with count_include_pad false by the
  number of taps inside the input).
``reduce_mean`` / ``reduce_max`` (attrs: axes, keepdims).
``flatten`` (attrs: start, end; axes start..end inclusive become one). ``add`` (two inputs, numpy broadcasting).
``concat`` (any number of inputs; attrs: axis). ``identity``.

The ops below carry token models (BERT), PointNet's T-Nets, part segmentation and the SSD
head. Shapes in attrs leave out the batch axis, which every op keeps on axis 0.

``constant`` (no inputs; attrs: value) -- a value the input cannot change (a registered
  buffer, a position embedding), folded by the exporter.
``embedding`` (attrs: weight (vocab, dim)) -- weight[ids] for int64 ids of any shape; an id
  outside [0, vocab) is an error, never a read.
``layer_norm`` (attrs: normalized_shape, weight and bias of that shape or null, eps) -- over
  the trailing axes: rstd = 1 / sqrt(var + eps) (biased variance), then, in float32,
  y = (x * rstd + (-rstd * mean)) * weight + bias.
``gelu`` (attrs: approximate "none" | "tanh") -- in float32 and this order:
  (x * 0.5) * (1 + erf(x * float32(sqrt(1/2)))), or 0.5 * x * (1 + tanh(b * (x + 0.044715 *
  x^3))) with b = float32(sqrt(2 / pi)).
``tanh``; ``softmax`` (attrs: axis >= 1) -- e = exp(x - max), then e * float32(1 / sum(e)).
``scalar`` (attrs: fn "add" | "sub" | "mul" | "div" | "rsub" | "rdiv", value) -- x (fn)
  float32(value); rsub and rdiv put the value on the left.
``matmul`` (two inputs of rank >= 3) -- numpy's matmul: the last two axes are matrices, the
  leading ones broadcast.
``reshape`` (attrs: shape) -- to (N, *shape), C order. ``transpose`` (attrs: perm, a
  permutation with perm[0] = 0). ``expand`` (attrs: shape) -- broadcast to (N, *shape).
``slice`` (attrs: axis >= 1, start, stop, step >= 1; 0 <= start < stop <= size) and
  ``select`` (attrs: axis >= 1, index) -- x[..., start:stop:step, ...] and x[..., index, ...]
  (the axis removed).

A reader must reject an unknown format name, version or op, a missing tensor, a tensor of
the wrong dtype or shape, and a graph whose shapes do not chain.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import FormatError

FORMAT, VERSION = "bibench-custom", 1
GRAPH, TENSORS = "graph.json", "tensors.npz"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


# -- writing ------------------------------------------------------------------------------
def write_zip(members: list[tuple[str, bytes]]) -> bytes:
    """A deterministic ZIP_STORED archive of (name, data) in the given order."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def write_npz(tensors: dict[str, np.ndarray]) -> bytes:
    """tensors.npz: one little-endian ``<key>.npy`` per tensor, in the dict's order."""
    members = []
    for key, arr in tensors.items():
        out = io.BytesIO()
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))  # little-endian on any host
        np.lib.format.write_array(out, arr, allow_pickle=False)
        members.append((f"{key}.npy", out.getvalue()))
    return write_zip(members)


def write_artifact(
    inputs: list[dict[str, Any]],
    outputs: list[str],
    nodes: list[dict[str, Any]],
    tensors: dict[str, np.ndarray],
) -> bytes:
    """The artifact's bytes: same graph and tensors, same bytes."""
    doc = {"format": FORMAT, "version": VERSION, "inputs": inputs, "outputs": outputs, "nodes": nodes}
    graph_json = json.dumps(doc, indent=1, sort_keys=False).encode("utf-8")
    return write_zip([(GRAPH, graph_json), (TENSORS, write_npz(tensors))])


# -- reading ------------------------------------------------------------------------------
@dataclass
class Artifact:
    """graph.json as parsed JSON (header checked) and the tensors by key."""

    doc: dict[str, Any]
    tensors: dict[str, np.ndarray]


def read_artifact(data: bytes) -> Artifact:
    """Parse an artifact's container and header; FormatError says what is wrong.

    The graph itself (ops, attributes, shapes) is checked by the runtime that builds it."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FormatError(f"custom artifact must be bytes, got {type(data).__name__}")
    try:
        with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
            names = set(zf.namelist())
            for member in (GRAPH, TENSORS):
                if member not in names:
                    raise FormatError(f"custom artifact has no {member} (members: {sorted(names)})")
            graph_bytes, npz_bytes = zf.read(GRAPH), zf.read(TENSORS)
    except FormatError:
        raise
    except Exception as exc:  # BadZipFile, truncated data, CRC errors, ...
        raise FormatError(
            f"custom artifact is not a readable zip archive: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        doc = json.loads(graph_bytes.decode("utf-8"))
    except Exception as exc:
        raise FormatError(f"graph.json is not valid UTF-8 JSON: {exc}") from exc
    check_header(doc)  # a newer version may store its tensors differently: say so first
    return Artifact(doc, read_npz(npz_bytes))


def read_npz(data: bytes) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except Exception as exc:
        raise FormatError(f"tensors.npz is not a readable npz archive: {type(exc).__name__}: {exc}") from exc


def check_header(doc: Any) -> None:
    if not isinstance(doc, dict):
        raise FormatError("graph.json must hold a JSON object")
    if doc.get("format") != FORMAT:
        raise FormatError(f"graph.json format must be {FORMAT!r}, got {doc.get('format')!r}")
    version = doc.get("version")
    if not (version == VERSION and type(version) is int):
        raise FormatError(
            f"unsupported custom format version {version!r}; this runtime reads version {VERSION}"
        )


__all__ = [
    "FORMAT",
    "VERSION",
    "Artifact",
    "read_artifact",
    "read_npz",
    "write_artifact",
    "write_npz",
    "write_zip",
]
