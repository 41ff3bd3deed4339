"""Neural-architecture track: the same ratios as the learning-task track, grouped by
architecture family (CNN, MLP, Transformer)."""

from __future__ import annotations

import bimodels

from .base import BenchContext, Track, TrackResult, accuracy_ratios, grouped_overall, register_track


@register_track
class ArchitectureTrack(Track):
    name = "arch"
    title = "neural architecture"
    needs_training = True

    def score(self, ctx: BenchContext) -> TrackResult:
        entries = [e | {"family": bimodels.get_arch_info(e["arch"]).family} for e in accuracy_ratios(ctx)]
        overall, groups = grouped_overall(entries, "family", ctx.algorithms)
        return TrackResult(
            self.name,
            self.title,
            overall,
            entries + groups,
            "sqrt(mean over families of (mean over the family's (task, arch) of metric_bi / metric_fp)^2)",
        )
