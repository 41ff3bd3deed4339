"""Helpers shared by the host tests: the CLI in a subprocess, the quadratic mean."""

from __future__ import annotations

import math
import subprocess
import sys


def bihost(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bihost.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def qmean(values):
    return math.sqrt(sum(v * v for v in values) / len(values))
