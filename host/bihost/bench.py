"""`bihost bench`: train what the accuracy tracks need, then score every chosen track.

Choosing, running and storing runs is the host's job; training itself is `bimodels.training`.
Every dataset is loaded (and validated) before the first epoch; each finished run is a row in
the results store, committed before the next starts; a run already stored under the same key
(task, arch, algorithm, scale, seed, recipe hash, data version) is not trained again, and an
interrupted one resumes from its last checkpointed epoch.
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import UserError
from .records import TrainingRun
from .tracks import BenchContext, TrackResult, get_track
from .tracks.base import FP

# (message) for run-level events; (run label, epoch, epochs, batch, batches, loss) for bars.
NoticeFn = Callable[[str], None]
StepFn = Callable[[str, int, int, int, int, float], None]


@dataclass
class BenchPlan:
    tracks: list[str]
    tasks: list[str]
    algorithms: list[str]
    scale: str = "quick"
    archs: list[str] | None = None  # None: each task's default architectures at this scale
    seed: int = 0
    data_root: Path | None = None
    device: str = "auto"
    hardware_runtimes: list[str] = field(default_factory=lambda: ["custom"])

    def needs_training(self) -> bool:
        return any(get_track(t).needs_training for t in self.tracks)


def task_archs(plan: BenchPlan, task) -> list[str]:
    if plan.archs is None:
        return list(task.default_archs(plan.scale))
    return [a for a in plan.archs if a in task.archs]


def checkpoint_folder(checkpoints: Path, task: str, arch: str, scale: str, config_hash: str, data_version: str,
                      seed: int) -> Path:
    """Where the checkpoints of one (task, arch) recipe live: one file per algorithm, fp32.pt first."""
    return checkpoints / task / arch / f"{scale}-{config_hash}-{data_version}-seed{seed}"


def run_training(plan: BenchPlan, store, checkpoints: Path, notice: NoticeFn = print,
                 step: StepFn | None = None) -> list[TrainingRun]:
    """Every (task, arch, FP + algorithm) run of the plan, trained or found in the store."""
    import torch

    from bimodels.tasks import get_task
    from bimodels.training import resolve_device, run_binary, run_full_precision

    device = resolve_device(plan.device)
    tasks = [get_task(t) for t in plan.tasks]
    for task in tasks:
        task.config(plan.scale)  # a scale the task lacks fails now, not after hours of training
    loaded = {}
    for task in tasks:  # every dataset is read and checked before any training starts
        loaded[task.name] = task.load(plan.scale, plan.data_root, plan.seed)
        for note in loaded[task.name].notes:
            notice(f"{task.name}: {note}")
    if plan.archs is not None and not any(task_archs(plan, t) for t in tasks):
        raise UserError(f"none of --arch {','.join(plan.archs)} fits the tasks {','.join(plan.tasks)}")
    device_label = str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    runs: list[TrainingRun] = []
    for task in tasks:
        data, config = loaded[task.name], task.config(plan.scale)
        if not task_archs(plan, task):
            notice(f"{task.name}: none of --arch {','.join(plan.archs or [])} fits it (it takes "
                   f"{', '.join(task.archs)}); skipped")
        for arch in task_archs(plan, task):
            key = dict(task=task.name, arch=arch, scale=plan.scale, seed=plan.seed, config_hash=config.digest(),
                       data_version=data.version)
            stored = {r.algorithm: r for r in store.training_runs(**key)}
            folder = checkpoint_folder(checkpoints, task.name, arch, plan.scale, config.digest(), data.version,
                                       plan.seed)
            wanted = [a for a in plan.algorithms if a not in stored]
            if FP in stored and not wanted:
                notice(f"{task.name}/{arch}: all {len(plan.algorithms) + 1} runs already stored")
                runs += [stored[FP]] + [stored[a] for a in plan.algorithms]
                continue

            def bar(label):
                return (lambda e, n, b, nb, loss: step(label, e, n, b, nb, loss)) if step else None

            fp_model, fp_result = run_full_precision(task, arch, data.train, data.test, config, plan.seed, device,
                                                     folder / "fp32.pt", progress=bar(f"{task.name}/{arch}/fp32"),
                                                     num_classes=data.num_classes)
            if FP not in stored:
                stored[FP] = _file(store, key, FP, fp_result, task, data, config, device_label)
                notice(f"{task.name}/{arch}/fp32: {data.metric_name(task)} {fp_result.metric:.4f} "
                       f"({fp_result.train_seconds:.0f} s)")
            runs.append(stored[FP])
            for algo in plan.algorithms:
                if algo not in stored:
                    result = run_binary(task, fp_model, algo, data.train, data.test, config, plan.seed, device,
                                        folder / f"{algo}.pt", progress=bar(f"{task.name}/{arch}/{algo}"))
                    stored[algo] = _file(store, key, algo, result, task, data, config, device_label)
                    notice(f"{task.name}/{arch}/{algo}: {data.metric_name(task)} {result.metric:.4f} "
                           f"({result.train_seconds:.0f} s)")
                runs.append(stored[algo])
    return runs


def _file(store, key: dict, algorithm: str, result, task, data, config, device_label: str) -> TrainingRun:
    import torch

    run = TrainingRun(**key, algorithm=algorithm, data_source=data.source, metric_name=data.metric_name(task),
                      metric=result.metric, epochs=result.epochs, train_seconds=result.train_seconds,
                      device=device_label, threads=torch.get_num_threads(), config=config.as_dict(),
                      host=socket.gethostname(), created_at=time.time())
    store.add_training_run(run)
    return run


def hardware_rows(plan: BenchPlan, archs: list[str], store, notice: NoticeFn = print):
    """The store's measurements for these archs; when it holds none, profile them on the local board."""
    rows = store.rows()
    if any(m.arch in archs and m.status == "ok" and m.algorithm != FP for m in rows):
        return rows
    from .artifacts import ArtifactCache
    from .client import BenchmarkSettings
    from .profile import Plan, new_campaign_id, run_campaign
    from .targets import resolve_targets

    notice(f"no hardware measurement of {', '.join(archs)} in the results store: profiling them on the local board")
    quick = plan.scale == "quick"
    settings = BenchmarkSettings(warmup_runs=1 if quick else 2, min_runs=3 if quick else 10,
                                 min_duration_s=0.05 if quick else 1.0)
    profile_plan = Plan(archs, plan.algorithms, plan.hardware_runtimes, settings, campaign=new_campaign_id())
    with resolve_targets("local", False, None) as targets:
        run_campaign(targets, profile_plan, store, ArtifactCache(plan.seed))
    return store.rows()


def score(plan: BenchPlan, runs: list[TrainingRun], measurements, archs: list[str], corruption_runs=(),
          notes: dict[str, list[str]] | None = None, grid_runs=()) -> list[TrackResult]:
    ctx = BenchContext(algorithms=plan.algorithms, archs=archs, tasks=plan.tasks, runs=runs,
                       measurements=measurements, corruption_runs=list(corruption_runs),
                       grid_runs=list(grid_runs), notes=notes or {})
    return [get_track(t).score(ctx) for t in plan.tracks]


def main_table(results: list[TrackResult], algorithms: list[str]) -> tuple[list[str], list[list]]:
    """Algorithms x tracks of overall metrics, like the paper's main table."""
    header = ["algorithm", *(r.title for r in results)]
    return header, [[algo, *(r.overall.get(algo) for r in results)] for algo in algorithms]

