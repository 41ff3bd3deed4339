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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError
from .records import TrainingRun
from .tracks import BenchContext, TrackResult, get_track
from .tracks.base import FP

if TYPE_CHECKING:
    from bimodels.tasks.base import Task

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


def checkpoint_folder(
    checkpoints: Path, task: str, arch: str, scale: str, config_hash: str, data_version: str, seed: int
) -> Path:
    """Where the checkpoints of one (task, arch) recipe live: one file per algorithm, fp32.pt first."""
    return checkpoints / task / arch / f"{scale}-{config_hash}-{data_version}-seed{seed}"


@dataclass
class Recipe:
    """One (task, arch) of the plan: its store key, checkpoint folder and the runs already stored."""

    task: Task
    arch: str
    key: dict
    folder: Path
    stored: dict[str, TrainingRun]  # by algorithm; filled in as runs finish
    wanted: tuple[str, ...] = ()  # the plan's algorithms

    @property
    def done(self) -> bool:
        return FP in self.stored and all(a in self.stored for a in self.wanted)


def recipes(plan: BenchPlan, store, checkpoints: Path, tasks, loaded, notice: NoticeFn) -> list[Recipe]:
    """The plan's (task, arch) pairs with what the store already holds of each; says which tasks
    an --arch selection skips and which recipes are complete."""
    out = []
    for task in tasks:
        data, config = loaded[task.name], task.config(plan.scale)
        if not task_archs(plan, task):
            notice(
                f"{task.name}: none of --arch {','.join(plan.archs or [])} fits it (it takes "
                f"{', '.join(task.archs)}); skipped"
            )
        for arch in task_archs(plan, task):
            key = dict(
                task=task.name,
                arch=arch,
                scale=plan.scale,
                seed=plan.seed,
                config_hash=config.digest(),
                data_version=data.version,
            )
            folder = checkpoint_folder(
                checkpoints, task.name, arch, plan.scale, config.digest(), data.version, plan.seed
            )
            recipe = Recipe(
                task,
                arch,
                key,
                folder,
                {r.algorithm: r for r in store.training_runs(**key)},
                tuple(plan.algorithms),
            )
            if recipe.done:
                notice(f"{task.name}/{arch}: all {len(plan.algorithms) + 1} runs already stored")
            out.append(recipe)
    return out


def run_training(
    plan: BenchPlan, store, checkpoints: Path, notice: NoticeFn = print, step: StepFn | None = None, pool=None
) -> list[TrainingRun]:
    """Every (task, arch, FP + algorithm) run of the plan, trained or found in the store.

    With a `pool` (an executor of `bihost.executors`) and a CPU device, the runs are jobs on
    it: every FP run first, then every binarized fine-tune from its FP checkpoint; otherwise
    they run one after another in this process, with per-batch progress.
    """
    import torch

    from bimodels.tasks import get_task
    from bimodels.training import resolve_device

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
    todo = recipes(plan, store, checkpoints, tasks, loaded, notice)
    store = _TrackedStore(store, todo, plan)
    try:
        if pool is not None and device.type == "cpu":
            return _train_on_pool(plan, store, todo, loaded, pool, notice)
        return _train_here(plan, store, todo, loaded, device, device_label, step, notice)
    finally:
        store.finish()


class _TrackedStore:
    """The store, recording this bench run's plan and progress as a campaign on the training
    host (board "local", kind "bench") for the farm view; every other call passes through."""

    def __init__(self, store, todo: list[Recipe], plan: BenchPlan):
        self._store = store
        self.campaign = f"bench-{plan.scale}-{time.strftime('%Y%m%dT%H%M%S')}"
        each = [FP, *plan.algorithms]
        planned = len(todo) * len(each)
        done = sum(1 for r in todo for a in each if a in r.stored)
        store.start_campaign(self.campaign, "local", "bench", planned, done)

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    def add_training_run(self, run: TrainingRun) -> None:
        self._store.add_training_run(run)
        self._store.campaign_step(self.campaign, "local", "bench", ok=True)

    def failed(self) -> None:
        self._store.campaign_step(self.campaign, "local", "bench", ok=False)

    def finish(self) -> None:
        self._store.finish_campaign(self.campaign, "local", "bench")


def _train_here(
    plan: BenchPlan, store, todo: list[Recipe], loaded, device, device_label: str, step, notice: NoticeFn
) -> list[TrainingRun]:
    from bimodels.training import run_binary, run_full_precision

    runs: list[TrainingRun] = []
    for recipe in todo:
        task, arch, key, folder, stored = recipe.task, recipe.arch, recipe.key, recipe.folder, recipe.stored
        data, config = loaded[task.name], task.config(plan.scale)
        if recipe.done:
            runs += [stored[FP]] + [stored[a] for a in plan.algorithms]
            continue

        def bar(label):
            return (lambda e, n, b, nb, loss: step(label, e, n, b, nb, loss)) if step else None

        fp_model, fp_result = run_full_precision(
            task,
            arch,
            data.train,
            data.test,
            config,
            plan.seed,
            device,
            folder / "fp32.pt",
            progress=bar(f"{task.name}/{arch}/fp32"),
            num_classes=data.num_classes,
        )
        if FP not in stored:
            stored[FP] = _file(store, key, FP, fp_result, task, data, config, device_label)
            notice(
                f"{task.name}/{arch}/fp32: {data.metric_name(task)} {fp_result.metric:.4f} "
                f"({fp_result.train_seconds:.0f} s)"
            )
        runs.append(stored[FP])
        for algo in plan.algorithms:
            if algo not in stored:
                result = run_binary(
                    task,
                    fp_model,
                    algo,
                    data.train,
                    data.test,
                    config,
                    plan.seed,
                    device,
                    folder / f"{algo}.pt",
                    progress=bar(f"{task.name}/{arch}/{algo}"),
                )
                stored[algo] = _file(store, key, algo, result, task, data, config, device_label)
                notice(
                    f"{task.name}/{arch}/{algo}: {data.metric_name(task)} {result.metric:.4f} "
                    f"({result.train_seconds:.0f} s)"
                )
            runs.append(stored[algo])
    return runs


def _file(
    store,
    key: dict,
    algorithm: str,
    result,
    task,
    data,
    config,
    device_label: str,
    threads: int | None = None,
) -> TrainingRun:
    import torch

    run = TrainingRun(
        **key,
        algorithm=algorithm,
        data_source=data.source,
        metric_name=data.metric_name(task),
        metric=result.metric,
        epochs=result.epochs,
        train_seconds=result.train_seconds,
        device=device_label,
        threads=threads or torch.get_num_threads(),
        config=config.as_dict(),
        host=socket.gethostname(),
        created_at=time.time(),
    )
    store.add_training_run(run)
    return run


@dataclass(frozen=True)
class TrainJob:
    """One learning-task run as a job for a pool worker (picklable; the worker reads the data itself)."""

    task: str
    arch: str
    algorithm: str
    scale: str
    seed: int
    data_root: str | None
    data_version: str  # what the driver loaded: the worker must load the same
    folder: str  # the recipe's checkpoint folder
    threads: int


@dataclass
class TrainOutcome:
    ok: bool
    metric: float = float("nan")
    epochs: int = 0
    train_seconds: float = 0.0
    threads: int = 1
    error: str = ""


_WORKER_DATA: dict = {}  # per worker process: each task's data, read once


def run_train_job(job: TrainJob) -> TrainOutcome:
    """Train one run in a pool worker (FP, or a binarized fine-tune from the FP checkpoint);
    a failure comes back as data, never as a dead worker."""
    import traceback

    import torch

    torch.set_num_threads(job.threads)
    try:
        from bimodels.tasks import get_task
        from bimodels.training import restore_full_precision, run_binary, run_full_precision

        task, cpu, folder = get_task(job.task), torch.device("cpu"), Path(job.folder)
        key = (job.task, job.scale, job.data_root, job.seed)
        if key not in _WORKER_DATA:
            _WORKER_DATA[key] = task.load(job.scale, Path(job.data_root) if job.data_root else None, job.seed)
        data, config = _WORKER_DATA[key], task.config(job.scale)
        if data.version != job.data_version:
            raise RuntimeError(f"the worker read data version {data.version}, the driver {job.data_version}")
        if job.algorithm == FP:
            _, result = run_full_precision(
                task,
                job.arch,
                data.train,
                data.test,
                config,
                job.seed,
                cpu,
                folder / "fp32.pt",
                num_classes=data.num_classes,
            )
        else:
            fp_model = restore_full_precision(
                task, job.arch, data.train, config, cpu, folder / "fp32.pt", num_classes=data.num_classes
            )
            result = run_binary(
                task,
                fp_model,
                job.algorithm,
                data.train,
                data.test,
                config,
                job.seed,
                cpu,
                folder / f"{job.algorithm}.pt",
            )
        return TrainOutcome(True, result.metric, result.epochs, result.train_seconds, job.threads)
    except Exception as exc:
        return TrainOutcome(
            False, error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"[:2000]
        )


class TrainingFailed(UserError):
    """Some runs failed; the others are stored, and a re-run retries only the failed ones."""


def _train_on_pool(
    plan: BenchPlan, store, todo: list[Recipe], loaded, pool, notice: NoticeFn
) -> list[TrainingRun]:
    from .executors import JobCrashed

    threads = 1
    failures: list[str] = []

    def jobs(algorithms_of):
        return [
            TrainJob(
                r.task.name,
                r.arch,
                algo,
                plan.scale,
                plan.seed,
                str(plan.data_root) if plan.data_root else None,
                r.key["data_version"],
                str(r.folder),
                threads,
            )
            for r in todo
            for algo in algorithms_of(r.stored)
        ]

    def finish(batch):
        by_job = {(r.task.name, r.arch): r for r in todo}
        for job, outcome in pool.run(run_train_job, batch):
            recipe = by_job[(job.task, job.arch)]
            task, key, stored = recipe.task, recipe.key, recipe.stored
            label = f"{job.task}/{job.arch}/{job.algorithm}"
            if isinstance(outcome, JobCrashed) or not outcome.ok:
                failures.append(f"{label}: {outcome.error.splitlines()[0] if outcome.error else 'failed'}")
                store.failed()
                notice(f"{label}: FAILED: {failures[-1].split(': ', 1)[1]}")
                continue
            data = loaded[job.task]
            stored[job.algorithm] = _file(
                store,
                key,
                job.algorithm,
                outcome,
                task,
                data,
                task.config(plan.scale),
                "cpu",
                threads=outcome.threads,
            )
            notice(f"{label}: {data.metric_name(task)} {outcome.metric:.4f} ({outcome.train_seconds:.0f} s)")

    fp_jobs = jobs(lambda stored: [] if FP in stored else [FP])
    if fp_jobs or not all(r.done for r in todo):
        notice(f"training on {pool.describe()}, {threads} torch thread each")
    finish(fp_jobs)
    finish(jobs(lambda stored: [a for a in plan.algorithms if a not in stored] if FP in stored else []))
    if failures:
        raise TrainingFailed(
            f"{len(failures)} training run(s) failed (the others are stored; a re-run retries "
            "these):\n  " + "\n  ".join(failures)
        )
    return [r.stored[a] for r in todo for a in (FP, *plan.algorithms)]


def hardware_rows(plan: BenchPlan, archs: list[str], store, notice: NoticeFn = print):
    """The store's measurements for these archs; when it holds none, profile them on the local board."""
    rows = store.rows()
    if any(m.arch in archs and m.status == "ok" and m.algorithm != FP and not m.emulated for m in rows):
        return rows
    from .artifacts import ArtifactCache
    from .client import BenchmarkSettings
    from .profile import Plan, new_campaign_id, run_campaign
    from .targets import resolve_targets

    notice(
        f"no hardware measurement of {', '.join(archs)} in the results store: profiling them on the local board"
    )
    quick = plan.scale == "quick"
    settings = BenchmarkSettings(
        warmup_runs=1 if quick else 2, min_runs=3 if quick else 10, min_duration_s=0.05 if quick else 1.0
    )
    profile_plan = Plan(archs, plan.algorithms, plan.hardware_runtimes, settings, campaign=new_campaign_id())
    with resolve_targets("local", False, None) as targets:
        run_campaign(targets, profile_plan, store, ArtifactCache(plan.seed))
    return store.rows()


def score(
    plan: BenchPlan,
    runs: list[TrainingRun],
    measurements,
    archs: list[str],
    corruption_runs=(),
    notes: dict[str, list[str]] | None = None,
    grid_runs=(),
) -> list[TrackResult]:
    ctx = BenchContext(
        algorithms=plan.algorithms,
        archs=archs,
        tasks=plan.tasks,
        runs=runs,
        measurements=measurements,
        corruption_runs=list(corruption_runs),
        grid_runs=list(grid_runs),
        notes=notes or {},
    )
    return [get_track(t).score(ctx) for t in plan.tracks]


def main_table(results: list[TrackResult], algorithms: list[str]) -> tuple[list[str], list[list]]:
    """Algorithms x tracks of overall metrics, like the paper's main table."""
    header = ["algorithm", *(r.title for r in results)]
    return header, [[algo, *(r.overall.get(algo) for r in results)] for algo in algorithms]
