"""The custom runtime's Transformer ops: layer norm, GELU, tanh, softmax, arithmetic with a
constant, and the batched matmul of attention.

Each follows the float32 steps of torch's CPU kernel in the same order (the formulas are in
biformats.custom), so results differ from torch only where a sum is taken in another
order or libm's erf/exp/tanh rounds differently from torch's by an ulp. With the C kernels
built, layer norm, softmax, GELU and tanh run fpops.c's functions, the ones the whole-graph
executor calls, so both paths compute the same floats; numpy is the fallback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from biagent.kernels import _xnor

from ..settings import KernelSettings
from .common import compiled

_F = np.float32


@dataclass(frozen=True, eq=False)
class LayerNorm:
    """torch's order: rstd = 1 / sqrt(var + eps), then (x * rstd + (-rstd * mean)) * w + b. The
    mean and the (biased) variance are taken in float64 and rounded, as torch accumulates
    them in higher precision than its float32 output."""

    axes: int  # how many trailing axes are normalised
    weight: np.ndarray | None
    bias: np.ndarray | None
    eps: float
    settings: KernelSettings

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if compiled(self.settings) and hasattr(_xnor, "layer_norm"):
            cols = math.prod(x.shape[x.ndim - self.axes :])
            rows = np.ascontiguousarray(x, dtype=_F).reshape(-1, cols)
            y = np.empty_like(rows)
            w = None if self.weight is None else self.weight.reshape(-1)
            b = None if self.bias is None else self.bias.reshape(-1)
            _xnor.layer_norm(rows, w, b, float(self.eps), y)
            return y.reshape(x.shape)
        axes = tuple(range(x.ndim - self.axes, x.ndim))
        x64 = x.astype(np.float64)
        mean = x64.mean(axis=axes, keepdims=True)
        var = np.maximum(((x64 - mean) ** 2).mean(axis=axes, keepdims=True), 0.0)
        rstd = (1.0 / np.sqrt(var + self.eps)).astype(_F)
        shift = -rstd * mean.astype(_F)
        y = x * rstd + shift
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return np.ascontiguousarray(y, dtype=_F)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf in float64, elementwise (no numpy ufunc exists): the fallback when C is not built."""
    return np.vectorize(math.erf, otypes=[np.float64])(x)


#: fpops.h's fp_unary kinds
UNARY = {"gelu": 0, "gelu_tanh": 1, "tanh": 2, "add": 3, "sub": 4, "mul": 5, "div": 6, "rsub": 7, "rdiv": 8}


def _unary(kind: str, x: np.ndarray, settings: KernelSettings, value: float = 0.0) -> np.ndarray | None:
    """fp_unary where C is built, else None."""
    if not compiled(settings) or not hasattr(_xnor, "unary"):
        return None
    x = np.ascontiguousarray(x, dtype=_F)
    y = np.empty_like(x)
    _xnor.unary(x, UNARY[kind], value, y, settings.threads)
    return y


@dataclass(frozen=True)
class Gelu:
    approximate: Literal["none", "tanh"]
    settings: KernelSettings

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = _unary("gelu" if self.approximate == "none" else "gelu_tanh", x, self.settings)
        if y is not None:
            return y
        half, one = _F(0.5), _F(1)
        if self.approximate == "tanh":
            beta, kappa = _F(math.sqrt(2) * (2 / math.sqrt(math.pi)) * 0.5), _F(0.044715)
            inner = beta * (x + kappa * (x * x * x))
            return half * x * (one + np.tanh(inner))
        e = _erf(x * _F(math.sqrt(0.5))).astype(_F)
        return x * half * (one + e)


@dataclass(frozen=True)
class Tanh:
    settings: KernelSettings

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = _unary("tanh", x, self.settings)
        return np.tanh(x) if y is None else y


@dataclass(frozen=True)
class Softmax:
    """exp(x - max) over the axis, times the float32 reciprocal of its sum (torch's order)."""

    axis: int
    settings: KernelSettings

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if compiled(self.settings) and hasattr(_xnor, "softmax"):
            x = np.ascontiguousarray(x, dtype=_F)
            y = np.empty_like(x)
            dims = (math.prod(x.shape[: self.axis]), x.shape[self.axis], math.prod(x.shape[self.axis + 1 :]))
            _xnor.softmax(x, dims, y)
            return y
        e = np.exp(x - x.max(axis=self.axis, keepdims=True))
        inv = (_F(1) / e.sum(axis=self.axis, keepdims=True, dtype=_F)).astype(_F)
        return np.ascontiguousarray(e * inv)


@dataclass(frozen=True)
class Scalar:
    """x (op) value in float32, or value (op) x for rsub and rdiv (IEEE operations: numpy and
    fp_unary give the same floats)."""

    fn: Literal["add", "sub", "mul", "div", "rsub", "rdiv"]
    value: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        v = _F(self.value)
        fn = self.fn
        if fn == "add":
            y = x + v
        elif fn == "sub":
            y = x - v
        elif fn == "mul":
            y = x * v
        elif fn == "div":
            y = x / v
        elif fn == "rsub":
            y = v - x
        else:
            y = v / x
        return np.asarray(y, dtype=_F)


@dataclass(frozen=True)
class MatMul:
    """numpy's matmul semantics (broadcast leading axes). C: fp_matmul, each output summed over k
    in order with the model's threads (numpy's BLAS would pick its own order and thread count);
    the executor calls the same function."""

    settings: KernelSettings

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if not compiled(self.settings) or not hasattr(_xnor, "matmul"):
            return np.matmul(a, b)
        lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
        a3 = np.ascontiguousarray(np.broadcast_to(a, (*lead, m, k)), dtype=_F).reshape(-1, m, k)
        b3 = np.ascontiguousarray(np.broadcast_to(b, (*lead, k, n)), dtype=_F).reshape(-1, k, n)
        y = np.empty((a3.shape[0], m, n), _F)
        _xnor.matmul(a3, b3, y, self.settings.threads)
        return y.reshape(*lead, m, n)
