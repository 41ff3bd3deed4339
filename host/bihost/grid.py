"""The training-consumption grid: BiBench's ResNet-18 trained from scratch, full precision
and with each algorithm, under 8 hyperparameter settings, each run an independent job.

A job is a plain, picklable `GridJob`; `run_grid_job` runs it in whatever process an
executor gives it (a local pool worker, a Ray worker), with a fixed number of torch threads,
and returns a `GridOutcome` that says which hardware it ran on, so times from different
machines are never compared. The job catches its own Python errors (the outcome carries
them), so one diverging run never takes a worker down.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

# {SGD 0.1, SGD 0.01, Adam 1e-3, Adam 1e-4} x {cosine, step decay}
SETTINGS: tuple[tuple[str, float, str], ...] = tuple(
    (opt, lr, schedule)
    for opt, lr in (("sgd", 0.1), ("sgd", 0.01), ("adam", 1e-3), ("adam", 1e-4))
    for schedule in ("cosine", "step")
)


def setting_name(optimizer: str, lr: float, schedule: str) -> str:
    return f"{optimizer}-{lr:g}-{schedule}"


@dataclass(frozen=True)
class GridScale:
    """How big each grid job is at a scale: the arch, the samples and epochs it trains."""

    arch: str
    n_train: int | None  # None: the whole training split
    n_test: int | None
    epochs: int
    batch_size: int
    note: str = ""


GRID_SCALES = {
    # quick: a smoke run of all 72 jobs; ResNet-18 itself would take ~10 min on 2 cores.
    "quick": GridScale("resnet20", 64, 50, 1, 64, "quick scale: resnet20 stands in for resnet18_cifar"),
    # default: measured on 2 cores (1 thread a job, beside other work), 2,000 images x 3
    # epochs took 7.5 min a job, 4.5 h for the 72; at 1,000 x 2 the grid is about 1.5 h.
    "default": GridScale("resnet18_cifar", 1000, 500, 2, 64),
    "paper": GridScale("resnet18_cifar", None, None, 200, 256),
}
GRID_TASK = "image_classification"


@dataclass(frozen=True)
class GridJob:
    task: str
    arch: str
    algorithm: str  # "fp32" or a binarization algorithm
    optimizer: str
    lr: float
    schedule: str
    epochs: int
    batch_size: int
    n_train: int | None
    n_test: int | None
    scale: str
    seed: int
    data_root: str | None
    threads: int

    @property
    def setting(self) -> str:
        return setting_name(self.optimizer, self.lr, self.schedule)

    def recipe_hash(self) -> str:
        """Everything that shapes the number but the algorithm and setting (those are key columns)."""
        recipe = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("algorithm", "data_root", "optimizer", "lr", "schedule")
        }
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class GridOutcome:
    ok: bool
    metric: float = float("nan")
    train_seconds: float = 0.0
    seconds_per_epoch: float = 0.0
    final_loss: float = float("nan")
    data_version: str = ""
    data_source: str = ""
    worker: dict = field(default_factory=dict)  # host, cpu_model, cores, threads, machine
    error: str = ""


def grid_jobs(
    scale: str, algorithms: list[str], seed: int, data_root: Path | None, threads: int
) -> list[GridJob]:
    size = GRID_SCALES[scale]
    return [
        GridJob(
            GRID_TASK,
            size.arch,
            algo,
            opt,
            lr,
            schedule,
            size.epochs,
            size.batch_size,
            size.n_train,
            size.n_test,
            scale,
            seed,
            str(data_root) if data_root else None,
            threads,
        )
        for algo in ["fp32", *algorithms]
        for opt, lr, schedule in SETTINGS
    ]


def worker_hardware(threads: int) -> dict:
    """What a timing ran on: rows with different hardware are never put in one ratio."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    # nice: Ray runs its workers at niceness 15 unless told otherwise; on a busy machine such a
    # worker gets a fraction of a core, so its times are not comparable with a nice-0 worker's.
    return {
        "host": socket.gethostname(),
        "cpu_model": cpu,
        "cores": os.cpu_count() or 0,
        "threads": threads,
        "machine": platform.machine(),
        "nice": os.nice(0),
    }


def hardware_signature(worker: dict) -> str:
    """Rows are comparable when this agrees: the CPU, its core count, the threads used and the
    worker's scheduling priority."""
    return (
        f"{worker.get('cpu_model', '?')} x{worker.get('cores', '?')} cores, {worker.get('threads', '?')} threads, "
        f"nice {worker.get('nice', '?')}"
    )


_DATA: dict = {}  # per worker process: the dataset, read once for all the jobs it runs


def grid_data(job: GridJob):
    """(task data, train split, test split, data version) of a job: the driver computes the same
    version to find finished jobs, a worker to train. Read once per process."""
    import numpy as np

    from bimodels.tasks import get_task
    from bimodels.tasks.base import Split, data_version

    key = (job.task, job.scale, job.data_root, job.seed, job.n_train, job.n_test)
    if key not in _DATA:
        data = get_task(job.task).load(job.scale, Path(job.data_root) if job.data_root else None, job.seed)
        rng = np.random.default_rng(job.seed + 10)
        tr = (
            np.sort(rng.permutation(len(data.train))[: job.n_train])
            if job.n_train
            else np.arange(len(data.train))
        )
        te = (
            np.sort(rng.permutation(len(data.test))[: job.n_test])
            if job.n_test
            else np.arange(len(data.test))
        )
        train_split = Split("train", data.train.x[tr], data.train.y[tr], data.train.prepare)
        test_split = Split("test", data.test.x[te], data.test.y[te], data.test.prepare)
        _DATA[key] = (
            data,
            train_split,
            test_split,
            data_version(train_split.x, train_split.y, test_split.x, test_split.y),
        )
    return _DATA[key]


def run_grid_job(job: GridJob) -> GridOutcome:
    """Train one grid run from scratch and score it; never raises for a failure of the run."""
    import torch

    torch.set_num_threads(job.threads)
    worker = worker_hardware(job.threads)
    if os.environ.get("BIBENCH_GRID_CRASH") == job.algorithm + "/" + job.setting:  # fault injection for tests
        os._exit(3)  # the worker dies as under the OOM killer: no exception, no result
    try:
        return _run(job, worker)
    except Exception as exc:  # the job's failure is data for the grid, not a dead worker
        return GridOutcome(
            ok=False,
            worker=worker,
            error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"[:2000],
        )


def _run(job: GridJob, worker: dict) -> GridOutcome:
    import torch

    from bimodels.binarize import binarize
    from bimodels.tasks import get_task
    from bimodels.training import recalibrate_batch_norm, train

    if os.environ.get("BIBENCH_GRID_FAIL") == job.algorithm + "/" + job.setting:  # fault injection for tests
        raise RuntimeError("injected failure (BIBENCH_GRID_FAIL)")
    task = get_task(job.task)
    data, train_split, test_split, version = grid_data(job)
    device = torch.device("cpu")
    torch.manual_seed(job.seed)
    model = task.create_model(job.arch, data.num_classes)
    if job.algorithm != "fp32":  # from scratch: binarized at random initialisation, no FP weights
        model = binarize(model, job.algorithm, example_input=train_split.batch(torch.arange(1))[0])
    seconds, loss, _ = train(
        model,
        task,
        train_split,
        optimizer=job.optimizer,
        lr=job.lr,
        epochs=job.epochs,
        batch_size=job.batch_size,
        weight_decay=5e-4 if job.algorithm == "fp32" else 0.0,
        seed=job.seed,
        device=device,
        checkpoint=None,
        schedule=job.schedule,
    )
    recalibrate_batch_norm(model, train_split, 256, device)
    metric = task.evaluate(model, test_split, 256, device)
    return GridOutcome(
        ok=True,
        metric=metric,
        train_seconds=seconds,
        seconds_per_epoch=seconds / job.epochs,
        final_loss=loss,
        data_version=version,
        data_source=data.source,
        worker=worker,
    )
