"""daBNN's ``.dab`` model: its FlatBuffers tables, a writer, and a dependency-free reader.

A ``.dab`` is a FlatBuffers buffer of namespace ``flatbnn``: root table ``Model`` (layers,
initializers, inputs, version 2), no file identifier. The tables below are the schema's
slot order; docs/dabnn-format.md has the facts about the format and the runtime.

Writing needs the ``flatbuffers`` package (the host's exporter); reading does not (the agent
reads what it needs with the bounds-checked reader below, on a board without it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import FormatError
from .flat import VECTOR_DTYPES, FlatReader

VERSION = 2
INPUT_NAME = "input"

DATA_TYPES = {"Float32": 0, "Bit": 1}
LAYER_TYPES = {
    "FpConv2D": 0,
    "AvePool": 1,
    "MaxPool": 2,
    "Relu": 3,
    "Softmax": 4,
    "FC": 5,
    "Add": 6,
    "Concat": 7,
    "BinConv2D": 8,
    "Affine": 9,
    "Binarize": 10,
    "Split": 11,
    "Shuffle": 12,
    "PRelu": 13,
}
# Layer table: the slot of each layer type's parameter sub-table; slot 14 is the layer name.
PARAM_SLOTS = {
    "FpConv2D": 1,
    "BinConv2D": 2,
    "AvePool": 3,
    "MaxPool": 4,
    "Relu": 5,
    "Softmax": 6,
    "FC": 7,
    "Add": 8,
    "Concat": 9,
    "Affine": 10,
    "Binarize": 11,
    "Split": 12,
    "Shuffle": 13,
    "PRelu": 15,
}
LAYER_NAME_SLOT, LAYER_SLOTS = 14, 16

_CONV = [
    ("input", "str"),
    ("weight", "str"),
    ("bias", "str"),
    ("pads", "i32v"),
    ("strides", "i32v"),
    ("dilations", "i32v"),
    ("output", "str"),
]
_POOL = [("input", "str"), ("kernel_shape", "i32v"), ("pads", "i32v"), ("strides", "i32v"), ("output", "str")]
_UNARY = [("input", "str"), ("output", "str")]
#: per parameter table, its fields in slot order: (name, kind)
PARAM_FIELDS: dict[str, list[tuple[str, str]]] = {
    "FpConv2D": _CONV,
    "BinConv2D": _CONV,
    "AvePool": _POOL,
    "MaxPool": _POOL,
    "Relu": _UNARY,
    "Softmax": _UNARY,
    "Binarize": _UNARY,
    "Shuffle": _UNARY,
    "FC": [("input", "str"), ("weight", "str"), ("bias", "str"), ("output", "str")],
    "Add": [("input1", "str"), ("input2", "str"), ("output", "str")],
    "Concat": [("inputs", "strv"), ("axis", "i32"), ("output", "str")],
    "Split": [("input", "str"), ("outputs", "strv")],
    "Affine": [("input", "str"), ("a", "str"), ("b", "str"), ("output", "str")],
    "PRelu": [("input", "str"), ("slope", "str"), ("output", "str")],
}
TENSOR_FIELDS = [
    ("data_type", "u8"),
    ("bin_data", "u64v"),
    ("float32_data", "f32v"),
    ("shape", "u32v"),
    ("name", "str"),
    ("align_hwc_to_128", "bool"),
]
INPUT_FIELDS = [("shape", "u32v"), ("name", "str")]


# -- writing (flatbuffers' Builder) ----------------------------------------------------------
def _table(b: Any, nslots: int, fields: list[tuple[int, str, Any]]) -> int:
    """One table: fields are (slot, kind, value); offsets are created before the table starts."""
    ready = []
    for slot, kind, value in fields:
        if value is None:
            continue
        if kind == "str":
            value = b.CreateString(value)
        elif kind in VECTOR_DTYPES:
            value = b.CreateNumpyVector(np.ascontiguousarray(value, dtype=VECTOR_DTYPES[kind]).reshape(-1))
        elif kind in ("strv", "tabv"):
            offsets = [b.CreateString(s) for s in value] if kind == "strv" else list(value)
            b.StartVector(4, len(offsets), 4)
            for off in reversed(offsets):
                b.PrependUOffsetTRelative(off)
            value = b.EndVector()
        ready.append((slot, kind, value))
    b.StartObject(nslots)
    for slot, kind, value in ready:
        if kind == "u8":
            b.PrependUint8Slot(slot, int(value), 0)
        elif kind == "bool":
            b.PrependBoolSlot(slot, bool(value), False)
        elif kind == "i32":
            b.PrependInt32Slot(slot, int(value), 0)
        elif kind == "u32":
            b.PrependUint32Slot(slot, int(value), 0)
        else:  # strings, vectors, sub-tables
            b.PrependUOffsetTRelativeSlot(slot, value, 0)
    return b.EndObject()


@dataclass
class DabLayer:
    type: str
    params: dict[str, Any]
    name: str | None = None


@dataclass
class DabTensor:
    name: str
    shape: list[int]
    float32_data: np.ndarray | None = None  # Float32
    bin_data: np.ndarray | None = None  # Bit: uint64 words
    align_hwc_to_128: bool = False

    @property
    def data_type(self) -> str:
        return "Bit" if self.bin_data is not None else "Float32"


def write_dab(
    layers: list[DabLayer], initializers: list[DabTensor], input_name: str, input_shape: list[int]
) -> bytes:
    """Serialise a daBNN model (version 2, no file identifier)."""
    flatbuffers = _flatbuffers()
    b = flatbuffers.Builder(1 << 16)
    b.ForceDefaults(True)  # every scalar explicit (LayerType FpConv2D and DataType Float32 are 0)
    tensors = [
        _table(
            b,
            len(TENSOR_FIELDS),
            [
                (0, "u8", DATA_TYPES[t.data_type]),
                (1, "u64v", t.bin_data),
                (2, "f32v", t.float32_data),
                (3, "u32v", t.shape),
                (4, "str", t.name),
                (5, "bool", t.align_hwc_to_128),
            ],
        )
        for t in initializers
    ]
    layer_offsets = []
    for layer in layers:
        fields = PARAM_FIELDS[layer.type]
        unknown = set(layer.params) - {f for f, _ in fields}
        if unknown:
            raise FormatError(f"{layer.type} has no field(s) {sorted(unknown)}")
        param = _table(b, len(fields), [(i, kind, layer.params.get(f)) for i, (f, kind) in enumerate(fields)])
        layer_offsets.append(
            _table(
                b,
                LAYER_SLOTS,
                [
                    (0, "u8", LAYER_TYPES[layer.type]),
                    (PARAM_SLOTS[layer.type], "tab", param),
                    (LAYER_NAME_SLOT, "str", layer.name),
                ],
            )
        )
    inp = _table(b, len(INPUT_FIELDS), [(0, "u32v", input_shape), (1, "str", input_name)])
    model = _table(
        b, 4, [(0, "tabv", layer_offsets), (1, "tabv", tensors), (2, "tabv", [inp]), (3, "u32", VERSION)]
    )
    b.Finish(model)  # no file identifier: daBNN's schema declares none
    return bytes(b.Output())


# -- reading: bounds-checked, no flatbuffers package -------------------------------------------
def read_dab(data: bytes) -> dict[str, Any]:
    """Parse a ``.dab`` into plain Python (numpy arrays for vectors) with every field:

    ``{"version", "inputs": [{"name", "shape"}], "initializers": [{"name", "data_type"
    ("Float32" | "Bit"), "shape", "float32_data", "bin_data", "align_hwc_to_128"}],
    "layers": [{"type", "name", "params": {field: value}, "param_slots": [names of every
    parameter table present]}]}``. Absent fields are None. Raises FormatError (a ValueError)
    on a buffer that is not a daBNN model.
    """
    f = FlatReader(bytes(data))
    if len(f.buf) < 8:
        raise FormatError("not a daBNN model: shorter than a FlatBuffers header")
    try:
        model = f.read(
            f.ref(0), [("layers", "tabv"), ("initializers", "tabv"), ("inputs", "tabv"), ("version", "u32")]
        )
        for key in ("layers", "initializers", "inputs"):
            if model[key] is None:
                raise FormatError(f"not a daBNN model: Model.{key} is missing (daBNN requires it)")
        by_type = {v: k for k, v in LAYER_TYPES.items()}
        by_dtype = {v: k for k, v in DATA_TYPES.items()}
        inits = []
        for pos in model["initializers"]:
            t = f.read(pos, TENSOR_FIELDS)
            t["data_type"] = by_dtype.get(t["data_type"], t["data_type"])
            t["shape"] = None if t["shape"] is None else [int(s) for s in t["shape"]]
            t["align_hwc_to_128"] = bool(t["align_hwc_to_128"])
            inits.append(t)
        inputs = []
        for pos in model["inputs"]:
            i = f.read(pos, INPUT_FIELDS)
            inputs.append(
                {"name": i["name"], "shape": None if i["shape"] is None else [int(s) for s in i["shape"]]}
            )
        layers = []
        slot_names = {slot: name for name, slot in PARAM_SLOTS.items()}
        layer_fields: list[tuple[str, str]] = [("type", "u8")] + [
            (f"_{i}", "tab") for i in range(1, LAYER_SLOTS)
        ]
        layer_fields[LAYER_NAME_SLOT] = ("name", "str")
        for pos in model["layers"]:
            raw = f.read(pos, layer_fields)
            ltype = by_type.get(raw["type"] or 0)  # an absent type is the schema's default, FpConv2D
            if ltype is None:
                raise FormatError(f"not a daBNN model: unknown LayerType {raw['type']}")
            present = [
                slot_names[i]
                for i in range(1, LAYER_SLOTS)
                if i != LAYER_NAME_SLOT and raw[f"_{i}"] is not None
            ]
            ppos = raw[f"_{PARAM_SLOTS[ltype]}"]
            params = None if ppos is None else f.read(ppos, PARAM_FIELDS[ltype])
            if params:
                params = {
                    k: ([int(x) for x in v] if isinstance(v, np.ndarray) else v) for k, v in params.items()
                }
            layers.append({"type": ltype, "name": raw["name"], "params": params, "param_slots": present})
    except FormatError:
        raise
    except (ValueError, struct.error, UnicodeDecodeError) as exc:  # offsets out of the buffer
        raise FormatError(f"not a daBNN model: {exc}") from None
    return {"version": model["version"], "inputs": inputs, "initializers": inits, "layers": layers}


def inspect_dab(data: bytes) -> dict[str, Any]:
    """What a runtime checks before loading: version, input (name, NHWC shape), layer types,
    and the last layer's output (daBNN's output is the last layer's). FormatError if malformed."""
    model = read_dab(data)
    if not model["inputs"]:
        raise FormatError("not a daBNN model: the model has no input")
    first = model["inputs"][0]
    last = model["layers"][-1] if model["layers"] else None
    return {
        "version": model["version"] or 0,
        "input": first["name"],
        "input_shape": first["shape"] or [],
        "layer_types": [layer["type"] for layer in model["layers"]],
        "output": (last["params"] or {}).get("output") if last else None,
    }


def _flatbuffers() -> Any:
    try:
        import flatbuffers
    except ImportError as exc:  # the agent's base install reads .dab files but never writes them
        raise FormatError(
            "writing a daBNN model needs the flatbuffers package: pip install flatbuffers"
        ) from exc
    return flatbuffers


__all__ = [
    "DATA_TYPES",
    "LAYER_TYPES",
    "PARAM_FIELDS",
    "PARAM_SLOTS",
    "VERSION",
    "DabLayer",
    "DabTensor",
    "inspect_dab",
    "read_dab",
    "write_dab",
]
