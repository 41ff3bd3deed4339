"""Compiled kernels of the custom runtime (optional: built on install when a compiler exists)."""

from __future__ import annotations

import importlib
from typing import Any

_xnor: Any  # the C extension (no stubs), or None
try:
    _xnor = importlib.import_module(f"{__name__}._xnor")
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
