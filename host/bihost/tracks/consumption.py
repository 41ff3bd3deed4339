"""Training-consumption track: what training a binarized network costs against FP, in time
and in sensitivity to hyperparameters.

From the grid (`bihost.grid`): per setting, `T_fp / T_bi` of training seconds per epoch,
only between runs timed on the same hardware with the same threads; per algorithm, the
standard deviation of final accuracy over the settings both finished, `std_fp / std_bi`.
Overall: `sqrt((E[T_fp / T_bi]^2 + (std_fp / std_bi)^2) / 2)`; higher is better (cheaper and
less sensitive than FP). A deviation below `STD_FLOOR` counts as `STD_FLOOR`.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from ..grid import hardware_signature
from ..records import GridRun
from .base import FP, BenchContext, Track, TrackResult, mean, register_track

STD_FLOOR = 0.001


@register_track
class ConsumptionTrack(Track):
    name = "consumption"
    title = "training consumption"
    needs_grid = True

    def score(self, ctx: BenchContext) -> TrackResult:
        ok = [r for r in ctx.grid_runs if r.status == "ok"]
        groups: dict[tuple, dict[str, dict[str, GridRun]]] = defaultdict(lambda: defaultdict(dict))
        for r in ok:
            groups[(r.task, r.arch, r.scale, r.recipe_hash, r.data_version)][r.algorithm][r.setting] = r
        details, overall = [], {}
        for algo in ctx.algorithms:
            time_ratios, std_ratios = [], []
            for group, by_algo in groups.items():
                fp, bi = by_algo.get(FP, {}), by_algo.get(algo, {})
                settings = sorted(set(fp) & set(bi))
                for s in settings:
                    same_hw = hardware_signature(fp[s].worker) == hardware_signature(bi[s].worker)
                    ratio = fp[s].seconds_per_epoch / bi[s].seconds_per_epoch if same_hw else math.nan
                    details.append(
                        {
                            "algorithm": algo,
                            "task": group[0],
                            "arch": group[1],
                            "setting": s,
                            "fp_seconds_per_epoch": fp[s].seconds_per_epoch,
                            "seconds_per_epoch": bi[s].seconds_per_epoch,
                            "time_ratio": ratio,
                            "fp_metric": fp[s].metric,
                            "metric": bi[s].metric,
                            "hardware": hardware_signature(bi[s].worker),
                            "fp_hardware": hardware_signature(fp[s].worker),
                        }
                    )
                    if same_hw:
                        time_ratios.append(ratio)
                if len(settings) >= 2:
                    std_fp = float(np.std([fp[s].metric for s in settings]))
                    std_bi = float(np.std([bi[s].metric for s in settings]))
                    std_ratios.append(max(std_fp, STD_FLOOR) / max(std_bi, STD_FLOOR))
                    details.append(
                        {
                            "algorithm": algo,
                            "task": group[0],
                            "arch": group[1],
                            "settings": len(settings),
                            "fp_accuracy_std": std_fp,
                            "accuracy_std": std_bi,
                            "std_ratio": std_ratios[-1],
                        }
                    )
            t, sd = mean(time_ratios), mean(std_ratios)
            overall[algo] = math.sqrt((t * t + sd * sd) / 2)
            details.append(
                {
                    "algorithm": algo,
                    "mean_time_ratio": t,
                    "mean_std_ratio": sd,
                    "time_pairs": len(time_ratios),
                }
            )
        notes = list(ctx.notes.get(self.name, []))
        if not ok:
            notes.append("no finished grid run for this selection")
        mixed = [d for d in details if "time_ratio" in d and math.isnan(d["time_ratio"])]
        if mixed:
            notes.append(
                f"{len(mixed)} setting pairs left out of the time ratio: FP and binarized were timed on "
                "different hardware"
            )
        return TrackResult(
            self.name,
            self.title,
            overall,
            details,
            "sqrt(((mean over settings of T_fp/T_bi)^2 + (std_fp/std_bi)^2) / 2); T: training seconds "
            "per epoch on the same hardware and threads; std: population standard deviation of final "
            f"accuracy over the settings both finished (floor {STD_FLOOR})",
            notes,
        )
