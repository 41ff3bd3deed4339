"""The custom runtime's parameter-only ops as small classes (not lambdas), so that the
whole-graph planner (executor.py) can read what each node does: a linear's weights, a
reduction's axes, a flatten's span. Each call computes exactly what the engine's numpy
code always did."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from biagent.kernels import _xnor

from ..settings import KernelSettings
from .common import compiled
from .elementwise import avg_pool, linear, prelu


@dataclass(frozen=True, eq=False)
class Linear:
    """x @ weight.T + bias over the last axis. C: fp_linear, the dot order the whole-graph
    executor uses too (numpy's BLAS would differ from it in the last bits)."""

    weight: np.ndarray  # (M, K) float32
    bias: np.ndarray | None
    settings: KernelSettings

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if not compiled(self.settings) or not hasattr(_xnor, "linear"):
            return linear(x, self.weight, self.bias)
        m, k = self.weight.shape
        rows = np.ascontiguousarray(x.reshape(-1, k), dtype=np.float32)
        y = np.empty((rows.shape[0], m), np.float32)
        _xnor.linear(rows, self.weight, self.bias, y, self.settings.threads)
        return y.reshape(*x.shape[:-1], m)


@dataclass(frozen=True, eq=False)
class PRelu:
    weight: np.ndarray  # (C,) or (1,)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return prelu(x, self.weight)


@dataclass(frozen=True)
class Relu:
    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, np.float32(0))


@dataclass(frozen=True)
class AvgPool:
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    count_include_pad: bool

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return avg_pool(x, self.kernel, self.stride, [list(p) for p in self.pads], self.count_include_pad)


@dataclass(frozen=True)
class Reduce:
    kind: Literal["mean", "max"]
    axes: tuple[int, ...]
    keepdims: bool

    def __call__(self, x: np.ndarray) -> np.ndarray:
        fn = np.mean if self.kind == "mean" else np.max
        return np.asarray(fn(x, axis=self.axes, keepdims=self.keepdims), dtype=np.float32)


@dataclass(frozen=True)
class Flatten:
    start: int
    end: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[: self.start] + (-1,) + x.shape[self.end + 1 :])


@dataclass(frozen=True)
class Add:
    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.add(a, b)


@dataclass(frozen=True)
class Concat:
    axis: int

    def __call__(self, *xs: np.ndarray) -> np.ndarray:
        return np.concatenate(xs, axis=self.axis)


@dataclass(frozen=True)
class Identity:
    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x
