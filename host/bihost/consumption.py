"""The training-consumption track's measurements: the grid of `bihost.grid`, run on an
executor, each finished job filed as a row at once.

Jobs already stored as ok are skipped, so an interrupted grid resumes. A job that fails (its
own error, or its worker died) is filed as failed with the error and retried once after the
first pass; the rest of the grid goes on either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .executors import JobCrashed
from .grid import GridJob, GridOutcome, grid_data, grid_jobs, run_grid_job
from .records import GridRun

NoticeFn = Callable[[str], None]
ATTEMPTS = 2  # the first try and one retry


def _row(job: GridJob, outcome, version: str, source: str, executor: str, attempts: int) -> GridRun:
    if isinstance(outcome, JobCrashed):
        outcome = GridOutcome(ok=False, error=outcome.error)
    return GridRun(
        task=job.task,
        arch=job.arch,
        algorithm=job.algorithm,
        setting=job.setting,
        optimizer=job.optimizer,
        lr=job.lr,
        schedule=job.schedule,
        scale=job.scale,
        seed=job.seed,
        recipe_hash=job.recipe_hash(),
        data_version=outcome.data_version or version,
        data_source=outcome.data_source or source,
        status="ok" if outcome.ok else "failed",
        metric=outcome.metric,
        epochs=job.epochs,
        train_seconds=outcome.train_seconds,
        seconds_per_epoch=outcome.seconds_per_epoch,
        worker=outcome.worker,
        executor=executor,
        attempts=attempts,
        error=outcome.error,
        created_at=time.time(),
    )


def run_grid(
    plan, store, executor, notice: NoticeFn = print, threads: int = 1
) -> tuple[list[GridRun], list[str]]:
    """Every grid job of the plan, run or found in the store; returns the rows and notes for the track."""
    from .grid import GRID_SCALES

    jobs = grid_jobs(plan.scale, plan.algorithms, plan.seed, plan.data_root, threads)
    data, _, _, version = grid_data(jobs[0])  # the driver reads the data too: it names the rows
    key = dict(
        task=jobs[0].task,
        arch=jobs[0].arch,
        scale=plan.scale,
        seed=plan.seed,
        recipe_hash=jobs[0].recipe_hash(),
        data_version=version,
    )
    stored = {(r.algorithm, r.setting): r for r in store.grid_runs(**key)}
    todo = [
        j
        for j in jobs
        if (j.algorithm, j.setting) not in stored or stored[(j.algorithm, j.setting)].status != "ok"
    ]
    notes = [n for n in [GRID_SCALES[plan.scale].note] if n]
    if todo:
        notice(
            f"training-consumption grid: {len(todo)} of {len(jobs)} runs to train on {executor.describe()}"
        )
    started, done = time.perf_counter(), 0
    for attempt in range(1, ATTEMPTS + 1):
        failed = []
        for job, outcome in executor.run(run_grid_job, todo):
            row = _row(job, outcome, version, data.source, executor.describe(), attempt)
            store.add_grid_run(row)
            stored[(job.algorithm, job.setting)] = row
            done += 1
            if row.status == "ok":
                notice(
                    f"grid {job.algorithm} {job.setting}: accuracy {row.metric:.4f}, "
                    f"{row.seconds_per_epoch:.1f} s/epoch ({done} finished)"
                )
            else:
                failed.append(job)
                first_line = row.error.splitlines()[0] if row.error else "failed"
                notice(
                    f"grid {job.algorithm} {job.setting}: FAILED (attempt {attempt} of {ATTEMPTS}): {first_line}"
                )
        todo = failed
        if not todo:
            break
    if done:
        notes.append(f"grid wall time {time.perf_counter() - started:.0f} s on {executor.describe()}")
    if todo:
        notes.append(
            f"{len(todo)} grid runs failed twice: " + ", ".join(f"{j.algorithm} {j.setting}" for j in todo)
        )
    return [stored[(j.algorithm, j.setting)] for j in jobs if (j.algorithm, j.setting) in stored], notes
