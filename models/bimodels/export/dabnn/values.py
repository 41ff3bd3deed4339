"""How the daBNN lowering holds IR values and the layer groups it emits, and its refusal."""

from __future__ import annotations

from dataclasses import dataclass, field

from biformats.dabnn import DabLayer

RUNTIME = "daBNN"  # how messages name the target


class Refuse(Exception):
    """One thing daBNN cannot express (collected per kind, then raised as one ExportError)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@dataclass
class Val:
    """An IR value as daBNN holds it."""

    dab: str  # the daBNN blob name
    shape: tuple[int, ...]  # the torch shape (batch 1)
    root: str  # the IR value whose buffer this is an alias of (flatten / identity)
    flat_of: tuple[int, int, int] | None = None  # (C, H, W) when a flatten of an H x W map, H*W > 1
    relu_of: str | None = None  # the ReLU node whose zeros this value may carry

    @property
    def hwc(self) -> tuple[int, int, int]:
        if self.flat_of is not None:
            c, h, w = self.flat_of
            return h, w, c
        if len(self.shape) == 4:
            return self.shape[2], self.shape[3], self.shape[1]
        return 1, 1, self.shape[1]


@dataclass
class Group:
    """The daBNN layers of one IR node (or a binary conv fused with its batch norm)."""

    node: str
    reads: list[str]
    writes: str
    layers: list[DabLayer]
    clobbers: str | None = None  # IR value whose buffer the first in-place layer overwrites
    clobber_op: str = ""
    index: int = 0
    deps: set[int] = field(default_factory=set)
