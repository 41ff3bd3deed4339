"""CIFAR-10 "python version": `cifar-10-batches-py/` with `data_batch_1..5` and `test_batch`.

Each batch is a pickled dict with `b"data"` (N x 3072 uint8: 1024 red, 1024 green, 1024
blue values of a 32x32 image, row-major) and `b"labels"` (N ints in 0..9). The pickles hold
only numpy arrays, lists and strings, so they are read with a restricted unpickler that
refuses anything else (a pickle can otherwise run code).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from .errors import DataError

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"


# What a CIFAR batch's pickle may name: numpy's array reconstruction (b"data" is an ndarray)
# and the codec protocol 2 uses for byte strings. Anything else is refused.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a CIFAR batch holds only arrays, lists and strings"
        )


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        obj = _PlainUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(path, "file not found (expected the cifar-10-batches-py folder)") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(path, f"not a CIFAR-10 python batch: {exc}") from None
    if not isinstance(obj, dict) or b"data" not in obj or b"labels" not in obj:
        raise DataError(path, "not a CIFAR-10 python batch: expected a dict with b'data' and b'labels'")
    data, labels = np.asarray(obj[b"data"]), np.asarray(obj[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(path, f"b'data' must be N x 3072 uint8, got {data.shape} {data.dtype}")
    if (
        labels.shape != (data.shape[0],)
        or labels.dtype.kind not in "iu"
        or (labels.size and not 0 <= labels.min() <= labels.max() <= 9)
    ):
        raise DataError(path, f"b'labels' must be {data.shape[0]} integers in 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_cifar10(folder: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 3 x 32 x 32 uint8, labels N int64) of the "train" or "test" split."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "not a folder (expected cifar-10-batches-py)")
    names = TRAIN_BATCHES if split == "train" else (TEST_BATCH,)
    parts = [_read_batch(folder / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def write_cifar_batch(path: str | Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write one batch in the real format (fixtures and tests)."""
    blob = {
        b"batch_label": b"fixture batch",
        b"labels": [int(v) for v in labels],
        b"data": images.reshape(len(images), 3072).astype(np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }
    Path(path).write_bytes(pickle.dumps(blob, protocol=2))
