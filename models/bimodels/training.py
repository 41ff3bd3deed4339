"""BiBench's training protocol: train the full-precision model, then initialise each
binarized model from its weights and fine-tune it.

Each run checkpoints after every epoch (model, optimiser, schedule, elapsed time) with an
atomic rename, so a crash loses at most the epoch in flight and a re-run resumes from the
last finished epoch. The learning rate follows a cosine to 0 over the run, stepped per
batch; shuffling is seeded per (seed, epoch), so a resumed run sees the same batches as an
uninterrupted one. Only a "train" split is accepted: no training step sees the test split.

Training time is the sum of the batches' wall times, not an epoch's wall time, so that a
stall is not counted: a process stopped (SIGSTOP) or a machine paused (a VM frozen between
sessions) keeps the wall clock running, and one such pause once made a 5-epoch fine-tune
read 5,551 s instead of ~200 s. On the CPU a batch that took more than STALL_FACTOR times
the epoch's median batch (and at least STALL_FLOOR_S more) is counted at the median and
logged as a stall; on CUDA, where a batch's wall time is not its compute time, the epoch
is timed whole.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .binarize import binarize, set_epoch
from .tasks.base import Split, Task, TrainConfig

# (epoch, epochs, batch, batches, running loss) -> None: progress bars live in the caller.
ProgressFn = Callable[[int, int, int, int, float], None]

STALL_FACTOR = 20.0  # a batch this many times slower than the epoch's median was not computing
STALL_FLOOR_S = 1.0  # ... and at least this much slower (tiny batches vary more)

log = logging.getLogger(__name__)


def stall_free_seconds(batch_seconds: list[float]) -> tuple[float, int]:
    """An epoch's training seconds with each stalled batch counted at the median; (seconds, stalls)."""
    if not batch_seconds:
        return 0.0, 0
    median = statistics.median(batch_seconds)
    cap = max(STALL_FACTOR * median, median + STALL_FLOOR_S)
    stalls = sum(1 for s in batch_seconds if s > cap)
    return sum(median if s > cap else s for s in batch_seconds), stalls


@dataclass(frozen=True)
class RunResult:
    metric: float  # the task's metric on the test split, in [0, 1]
    epochs: int
    train_seconds: float  # training only (no evaluation, no checkpoint writes), summed over resumes
    final_loss: float
    resumed_from: int  # epochs that were already done when this call started (0: fresh)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here (use auto or cpu)")
    return device


def _optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; known: sgd, adam")


SCHEDULES = ("cosine", "step")
STEP_MILESTONES = (0.5, 0.75)  # step decay: the learning rate x 0.1 at half and three quarters of the run


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """The learning rate's multiplier after `step` of `steps` batches: cosine to 0, or step decay."""
    progress = min(step, steps) / steps
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "step":
        return 0.1 ** sum(progress >= m for m in STEP_MILESTONES)
    raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")


def train(
    model: nn.Module,
    task: Task,
    train_split: Split,
    *,
    optimizer: str,
    lr: float,
    epochs: int,
    batch_size: int,
    weight_decay: float,
    seed: int,
    device: torch.device,
    checkpoint: Path | None,
    progress: ProgressFn | None = None,
    schedule: str = "cosine",
) -> tuple[float, float, int]:
    """Train `model` in place on the train split; returns (train seconds, last epoch's mean loss,
    epochs already done at the start). Resumes from `checkpoint` when it holds a partial run;
    None: no checkpoints (short grid jobs, resumed as whole jobs)."""
    split = train_split.require("train")
    lr_factor(schedule, 0, 1)  # an unknown schedule fails before any work
    model.to(device)
    opt = _optimizer(optimizer, model.parameters(), lr, weight_decay)
    steps = max(1, math.ceil(len(split) / batch_size)) * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(schedule, step, steps))
    start_epoch, seconds, loss_value = 0, 0.0, float("nan")
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, seconds, loss_value = state["epoch"], state["seconds"], state["loss"]
    resumed = start_epoch
    for epoch in range(start_epoch, epochs):
        set_epoch(model, epoch, epochs)  # ReCU's tau, FDA's n and lambda (no-op for FP)
        model.train()
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        total, count = 0.0, 0
        started = time.perf_counter()
        batches = math.ceil(len(split) / batch_size)
        batch_seconds: list[float] = []
        for b in range(batches):
            batch_started = time.perf_counter()
            x, y = split.batch(order[b * batch_size : (b + 1) * batch_size])
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = task.loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, count = total + float(loss.detach()) * len(y), count + len(y)
            batch_seconds.append(time.perf_counter() - batch_started)  # float(loss) waited for it
            if progress is not None:
                progress(epoch, epochs, b + 1, batches, total / count)
        if device.type == "cuda":
            torch.cuda.synchronize()
            seconds += time.perf_counter() - started
        else:
            epoch_seconds, stalls = stall_free_seconds(batch_seconds)
            seconds += epoch_seconds
            if stalls:
                log.warning(
                    "epoch %d: %d batch(es) stalled (process stopped or machine paused); "
                    "counted at the median batch time, %.3f s",
                    epoch + 1,
                    stalls,
                    statistics.median(batch_seconds),
                )
        loss_value = total / max(1, count)
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"training diverged in epoch {epoch + 1}: loss {loss_value}")
        if checkpoint is not None:
            _save(
                checkpoint,
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "epoch": epoch + 1,
                    "seconds": seconds,
                    "loss": loss_value,
                },
            )
    return seconds, loss_value, resumed


PRECISE_BN_SAMPLES = 8192


@torch.no_grad()
def recalibrate_batch_norm(
    model: nn.Module,
    split: Split,
    batch_size: int,
    device: torch.device,
    max_samples: int = PRECISE_BN_SAMPLES,
) -> None:
    """Re-estimate every batch norm's running statistics as a plain average over (up to
    `max_samples` of) the training split, with the final weights ("precise BN").

    The exponential running average mixes statistics of weights from many steps ago; on a
    short run (the quick scale, a binary fine-tune whose activations change fast) that made
    eval-mode accuracy 26% where the same weights scored 66% on batch statistics.
    """
    split = split.require("train")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    n = min(len(split), max_samples)
    for start in range(0, n, batch_size):
        x, _ = split.batch(torch.arange(start, min(start + batch_size, n)))
        model(x.to(device))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def run_full_precision(
    task: Task,
    arch: str,
    data_train: Split,
    data_test: Split,
    config: TrainConfig,
    seed: int,
    device: torch.device,
    checkpoint: Path,
    progress: ProgressFn | None = None,
    num_classes: int | None = None,
) -> tuple[nn.Module, RunResult]:
    """Train the FP model (or resume it); returns it, trained, with its test metric."""
    torch.manual_seed(seed)
    model = task.create_model(arch, num_classes)
    seconds, loss, resumed = train(
        model,
        task,
        data_train,
        optimizer=config.fp_optimizer,
        lr=config.fp_lr,
        epochs=config.fp_epochs,
        batch_size=config.batch_size,
        weight_decay=config.weight_decay,
        seed=seed,
        device=device,
        checkpoint=checkpoint,
        progress=progress,
    )
    recalibrate_batch_norm(model, data_train, config.eval_batch_size, device)
    metric = task.evaluate(model, data_test.require("test"), config.eval_batch_size, device)
    return model, RunResult(metric, config.fp_epochs, seconds, loss, resumed)


def run_binary(
    task: Task,
    fp_model: nn.Module,
    algorithm: str,
    data_train: Split,
    data_test: Split,
    config: TrainConfig,
    seed: int,
    device: torch.device,
    checkpoint: Path,
    progress: ProgressFn | None = None,
) -> RunResult:
    """Binarize a copy of the trained FP model (first and last layers stay FP) and fine-tune it."""
    torch.manual_seed(seed)
    example = data_train.batch(torch.arange(1))[0]
    model = binarize(fp_model.cpu(), algorithm, example_input=example)
    seconds, loss, resumed = train(
        model,
        task,
        data_train,
        optimizer=config.bin_optimizer,
        lr=config.bin_lr,
        epochs=config.bin_epochs,
        batch_size=config.batch_size,
        weight_decay=0.0,
        seed=seed,
        device=device,
        checkpoint=checkpoint,
        progress=progress,
    )
    recalibrate_batch_norm(model, data_train, config.eval_batch_size, device)
    metric = task.evaluate(model, data_test.require("test"), config.eval_batch_size, device)
    return RunResult(metric, config.bin_epochs, seconds, loss, resumed)


class CheckpointMissing(FileNotFoundError):
    """A stored run's finished checkpoint is gone or incomplete, so its model cannot be rebuilt."""


def _load_finished(model: nn.Module, checkpoint: Path, epochs: int, device: torch.device) -> None:
    if not checkpoint.exists():
        raise CheckpointMissing(
            f"{checkpoint} is missing: its model cannot be rebuilt (retrain it by deleting the "
            "stored row, or keep checkpoints with the results)"
        )
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if state.get("epoch") != epochs:
        raise CheckpointMissing(
            f"{checkpoint} holds {state.get('epoch')} of {epochs} epochs: the run is unfinished"
        )
    model.load_state_dict(state["model"])
    model.to(device)


def restore_full_precision(
    task: Task,
    arch: str,
    data_train: Split,
    config: TrainConfig,
    device: torch.device,
    checkpoint: Path,
    num_classes: int | None = None,
) -> nn.Module:
    """The FP model a finished run scored, rebuilt from its checkpoint without training.

    Precise BN is a pure function of the weights and the training split, so recalibrating
    again gives the exact model that was evaluated.
    """
    model = task.create_model(arch, num_classes)
    _load_finished(model, checkpoint, config.fp_epochs, device)
    recalibrate_batch_norm(model, data_train, config.eval_batch_size, device)
    return model


def restore_binary(
    task: Task,
    fp_model: nn.Module,
    algorithm: str,
    data_train: Split,
    config: TrainConfig,
    device: torch.device,
    checkpoint: Path,
) -> nn.Module:
    """The binarized model a finished run scored, rebuilt from its checkpoint without training."""
    example = data_train.batch(torch.arange(1))[0]
    model = binarize(fp_model.cpu(), algorithm, example_input=example)
    _load_finished(model, checkpoint, config.bin_epochs, device)
    recalibrate_batch_norm(model, data_train, config.eval_batch_size, device)
    return model
