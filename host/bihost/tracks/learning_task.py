"""Learning-task track: how much of the FP metric each algorithm keeps, per task."""

from __future__ import annotations

from .base import BenchContext, Track, TrackResult, accuracy_ratios, grouped_overall, register_track


@register_track
class LearningTaskTrack(Track):
    name = "task"
    title = "learning task"
    needs_training = True

    def score(self, ctx: BenchContext) -> TrackResult:
        entries = accuracy_ratios(ctx)
        overall, groups = grouped_overall(entries, "task", ctx.algorithms)
        return TrackResult(
            self.name,
            self.title,
            overall,
            entries + groups,
            "sqrt(mean over tasks of (mean over the task's archs of metric_bi / metric_fp)^2)",
        )
