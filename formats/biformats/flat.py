"""A bounds-checked FlatBuffers reader: the daBNN and TFLite checks read untrusted uploads with it.

No `flatbuffers` package needed (the agent's base install has none), and every offset is
checked against the buffer, so a corrupt file is a ValueError here instead of a crash in a
native runtime that trusts it.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

#: field kinds: scalars (struct formats) and numeric vectors (numpy dtypes)
SCALARS = {"u8": "<B", "i8": "<b", "bool": "<?", "i32": "<i", "u32": "<I", "u64": "<Q"}
VECTOR_DTYPES = {"u8v": "<u1", "i32v": "<i4", "u32v": "<u4", "u64v": "<u8", "f32v": "<f4"}


class FlatReader:
    """Bounds-checked reads of a FlatBuffers buffer; a bad offset is a ValueError."""

    def __init__(self, buf: bytes):
        self.buf = buf

    def u(self, fmt: str, pos: int) -> Any:
        if pos < 0 or pos + struct.calcsize(fmt) > len(self.buf):
            raise ValueError("offset outside the file")
        return struct.unpack_from(fmt, self.buf, pos)[0]

    def field(self, table: int, slot: int) -> int:
        """Absolute position of a field, or 0 when absent."""
        vtable = table - self.u("<i", table)
        size = self.u("<H", vtable)
        at = 4 + 2 * slot
        if at + 2 > size:
            return 0
        rel = self.u("<H", vtable + at)
        return table + rel if rel else 0

    def ref(self, pos: int) -> int:
        return pos + self.u("<I", pos)

    def string_at(self, pos: int) -> str:
        start = self.ref(pos)
        n = self.u("<I", start)
        if start + 4 + n > len(self.buf):
            raise ValueError("string outside the file")
        return self.buf[start + 4 : start + 4 + n].decode("utf-8")

    def vector_at(self, pos: int) -> tuple[int, int]:
        start = self.ref(pos)
        return start + 4, self.u("<I", start)

    def read(self, table: int, fields: list[tuple[str, str]]) -> dict[str, Any]:
        """Fields of the table at `table` (slot = position in `fields`); absent fields are None."""
        self.check_table(table)
        out: dict[str, Any] = {}
        for slot, (name, kind) in enumerate(fields):
            pos = self.field(table, slot)
            if not pos:
                out[name] = None
            elif kind == "str":
                out[name] = self.string_at(pos)
            elif kind in VECTOR_DTYPES:
                start, n = self.vector_at(pos)
                dtype = np.dtype(VECTOR_DTYPES[kind])
                if n == 0:
                    out[name] = np.zeros(0, dtype.newbyteorder("="))
                    continue
                if start + n * dtype.itemsize > len(self.buf):
                    raise ValueError("vector outside the file")
                out[name] = np.frombuffer(self.buf, dtype, count=n, offset=start).astype(
                    dtype.newbyteorder("=")
                )
            elif kind in ("strv", "tabv"):
                start, n = self.vector_at(pos)
                items = [start + 4 * i for i in range(n)]
                out[name] = (
                    [self.string_at(p) for p in items] if kind == "strv" else [self.ref(p) for p in items]
                )
            elif kind == "tab":
                out[name] = self.ref(pos)
            else:
                out[name] = self.u(SCALARS[kind], pos)
        return out

    def check_table(self, table: int) -> None:
        """The table's vtable and its inline fields lie inside the buffer."""
        vtable = table - self.u("<i", table)
        size, inline = self.u("<H", vtable), self.u("<H", vtable + 2)
        if size < 4 or size % 2 or vtable + size > len(self.buf) or table + inline > len(self.buf):
            raise ValueError("table outside the file")
        for at in range(4, size, 2):
            rel = self.u("<H", vtable + at)
            if rel and rel >= inline:
                raise ValueError("field outside its table")
