"""Hardware-inference track: measured latency and model size against the FP32 baseline on
the same board, from the farm's results store (`bihost profile`)."""
from __future__ import annotations

import math

from ..records import Measurement
from .base import FP, BenchContext, Track, TrackResult, mean, register_track


def latest_measurements(rows: list[Measurement]) -> list[Measurement]:
    """One row per (board, arch, algorithm, runtime, threads): the newest ok one, else the newest.

    Repeated campaigns of the same board would otherwise weigh a model several times in a mean.
    """
    best: dict[tuple, Measurement] = {}
    for m in rows:
        key = (m.board, m.arch, m.algorithm, m.runtime, m.threads)
        old = best.get(key)
        if old is None or ((m.status == "ok", m.created_at) >= (old.status == "ok", old.created_at)):
            best[key] = m
    return list(best.values())


@register_track
class HardwareTrack(Track):
    name = "hardware"
    title = "hardware inference"

    def score(self, ctx: BenchContext) -> TrackResult:
        rows = [m for m in latest_measurements(ctx.measurements) if m.status == "ok" and m.algorithm != FP
                and m.algorithm in ctx.algorithms and m.arch in ctx.archs and m.speedup_vs_fp32 and m.storage_ratio]
        details = [{"algorithm": m.algorithm, "board": m.board, "chip": m.chip, "runtime": m.runtime,
                    "arch": m.arch, "threads": m.threads, "campaign": m.campaign,
                    "speedup": m.speedup_vs_fp32, "storage_ratio": m.storage_ratio} for m in rows]
        overall = {}
        for algo in ctx.algorithms:
            mine = [d for d in details if d["algorithm"] == algo]
            overall[algo] = (math.sqrt((mean([d["speedup"] for d in mine]) ** 2
                                        + mean([d["storage_ratio"] for d in mine]) ** 2) / 2) if mine else math.nan)
        notes = [] if rows else ["no successful hardware measurement of this selection in the results store"]
        return TrackResult(self.name, self.title, overall, details,
                           "sqrt(((mean lat_fp/lat_bi)^2 + (mean size_fp/size_bi)^2) / 2) over boards, runtimes "
                           "and archs (each board's newest measurement of a model); lat_fp is the board's ONNX Runtime FP32 "
                           "latency", notes)
