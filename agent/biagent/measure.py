"""Timing statistics, as in TFLite's benchmark tool and TVM's time evaluator."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    min_s: float
    median_s: float
    mean_s: float
    p90_s: float
    p99_s: float
    std_s: float
    max_s: float
    count: int

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(samples: list[float] | np.ndarray) -> LatencyStats:
    s = np.asarray(samples, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no latency samples to summarise")
    p50, p90, p99 = np.percentile(s, [50, 90, 99])
    return LatencyStats(
        min_s=float(s.min()),
        median_s=float(p50),
        mean_s=float(s.mean()),
        p90_s=float(p90),
        p99_s=float(p99),
        std_s=float(s.std(ddof=1)) if s.size > 1 else 0.0,
        max_s=float(s.max()),
        count=int(s.size),
    )


def max_abs_error(outputs: list[np.ndarray], expected: list[np.ndarray]) -> tuple[float, float, str]:
    """(max |out - expected|, max |expected|, problem) over all outputs; problem names a mismatch."""
    if len(outputs) != len(expected):
        return float("inf"), 0.0, f"runtime returned {len(outputs)} outputs, expected {len(expected)}"
    err, scale = 0.0, 0.0
    for i, (o, e) in enumerate(zip(outputs, expected)):
        o = np.asarray(o)
        if o.shape != e.shape:
            return float("inf"), 0.0, f"output {i} has shape {o.shape}, expected {e.shape}"
        if e.size:
            err = max(err, float(np.max(np.abs(o.astype(np.float64) - e.astype(np.float64)))))
            scale = max(scale, float(np.max(np.abs(e))))
    return err, scale, ""
