"""Compiled kernels of the custom runtime (optional: built on install when a compiler exists)."""

from __future__ import annotations

try:
    from . import _xnor
except ImportError:  # not built: the custom runtime uses its numpy kernels
    _xnor = None


def available() -> bool:
    return _xnor is not None


def info() -> dict:
    return (
        dict(_xnor.kernel_info())
        if _xnor is not None
        else {"popcount": "numpy (C kernels not built)", "openmp": False}
    )
