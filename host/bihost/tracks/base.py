"""BiBench's tracks: each turns stored numbers into one overall metric per algorithm.

Every track's overall metric is a quadratic mean of binarized-to-full-precision ratios
(higher is better), so a track's `score` returns the ratios it averaged as well: anyone can
recompute the overall metric from the JSON by hand. Adding a track is one file with a
`@register_track` class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bimodels.registry import Registry

from ..records import CorruptionRun, GridRun, Measurement, TrainingRun

FP = "fp32"


def quadratic_mean(values: list[float]) -> float:
    """sqrt(mean(v^2)); NaN for no values (a track with nothing measured says so, it does not invent 0)."""
    if not values:
        return math.nan
    return math.sqrt(sum(v * v for v in values) / len(values))


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


@dataclass
class BenchContext:
    """What the tracks score: the selection and the stored numbers that belong to it."""

    algorithms: list[str]
    archs: list[str]
    tasks: list[str]
    runs: list[TrainingRun] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    corruption_runs: list[CorruptionRun] = field(default_factory=list)
    grid_runs: list[GridRun] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)  # track name -> what its measuring step said


@dataclass
class TrackResult:
    track: str
    title: str
    overall: dict[str, float]  # algorithm -> the track's overall metric
    details: list[dict[str, Any]]  # the per-group numbers each overall metric averages
    formula: str  # how `overall` follows from `details`, in words
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "track": self.track,
            "title": self.title,
            "formula": self.formula,
            "overall": self.overall,
            "details": self.details,
            "notes": self.notes,
        }


class Track:
    name: str = ""
    title: str = ""
    needs_training: bool = False  # it scores the learning-task models
    needs_grid: bool = False  # it scores the training-consumption grid

    def score(self, ctx: BenchContext) -> TrackResult:
        raise NotImplementedError


TRACKS: Registry[Track] = Registry("track")


def register_track(cls: type[Track]) -> type[Track]:
    TRACKS.register(cls.name)(cls())
    return cls


def accuracy_ratios(ctx: BenchContext) -> list[dict[str, Any]]:
    """One entry per (task, arch, algorithm) with a binarized run and its FP run: A_bi / A_fp."""
    fp = {(r.task, r.arch): r for r in ctx.runs if r.algorithm == FP}
    out = []
    for r in ctx.runs:
        base = fp.get((r.task, r.arch))
        if r.algorithm == FP or base is None or r.algorithm not in ctx.algorithms:
            continue
        ratio = r.metric / base.metric if base.metric > 0 else math.nan
        out.append(
            {
                "task": r.task,
                "arch": r.arch,
                "algorithm": r.algorithm,
                "metric_name": r.metric_name,
                "fp_metric": base.metric,
                "metric": r.metric,
                "ratio": ratio,
            }
        )
    return out


def grouped_overall(
    entries: list[dict[str, Any]], group: str, algorithms: list[str]
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Per algorithm: E[ratio] within each group, then the quadratic mean over groups."""
    overall, details = {}, []
    for algo in algorithms:
        groups: dict[str, list[float]] = {}
        for e in entries:
            if e["algorithm"] == algo:
                groups.setdefault(e[group], []).append(e["ratio"])
        per_group = {g: mean(v) for g, v in groups.items()}
        details += [
            {"algorithm": algo, group: g, "mean_ratio": v, "n": len(groups[g])} for g, v in per_group.items()
        ]
        overall[algo] = quadratic_mean(list(per_group.values()))
    return overall, details
