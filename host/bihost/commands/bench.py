"""`bihost bench`: BiBench's tracks on this machine, and the paper's main table."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import UserError
from ..output import console, print_json
from .common import resolve_algorithms, resolve_names

if TYPE_CHECKING:
    from ..records import CorruptionRun, GridRun

SCALES = ("quick", "default", "paper")


def _names(spec: str | None, known: list[str], kind: str) -> list[str] | None:
    return None if spec is None else resolve_names(spec, known, kind)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(v) -> str:
    return "n/a" if _missing(v) else f"{v:.3f}"


def markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join([str(r[0]), *(_fmt(v) for v in r[1:])]) + " |" for r in rows]
    return "\n".join(lines)


def to_csv(header: list[str], rows: list[list]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[r[0], *("" if _missing(v) else repr(v) for v in r[1:])] for r in rows])
    return out.getvalue()


@click.command("bench")
@click.option(
    "--track",
    "tracks",
    default="all",
    show_default=True,
    help="Track(s), comma-separated: task, arch, robustness, consumption, complexity, hardware, or 'all'.",
)
@click.option(
    "--task", "tasks", default="all", show_default=True, help="Learning task(s), comma-separated, or 'all'."
)
@click.option(
    "--arch", "archs", default=None, help="Architecture(s) (default: each task's own at this scale)."
)
@click.option("--algo", default="all", show_default=True, help="Algorithm(s), comma-separated, or 'all'.")
@click.option(
    "--scale",
    type=click.Choice(SCALES),
    default="quick",
    show_default=True,
    help="quick: a smoke run; default: real convergence on the fresh-machine data; paper: the paper's "
    "epochs and datasets from --data-root.",
)
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder with the paper's datasets in their own formats (e.g. cifar-10-batches-py/).",
)
@click.option(
    "--device", default="auto", show_default=True, help="auto (CUDA when present), cpu or cuda[:N]."
)
@click.option(
    "--seed", default=0, show_default=True, help="Seed of data subsets, initialisation and shuffling."
)
@click.option(
    "--runtime",
    "runtimes",
    default="custom",
    show_default=True,
    help="Runtimes the hardware track profiles on the local board when the store has no rows.",
)
@click.option(
    "--results",
    "results_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Results directory (default ./results or $BIHOST_RESULTS); checkpoints go in its checkpoints/.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["markdown", "csv"]),
    default="markdown",
    show_default=True,
    help="How to print the main table.",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where the training-consumption grid's jobs run: a local process pool, or Ray.",
)
@click.option("--workers", default=2, show_default=True, help="Grid jobs at a time (one torch thread each).")
@click.option(
    "--train-workers",
    default=1,
    show_default=True,
    help="Learning-task runs at a time on CPU, one torch thread each, on a local process pool (1: one "
    "after another in this process with all threads; on 2 cores the pool gains nothing).",
)
@click.option(
    "--ray-address",
    default=None,
    help="HOST:PORT of a running Ray head (with --executor ray); without it, Ray starts on this machine.",
)
@click.option("--json", "as_json", is_flag=True, help="Print every underlying number as JSON.")
def command(
    tracks,
    tasks,
    archs,
    algo,
    scale,
    data_root,
    device,
    seed,
    runtimes,
    results_dir,
    fmt,
    executor,
    workers,
    train_workers,
    ray_address,
    as_json,
) -> None:
    """Train and score BiBench's tracks, then print the algorithms x tracks table."""
    import bimodels
    from bimodels.tasks import list_tasks

    from ..bench import BenchPlan, hardware_rows, main_table, score
    from ..results import ResultsStore
    from ..tracks import get_track, list_tracks

    plan = BenchPlan(
        tracks=resolve_names(tracks, list_tracks(), "track"),  # --track and --task default to "all"
        tasks=resolve_names(tasks, list_tasks(), "task"),
        algorithms=resolve_algorithms(algo),
        scale=scale,
        archs=_names(archs, bimodels.list_architectures(), "architecture"),
        seed=seed,
        data_root=data_root,
        device=device,
        hardware_runtimes=[r.strip() for r in runtimes.split(",")],
    )
    if data_root is not None and not data_root.is_dir():
        raise UserError(f"--data-root {data_root} is not a folder")
    store = ResultsStore(results_dir or Path(os.environ.get("BIHOST_RESULTS", "results")))
    if "robustness" in plan.tracks:
        from ..robustness import check_corruption_data

        check_corruption_data(plan)
    from ..executors import LocalPool, make_executor

    pool = None
    if any(getattr(get_track(t), "needs_grid", False) for t in plan.tracks):
        pool = make_executor(executor, workers, ray_address)  # a Ray head that does not answer fails here
    runs = []
    if plan.needs_training():
        # Learning-task runs share checkpoints on this machine's disk: always the local pool.
        runs = _train_with_progress(
            plan, store, as_json, LocalPool(train_workers) if train_workers > 1 else None
        )
    trained_archs = sorted({r.arch for r in runs}, key=bimodels.list_architectures().index)
    archs_scored = trained_archs or plan.archs or ["resnet20"]
    measurements = (
        hardware_rows(plan, archs_scored, store, notice=_notice) if "hardware" in plan.tracks else []
    )
    corruption_runs: list[CorruptionRun] = []
    notes: dict[str, list[str]] = {}
    if "robustness" in plan.tracks and runs:
        from ..robustness import run_robustness

        corruption_runs, notes["robustness"] = run_robustness(
            plan, runs, store, store.directory / "checkpoints", notice=_notice
        )
    grid_runs: list[GridRun] = []
    if pool is not None:
        from ..consumption import run_grid

        grid_runs, notes["consumption"] = run_grid(plan, store, pool, notice=_notice)
    results = score(plan, runs, measurements, archs_scored, corruption_runs, notes, grid_runs)
    header, rows = main_table(results, plan.algorithms)
    if as_json:
        print_json(
            {
                "scale": scale,
                "seed": seed,
                "algorithms": plan.algorithms,
                "archs": archs_scored,
                "table": {"columns": header, "rows": rows},
                "tracks": [r.as_dict() for r in results],
                "runs": [r.as_dict() for r in runs],
                "corruption_runs": [r.as_dict() for r in corruption_runs],
                "grid_runs": [r.as_dict() for r in grid_runs],
            }
        )
        return
    click.echo(markdown(header, rows) if fmt == "markdown" else to_csv(header, rows), nl=fmt == "markdown")
    for r in results:
        for note in r.notes:
            _notice(f"{r.title}: {note}")


def _notice(message: str) -> None:
    click.echo(message, err=True)


def _train_with_progress(plan, store, quiet: bool, pool=None):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..bench import run_training

    results_dir = store.directory
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=True,
    )
    bars: dict[str, int] = {}

    def step(label, epoch, epochs, batch, batches, loss):
        if label not in bars:
            bars[label] = progress.add_task(label, total=epochs * batches, status="")
        progress.update(
            bars[label],
            completed=epoch * batches + batch,
            status=f"epoch {epoch + 1}/{epochs} loss {loss:.3f}",
        )

    def notice(message):
        (progress.console.print if progress.console.is_terminal else _notice)(message)

    with progress:
        return run_training(plan, store, results_dir / "checkpoints", notice=notice, step=step, pool=pool)
