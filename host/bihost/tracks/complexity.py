"""Theoretical-complexity track: compression and speedup ratios from `bimodels.complexity`,
averaged over the selected architectures."""

from __future__ import annotations

import math

from .base import BenchContext, Track, TrackResult, mean, register_track


@register_track
class ComplexityTrack(Track):
    name = "complexity"
    title = "theoretical complexity"

    def score(self, ctx: BenchContext) -> TrackResult:
        import torch

        import bimodels
        from bimodels.complexity import complexity

        details, overall = [], {}
        fp_models = {}
        for arch in ctx.archs:
            torch.manual_seed(0)
            fp_models[arch] = bimodels.create_model(arch)
        for algo in ctx.algorithms:
            rc, rs = [], []
            for arch, fp in fp_models.items():
                report = complexity(bimodels.binarize(fp, algo).eval())
                rc.append(report.compression_ratio)
                rs.append(report.speedup_ratio)
                details.append(
                    {
                        "algorithm": algo,
                        "arch": arch,
                        "compression_ratio": report.compression_ratio,
                        "speedup_ratio": report.speedup_ratio,
                        "params": report.params,
                        "flops": report.flops,
                        "bops": report.bops,
                        "flops_fp": report.flops_fp,
                    }
                )
            overall[algo] = math.sqrt((mean(rc) ** 2 + mean(rs) ** 2) / 2)
        return TrackResult(
            self.name,
            self.title,
            overall,
            details,
            "sqrt((mean_arch r_c^2 + mean_arch r_s^2) / 2) with r_c = params / (params_bin/32 + "
            "params_fp), r_s = FLOPs / (BOPs/64 + FLOPs_fp), the means taken before squaring",
        )
