"""Exporters: a registry of formats, each turning a (binarized) model into artifact bytes.

An exporter either produces a valid artifact or raises `ExportError` naming the operator
it cannot express; it never writes a partial file. It returns the artifact with what it had
to add: the float ops the format needed where it has no binary kernel (the deployability
matrix reads that, for every format alike).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from torch import Tensor, nn

from biformats import get_format

from ..registry import Registry


class ExportError(RuntimeError):
    """The model cannot be expressed in the target format; the message names the operator."""


@dataclass(frozen=True)
class ExportResult:
    data: bytes
    #: float op -> number of binarized layers that needed it ("composite"); empty = native
    extra_ops: dict[str, int] = field(default_factory=dict)


Exporter = Callable[[nn.Module, Tensor], ExportResult]
EXPORTERS: Registry[Exporter] = Registry("export format")
E = TypeVar("E", bound=Exporter)


def register_exporter(name: str) -> Callable[[E], E]:
    """Register the exporter of a format that biformats defines (by its canonical name).

    The exporter stays callable as it is, with its own result type (a subclass of
    ExportResult may carry more detail: LCE's per-layer paths)."""
    if get_format(name).name != name:
        raise ValueError(
            f"register the exporter under the format's name {get_format(name).name!r}, not {name!r}"
        )

    def decorator(fn: E) -> E:
        EXPORTERS.register(name)(fn)
        return fn

    return decorator


def list_formats() -> list[str]:
    return EXPORTERS.names()


def export_with_report(model: nn.Module, format: str, example_input: Tensor) -> ExportResult:
    """Export `model` (eval semantics) to `format`: the artifact and what the format needed."""
    return EXPORTERS.get(format)(model, example_input)


def export(model: nn.Module, format: str, example_input: Tensor) -> bytes:
    """Export `model` (eval semantics) to `format`; returns the artifact's bytes."""
    return export_with_report(model, format, example_input).data


from . import custom as _custom  # noqa: E402,F401  (registers "custom")
from . import dabnn as _dabnn  # noqa: E402,F401  (registers "dabnn")
from . import lce as _lce  # noqa: E402,F401  (registers "lce")
from . import onnx as _onnx  # noqa: E402,F401  (registers "onnx")

__all__ = [
    "EXPORTERS",
    "ExportError",
    "ExportResult",
    "export",
    "export_with_report",
    "list_formats",
    "register_exporter",
]
