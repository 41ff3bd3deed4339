"""Helpers shared by tests (importable as tests.helpers)."""
from __future__ import annotations

from bimodels.init import trained_like_norms as randomize_norms  # noqa: F401
