"""Larq Compute Engine's model: a TFLite flatbuffer (file identifier ``TFL3``) with LCE's ops.

The exporter writes it with the TFLite schema module LCE's wheel ships
(`bimodels.export.lce`); the sign-bit layout of its binary weights and activations is
`biformats.bits.pack_lce_bits`. LCE's interpreter trusts the file: a truncated or damaged
flatbuffer can crash it. `check_tflite` walks every table the interpreter reads (model,
operator codes, subgraphs, tensors, operators, buffers), checks each offset against the file
and each index against its table, and names the first problem, before the interpreter sees
the bytes. The facts about LCE's ops are in docs/lce-format.md.
"""

from __future__ import annotations

import struct
from typing import Any

from . import FormatError
from .flat import FlatReader

IDENTIFIER = b"TFL3"
# Each table's fields in slot order (the TFLite schema); only what the check reads is typed.
MODEL_FIELDS = [
    ("version", "u32"),
    ("operator_codes", "tabv"),
    ("subgraphs", "tabv"),
    ("description", "str"),
    ("buffers", "tabv"),
    ("metadata_buffer", "i32v"),
]
OPERATOR_CODE_FIELDS = [("deprecated_builtin_code", "i8"), ("custom_code", "str"), ("version", "i32")]
SUBGRAPH_FIELDS = [
    ("tensors", "tabv"),
    ("inputs", "i32v"),
    ("outputs", "i32v"),
    ("operators", "tabv"),
    ("name", "str"),
]
TENSOR_FIELDS = [
    ("shape", "i32v"),
    ("type", "i8"),
    ("buffer", "u32"),
    ("name", "str"),
    ("quantization", "tab"),
]
OPERATOR_FIELDS = [
    ("opcode_index", "u32"),
    ("inputs", "i32v"),
    ("outputs", "i32v"),
    ("builtin_options_type", "u8"),
    ("builtin_options", "tab"),
    ("custom_options", "u8v"),
]
BUFFER_FIELDS = [("data", "u8v"), ("offset", "u64"), ("size", "u64")]


def check_tflite(data: bytes) -> dict[str, Any]:
    """Structural check of a TFLite flatbuffer; FormatError naming the first problem.

    Returns a summary (version, number of subgraphs, tensors, operators, buffers, the custom
    op names) for messages and tests."""
    buf = bytes(data)
    if len(buf) < 8 or buf[4:8] != IDENTIFIER:
        raise FormatError("not a TFLite flatbuffer (file identifier TFL3 missing)")
    f = FlatReader(buf)
    where = "Model"
    try:
        model = f.read(f.ref(0), MODEL_FIELDS)
        for key in ("operator_codes", "subgraphs", "buffers"):
            if not model[key]:
                raise ValueError(f"Model.{key} is missing or empty")
        codes = []
        for i, pos in enumerate(model["operator_codes"]):
            where = f"operator_codes[{i}]"
            codes.append(f.read(pos, OPERATOR_CODE_FIELDS))
        n_buffers = len(model["buffers"])
        for i, pos in enumerate(model["buffers"]):
            where = f"buffers[{i}]"
            b = f.read(pos, BUFFER_FIELDS)
            if b["offset"] and (b["offset"] + (b["size"] or 0) > len(buf)):
                raise ValueError("its data lies past the end of the file")
        n_tensors = n_ops = 0
        for g, gpos in enumerate(model["subgraphs"]):
            where = f"subgraphs[{g}]"
            sub = f.read(gpos, SUBGRAPH_FIELDS)
            tensors = sub["tensors"] or []
            for t, tpos in enumerate(tensors):
                where = f"subgraphs[{g}].tensors[{t}]"
                tensor = f.read(tpos, TENSOR_FIELDS)
                if (tensor["buffer"] or 0) >= n_buffers:
                    raise ValueError(f"buffer index {tensor['buffer']} is out of range ({n_buffers} buffers)")
                if tensor["shape"] is not None and (tensor["shape"] < -1).any():
                    raise ValueError(f"shape {tensor['shape'].tolist()} has a negative size")
                if tensor["quantization"] is not None:
                    f.check_table(tensor["quantization"])
            for key in ("inputs", "outputs"):
                _indices(sub[key], len(tensors), f"{key}", allow_optional=False)
            for o, opos in enumerate(sub["operators"] or []):
                where = f"subgraphs[{g}].operators[{o}]"
                op = f.read(opos, OPERATOR_FIELDS)
                if (op["opcode_index"] or 0) >= len(codes):
                    raise ValueError(
                        f"opcode index {op['opcode_index']} is out of range ({len(codes)} codes)"
                    )
                _indices(op["inputs"], len(tensors), "inputs", allow_optional=True)
                _indices(op["outputs"], len(tensors), "outputs", allow_optional=False)
                if op["builtin_options"] is not None:
                    f.check_table(op["builtin_options"])
            n_tensors, n_ops = n_tensors + len(tensors), n_ops + len(sub["operators"] or [])
    except FormatError:
        raise
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        raise FormatError(f"damaged TFLite flatbuffer at {where}: {exc}") from None
    return {
        "version": model["version"],
        "subgraphs": len(model["subgraphs"]),
        "tensors": n_tensors,
        "operators": n_ops,
        "buffers": n_buffers,
        "custom_ops": sorted({c["custom_code"] for c in codes if c["custom_code"]}),
    }


def _indices(values: Any, n: int, what: str, allow_optional: bool) -> None:
    if values is None:
        return
    low = -1 if allow_optional else 0  # -1 marks an omitted optional input
    bad = [int(v) for v in values if not low <= v < n]
    if bad:
        raise ValueError(f"{what} name tensor(s) {bad} of {n}")


__all__ = ["IDENTIFIER", "check_tflite"]
