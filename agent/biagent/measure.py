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
    """(max |out - expected|, max finite |expected|, problem) over all outputs.

    `problem` names a mismatch no tolerance can excuse: a wrong output count or shape, or a
    NaN in the output or the reference where the other has none (NaN compares false with
    everything, so a plain max would hide it; an error of NaN would pass `err > tol`). NaN
    in both at the same places, and infinities of the same sign, count as equal. Any other
    infinity makes the error infinite.
    """
    if len(outputs) != len(expected):
        return float("inf"), 0.0, f"runtime returned {len(outputs)} outputs, expected {len(expected)}"
    err, scale = 0.0, 0.0
    for i, (o, e) in enumerate(zip(outputs, expected)):
        o = np.asarray(o)
        if o.shape != e.shape:
            return float("inf"), 0.0, f"output {i} has shape {o.shape}, expected {e.shape}"
        if not e.size:
            continue
        o64, e64 = o.astype(np.float64), e.astype(np.float64)
        nan_o, nan_e = np.isnan(o64), np.isnan(e64)
        if not np.array_equal(nan_o, nan_e):
            where = "the output" if (nan_o & ~nan_e).any() else "the reference"
            count = int((nan_o != nan_e).sum())
            return (
                float("inf"),
                scale,
                (f"output {i}: NaN in {where} at {count} of {e.size} places where the other has a number"),
            )
        same = (o64 == e64) | nan_o  # equal values, equal infinities, NaN matched by NaN
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.where(same, 0.0, np.abs(o64 - e64))
        err = max(err, float(diff.max()))
        finite = np.abs(e64[np.isfinite(e64)])
        if finite.size:
            scale = max(scale, float(finite.max()))
    return err, scale, ""


def check_tolerance(atol: float, rtol: float) -> None:
    """Raise ValueError unless both tolerances are finite and not negative (NaN accepts everything)."""
    for name, value in (("atol", atol), ("rtol", rtol)):
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
