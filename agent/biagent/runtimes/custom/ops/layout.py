"""The custom runtime's data-movement ops: constants, reshapes, transposes, broadcasts,
slices and the embedding lookup. None of them computes a float, so each is exact; each
returns a C-ordered array, as the kernels after them expect."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...base import InvokeError


@dataclass(frozen=True, eq=False)
class Constant:
    """A folded value (a buffer, a position embedding); readers broadcast it over the batch."""

    value: np.ndarray

    def __call__(self) -> np.ndarray:
        return self.value


@dataclass(frozen=True)
class Reshape:
    shape: tuple[int, ...]  # without the batch axis

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x).reshape((x.shape[0], *self.shape))


@dataclass(frozen=True)
class Transpose:
    perm: tuple[int, ...]  # perm[0] == 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.transpose(self.perm))


@dataclass(frozen=True)
class Expand:
    shape: tuple[int, ...]  # without the batch axis

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.broadcast_to(x, (x.shape[0], *self.shape)))


@dataclass(frozen=True)
class Slice:
    axis: int
    start: int
    stop: int
    step: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        index = (slice(None),) * self.axis + (slice(self.start, self.stop, self.step),)
        return np.ascontiguousarray(x[index])


@dataclass(frozen=True)
class Select:
    axis: int
    index: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.take(x, self.index, axis=self.axis))


@dataclass(frozen=True, eq=False)
class Embedding:
    """weight[ids] for int64 ids; an id outside the table is the caller's error, never a read
    past the table."""

    weight: np.ndarray  # (vocab, dim) float32

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        vocab = self.weight.shape[0]
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            bad = ids[(ids < 0) | (ids >= vocab)].ravel()[0]
            raise InvokeError(f"token id {int(bad)} is outside the embedding table's {vocab} rows")
        return np.take(self.weight, ids, axis=0)
