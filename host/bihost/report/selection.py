"""Which stored rows a report shows: one scale and seed, the newest recipe of each model.

A results store accumulates: quick and default runs, recipes retrained after a change,
repeated hardware campaigns. A figure that averaged across them would mix scales or
recipes in one number, so the report keeps, per (task, arch), only the newest recipe that
has its full-precision run; per (board, arch, algorithm, runtime, threads) only the newest
measurement; and it says what it left out.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

from ..errors import UserError
from ..records import CorruptionRun, GridRun, Measurement, TrainingRun
from ..results import ResultsStore
from ..tracks import BenchContext, TrackResult, get_track, list_tracks
from ..tracks.base import FP
from ..tracks.hardware import latest_measurements


@dataclass
class ReportData:
    """The rows one report is drawn from, and the track results computed from them."""

    store: str
    scale: str | None  # None: the store holds no training or grid run
    seed: int
    algorithms: list[str]
    archs: list[str]  # those the complexity and hardware tracks score (trained ones, else measured ones)
    runs: list[TrainingRun] = field(default_factory=list)
    corruption_runs: list[CorruptionRun] = field(default_factory=list)
    grid_runs: list[GridRun] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)  # every board's newest rows (all archs)
    tracks: list[TrackResult] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    generated_at: float = 0.0

    def track(self, name: str) -> TrackResult:
        return next(t for t in self.tracks if t.track == name)

    def best(self) -> dict[str, str]:
        """Track name -> the algorithm with the highest overall metric (tracks with none are left out)."""
        out = {}
        for t in self.tracks:
            values = {a: t.overall[a] for a in self.algorithms if not math.isnan(t.overall.get(a, math.nan))}
            if values:
                out[t.track] = max(values, key=values.__getitem__)
        return out


def _newest_group(rows, group_key, model_key) -> tuple[list, int]:
    """Per `model_key`, the rows of the group (by `group_key`) written last; and how many rows were dropped."""
    newest: dict[tuple, tuple[float, tuple]] = {}
    for r in rows:
        m, g = model_key(r), group_key(r)
        if m not in newest or r.created_at >= newest[m][0]:
            newest[m] = (r.created_at, g)
    kept = [r for r in rows if newest[model_key(r)][1] == group_key(r)]
    return kept, len(rows) - len(kept)


def select(
    store: ResultsStore, scale: str | None = None, seed: int = 0, algorithms: list[str] | None = None
) -> ReportData:
    import bimodels

    algorithms = algorithms or bimodels.list_algorithms()
    all_runs, all_grid = store.training_runs(), store.grid_runs()
    every_run: list[TrainingRun | GridRun] = [*all_runs, *all_grid]
    measurements_all = store.rows()
    if not (all_runs or all_grid or measurements_all):
        raise UserError(
            f"the results store {store.path} holds nothing to report: run `bihost bench` or "
            "`bihost profile` first"
        )
    scales = {r.scale for r in all_runs} | {r.scale for r in all_grid}
    if scale is None and scales:
        scale = max(every_run, key=lambda r: r.created_at).scale  # the newest row's scale
    elif scale is not None and scale not in scales:
        raise UserError(
            f"the results store holds no {scale}-scale run (it holds: {', '.join(sorted(scales)) or 'none'})"
        )
    left_out = []
    others = sum(1 for r in every_run if (r.scale, r.seed) != (scale, seed))
    if others:
        left_out.append(
            f"{others} training/grid runs of another scale or seed (this report: {scale}, seed {seed})"
        )

    # Learning-task runs: per (task, arch), the newest recipe that has its FP run.
    runs = [r for r in all_runs if (r.scale, r.seed) == (scale, seed)]
    with_fp = {(r.task, r.arch, r.config_hash, r.data_version) for r in runs if r.algorithm == FP}
    runs = [r for r in runs if (r.task, r.arch, r.config_hash, r.data_version) in with_fp]
    runs, dropped = _newest_group(runs, lambda r: (r.config_hash, r.data_version), lambda r: (r.task, r.arch))
    if dropped:
        left_out.append(f"{dropped} training runs of older recipes (a retrained task keeps only its newest)")
    recipes = {(r.task, r.arch, r.config_hash, r.data_version) for r in runs}

    # Corrupted-set scores of those models: per (task, arch), the newest corrupted set.
    corr = (
        [
            c
            for c in store.corruption_runs(scale=scale, seed=seed)
            if (c.task, c.arch, c.config_hash, c.data_version) in recipes
        ]
        if scale
        else []
    )
    corr, dropped = _newest_group(corr, lambda c: c.corruption_version, lambda c: (c.task, c.arch))
    if dropped:
        left_out.append(f"{dropped} corrupted-set scores of older corrupted sets")

    grid = [g for g in all_grid if (g.scale, g.seed) == (scale, seed)]
    grid, dropped = _newest_group(grid, lambda g: (g.recipe_hash, g.data_version), lambda g: (g.task, g.arch))
    if dropped:
        left_out.append(f"{dropped} grid runs of older grid recipes")

    emulated = [m for m in measurements_all if m.emulated]
    if emulated:  # rehearsal rows: their latencies say nothing about a chip
        left_out.append(
            f"{len(emulated)} hardware rows from emulated boards ({', '.join(sorted({m.board for m in emulated}))})"
        )
        measurements_all = [m for m in measurements_all if not m.emulated]
    measurements = latest_measurements(measurements_all)
    if len(measurements) < len(measurements_all):
        left_out.append(
            f"{len(measurements_all) - len(measurements)} hardware rows superseded by a newer "
            "measurement of the same board, model, runtime and threads"
        )
    order = bimodels.list_architectures()
    trained = sorted({r.arch for r in runs}, key=order.index)
    measured = sorted({m.arch for m in measurements if m.arch in order}, key=order.index)
    data = ReportData(
        store=str(store.path),
        scale=scale,
        seed=seed,
        algorithms=algorithms,
        archs=trained or measured,
        runs=runs,
        corruption_runs=corr,
        grid_runs=grid,
        measurements=measurements,
        left_out=left_out,
        generated_at=time.time(),
    )
    ctx = BenchContext(
        algorithms=algorithms,
        archs=data.archs,
        tasks=sorted({r.task for r in runs}),
        runs=runs,
        measurements=measurements,
        corruption_runs=corr,
        grid_runs=grid,
    )
    data.tracks = [get_track(t).score(ctx) for t in list_tracks()]
    return data


def provenance(rows, what: str) -> str:
    """'54 training runs, quick scale, seed 0, 2026-12-01 06:10-06:14 UTC, on host x (cpu, 2 threads)'."""
    rows = list(rows)
    if not rows:
        return f"no {what}"
    stamps = [r.created_at for r in rows if r.created_at]
    parts = [f"{len(rows)} {what}"]
    if stamps:
        parts.append(span(min(stamps), max(stamps)))
    where = defaultdict(set)
    for r in rows:
        if isinstance(r, TrainingRun):
            where[r.host or "?"].add(f"{r.device}, {r.threads} threads")
        elif isinstance(r, GridRun):
            where[r.worker.get("host", "?")].add(
                f"{r.worker.get('threads', '?')} thread(s) per job, {r.executor}"
            )
        elif isinstance(r, CorruptionRun):
            where[r.host or "?"].add(r.device or "?")
    if where:
        parts.append("on " + "; ".join(f"{h} ({', '.join(sorted(d))})" for h, d in sorted(where.items())))
    return ", ".join(parts)


def span(first: float, last: float) -> str:
    a, b = (time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) for t in (first, last))
    if a == b:
        return f"{a} UTC"
    return f"{a} – {b[11:] if a[:10] == b[:10] else b} UTC"
