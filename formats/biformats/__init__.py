"""biformats: the artifact formats, defined once for the exporters (host) and the runtimes (agent).

Torch-free and light (numpy; `flatbuffers` only to *write* a daBNN model), so the agent can
read what the host writes with the very same definitions: sign-bit packing (`bits`), the
custom runtime's container (`custom`), daBNN's FlatBuffers tables, reader and writer
(`dabnn`). Each format is registered here by name with what a binarized model must look like
to run on it (`binary_pad_value`); exporters register under these names and runtimes list
them, so a new format is one `Format` entry plus its module.
"""

from __future__ import annotations

from dataclasses import dataclass


class FormatError(ValueError):
    """Bytes that are not a valid artifact of the format; the message says what is wrong."""


class UnknownFormat(KeyError):
    def __init__(self, name: str):
        super().__init__(f"unknown artifact format {name!r}; known formats: {', '.join(FORMATS)}")

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Format:
    name: str
    summary: str
    #: other names a runtime or an upload may use for it (file suffixes, mostly)
    aliases: tuple[str, ...] = ()
    #: what a padded tap of a binary conv means in this format: 0 is PyTorch's zero padding;
    #: daBNN pads binary convs with -1 and has no way to correct for another value
    binary_pad_value: float = 0.0


FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    taken = {n for f in FORMATS.values() if f.name != fmt.name for n in (f.name, *f.aliases)}
    clash = taken & {fmt.name, *fmt.aliases}
    if clash:
        raise ValueError(f"format name(s) {sorted(clash)} are already registered")
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> Format:
    """The format called `name` or one of its aliases."""
    if name in FORMATS:
        return FORMATS[name]
    for fmt in FORMATS.values():
        if name in fmt.aliases:
            return fmt
    raise UnknownFormat(name)


def list_formats() -> list[str]:
    return list(FORMATS)


register_format(Format("onnx", "ONNX model of standard ops (opset 17); binary layers as constant +/-1 convs"))
register_format(Format("custom", "this project's zip of graph.json and packed tensors (biformats.custom)"))
register_format(Format("lce", "Larq Compute Engine TFLite flatbuffer", aliases=("tflite",)))
register_format(
    Format("dabnn", "daBNN FlatBuffers model (biformats.dabnn)", aliases=("dab",), binary_pad_value=-1.0)
)

__all__ = [
    "FORMATS",
    "Format",
    "FormatError",
    "UnknownFormat",
    "get_format",
    "list_formats",
    "register_format",
]
