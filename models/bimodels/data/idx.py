"""IDX files (MNIST, Fashion-MNIST): a magic number, the dimensions, then the raw array.

Layout: two zero bytes, one byte for the element type (0x08 unsigned byte, 0x09 signed
byte, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), one byte for the number of
dimensions, then each dimension as a big-endian uint32, then the data in C order, big
endian. Files may be gzip-compressed (`.gz`), as Debian ships Fashion-MNIST.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    path = Path(path)
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(path, f"cannot read or decompress: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES:
        raise DataError(path, "not an IDX file (bad magic number)")
    ndim = raw[3]
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise DataError(path, f"IDX header declares {ndim} dimensions but the file ends inside the header")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_TYPES[raw[2]])
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != need:
        raise DataError(
            path, f"IDX header declares shape {shape} ({need} bytes of data), the file has {len(body)}"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """The inverse of `read_idx` (fixtures and tests)."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _TYPES.items()}
    code = codes[array.dtype.newbyteorder("=")]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.dtype(_TYPES[code])).tobytes()
    Path(path).write_bytes(gzip.compress(data) if str(path).endswith(".gz") else data)
