"""Corruption-robustness track: how much accuracy corruption costs a binarized model,
against what it costs the FP model it came from.

Per (task, arch, model) and corruption type, `G = A_clean - mean over severities 1..5 of
A_corrupted`, all on the same test images. The ratio `G_fp / G_bi` is above 1 when the
binarized model loses less than FP. Gaps under `GAP_FLOOR` count as `GAP_FLOOR`: a model
that corruption does not hurt at all (G <= 0) would otherwise give an infinite or negative
ratio, and gaps that small are within the noise of a 1,000-image test.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .base import FP, BenchContext, Track, TrackResult, mean, quadratic_mean, register_track

GAP_FLOOR = 0.01
CLEAN = "clean"


def corruption_gaps(ctx: BenchContext) -> dict[tuple, dict[str, Any]]:
    """(task, arch, algorithm, corruption_version, corruption) -> clean metric, mean corrupted metric, G."""
    clean: dict[tuple, float] = {}
    corrupted: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in ctx.corruption_runs:
        model = (r.task, r.arch, r.algorithm, r.corruption_version)
        if r.severity == 0:
            clean[model] = r.metric
        else:
            corrupted[model + (r.corruption,)][r.severity] = r.metric
    gaps = {}
    for key, by_severity in corrupted.items():
        if key[:4] in clean:
            a_clean, a_corr = clean[key[:4]], mean(list(by_severity.values()))
            gaps[key] = {
                "clean": a_clean,
                "corrupted": a_corr,
                "gap": a_clean - a_corr,
                "severities": len(by_severity),
            }
    return gaps


@register_track
class RobustnessTrack(Track):
    name = "robustness"
    title = "corruption robustness"
    needs_training = True

    def score(self, ctx: BenchContext) -> TrackResult:
        gaps = corruption_gaps(ctx)
        details = []
        for (task, arch, algorithm, version, corruption), g in gaps.items():
            base = gaps.get((task, arch, FP, version, corruption))
            if algorithm == FP or base is None or algorithm not in ctx.algorithms:
                continue
            ratio = max(base["gap"], GAP_FLOOR) / max(g["gap"], GAP_FLOOR)
            details.append(
                {
                    "task": task,
                    "arch": arch,
                    "algorithm": algorithm,
                    "corruption": corruption,
                    "fp_clean": base["clean"],
                    "fp_corrupted": base["corrupted"],
                    "fp_gap": base["gap"],
                    "clean": g["clean"],
                    "corrupted": g["corrupted"],
                    "gap": g["gap"],
                    "ratio": ratio,
                    "corruption_version": version,
                }
            )
        overall, groups = {}, []
        for algo in ctx.algorithms:
            per_corruption: dict[str, list[float]] = defaultdict(list)
            for d in details:
                if d["algorithm"] == algo:
                    per_corruption[d["corruption"]].append(d["ratio"])
            means = {c: mean(v) for c, v in per_corruption.items()}
            groups += [
                {"algorithm": algo, "corruption": c, "mean_ratio": v, "n": len(per_corruption[c])}
                for c, v in means.items()
            ]
            overall[algo] = quadratic_mean(list(means.values()))
        notes = list(ctx.notes.get(self.name, []))
        if not details:
            notes.append(
                "no corrupted-set measurement for this selection (the robustness track takes the image tasks)"
            )
        return TrackResult(
            self.name,
            self.title,
            overall,
            details + groups,
            f"sqrt(mean over corruption types of (mean over task/arch of G_fp / G_bi)^2), "
            f"G = A_clean - mean over severities 1-5 of A_corrupted, gaps below {GAP_FLOOR} "
            f"counted as {GAP_FLOOR}",
            notes,
        )
