"""Hardware-inference track: measured latency and model size against the FP32 baseline on
the same board, from the farm's results store (`bihost profile`)."""

from __future__ import annotations

import math
from typing import Any

from ..records import Measurement
from ..results import latest_rows
from .base import FP, BenchContext, Track, TrackResult, mean, register_track


def latest_measurements(rows: list[Measurement]) -> list[Measurement]:
    """Each board's newest ok row of each model (repeated campaigns would otherwise weigh a
    model several times in a mean)."""
    return latest_rows(rows, prefer_ok=True)


@register_track
class HardwareTrack(Track):
    name = "hardware"
    title = "hardware inference"

    def score(self, ctx: BenchContext) -> TrackResult:
        rows = [
            m
            for m in latest_measurements(ctx.measurements)
            if m.status == "ok"
            and not m.emulated  # an emulated CPU's latency says nothing about a chip
            and m.algorithm != FP
            and m.algorithm in ctx.algorithms
            and m.arch in ctx.archs
            and m.speedup_vs_fp32
            and m.storage_ratio
        ]
        details: list[dict[str, Any]] = [
            {
                "algorithm": m.algorithm,
                "board": m.board,
                "chip": m.chip,
                "runtime": m.runtime,
                "arch": m.arch,
                "threads": m.threads,
                "campaign": m.campaign,
                "speedup": m.speedup_vs_fp32,
                "storage_ratio": m.storage_ratio,
            }
            for m in rows
        ]
        overall = {}
        for algo in ctx.algorithms:
            mine = [d for d in details if d["algorithm"] == algo]
            overall[algo] = (
                math.sqrt(
                    (mean([d["speedup"] for d in mine]) ** 2 + mean([d["storage_ratio"] for d in mine]) ** 2)
                    / 2
                )
                if mine
                else math.nan
            )
        notes = [] if rows else ["no successful hardware measurement of this selection in the results store"]
        return TrackResult(
            self.name,
            self.title,
            overall,
            details,
            "sqrt(((mean lat_fp/lat_bi)^2 + (mean size_fp/size_bi)^2) / 2) over boards, runtimes "
            "and archs (each board's newest measurement of a model); lat_fp is the board's ONNX Runtime FP32 "
            "latency",
            notes,
        )
