"""The corruption-robustness track's measurements: the learning-task track's trained models
(rebuilt from their checkpoints, never retrained) scored on corrupted copies of their test
images.

A fixed, seeded subset of each image task's test split is corrupted 15 ways at 5 severities
(`bimodels.data.corruptions`); each model is scored on the clean subset (severity 0) and on
every corrupted set. The loop runs set by set, every model per set, and commits each set's
rows before the next, so an interrupted run resumes where it stopped and a finished one is
not measured again.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .records import CorruptionRun, TrainingRun
from .tracks.base import FP

NoticeFn = Callable[[str], None]
# Test images each scale corrupts (None: the whole test split): 75 sets of them are scored per model.
ROBUSTNESS_IMAGES = {"quick": 25, "default": 1000, "paper": None}
CLEAN = "clean"


def robustness_subset(count: int, scale: str, seed: int) -> np.ndarray:
    """Rows of the test split the robustness track scores, the same for every model."""
    n = ROBUSTNESS_IMAGES[scale]
    if n is None or n >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed + 2).permutation(count)[:n])


def check_corruption_data(plan) -> None:
    """A CIFAR-10-C under --data-root is checked before any training: a malformed one fails now."""
    from bimodels.data.corruptions import Cifar10C, find_cifar10c

    folder = find_cifar10c(plan.data_root)
    if folder is not None:
        Cifar10C(folder)


def run_robustness(
    plan, runs: list[TrainingRun], store, checkpoints: Path, notice: NoticeFn = print
) -> tuple[list[CorruptionRun], list[str]]:
    """Every trained model of `runs` whose task takes corruptions, scored on every corrupted set
    (or found in the store); returns the rows and notes for the track."""
    import torch

    from bimodels.data.corruptions import (
        CORRUPTIONS,
        SEVERITIES,
        Cifar10C,
        CorruptionCache,
        CorruptionUnavailable,
        find_cifar10c,
        implementation,
    )
    from bimodels.tasks import get_task
    from bimodels.tasks.base import Split
    from bimodels.training import CheckpointMissing, resolve_device, restore_binary, restore_full_precision

    from .bench import checkpoint_folder

    device = resolve_device(plan.device)
    rows: list[CorruptionRun] = []
    notes: list[str] = []
    for task_name in dict.fromkeys(r.task for r in runs):
        task = get_task(task_name)
        if not task.corruptible:
            continue
        data = task.load(plan.scale, plan.data_root, plan.seed)
        test = data.test
        if test.x.dtype != torch.uint8 or test.x.ndim != 4:
            notes.append(
                f"{task_name}: its test images are decoded from files a batch at a time ({data.source}); "
                "not corrupted"
            )
            continue
        pick = robustness_subset(len(test), plan.scale, plan.seed)
        images, labels = test.x[pick].numpy(), test.y[pick]
        folder_10c = find_cifar10c(plan.data_root) if data.source.startswith("cifar-10") else None
        sets: Cifar10C | CorruptionCache
        try:
            if folder_10c is not None:
                sets = Cifar10C(folder_10c).select(
                    np.asarray(test.meta["source_index"])[pick],
                    labels.numpy(),
                    int(test.meta["source_count"]),
                )
                source = f"CIFAR-10-C ({folder_10c})"
            else:
                sets = CorruptionCache(store.directory / "corruptions" / task_name, images, plan.seed, notice)
                height, width = images.shape[-2:]
                padded = f"; {height}x{width} zero-padded to 32x32" if min(height, width) < 32 else ""
                source = f"{implementation()} (ImageNet-C parameters{padded})"
        except CorruptionUnavailable as exc:
            notes.append(f"{task_name}: not measured: {exc}")
            continue
        notes.append(f"{task_name}: {len(pick)} test images, {source}")
        config = task.config(plan.scale)
        models: dict[tuple[str, str], torch.nn.Module] = {}
        pending: dict[tuple[str, str], set[tuple[str, int]]] = {}
        wanted = [(CLEAN, 0)] + [(c, s) for c in CORRUPTIONS for s in SEVERITIES]
        task_runs = [r for r in runs if r.task == task_name]
        by_key = {}
        for run in task_runs:
            found = store.corruption_runs(
                task=run.task,
                arch=run.arch,
                algorithm=run.algorithm,
                scale=run.scale,
                seed=run.seed,
                config_hash=run.config_hash,
                data_version=run.data_version,
                corruption_version=sets.version,
            )
            by_key[(run.arch, run.algorithm)] = run
            rows += found
            missing = set(wanted) - {(f.corruption, f.severity) for f in found}
            if missing:
                pending[(run.arch, run.algorithm)] = missing
        if not pending:
            continue
        started = time.perf_counter()
        fp_models = {}
        for arch, algorithm in sorted(pending, key=lambda k: k[1] != FP):
            run = by_key[(arch, algorithm)]
            folder = checkpoint_folder(
                checkpoints, task_name, arch, run.scale, run.config_hash, run.data_version, run.seed
            )
            try:
                if arch not in fp_models:
                    fp_models[arch] = restore_full_precision(
                        task,
                        arch,
                        data.train,
                        config,
                        device,
                        folder / "fp32.pt",
                        num_classes=data.num_classes,
                    )
                models[(arch, algorithm)] = (
                    fp_models[arch]
                    if algorithm == FP
                    else restore_binary(
                        task,
                        fp_models[arch],
                        algorithm,
                        data.train,
                        config,
                        device,
                        folder / f"{algorithm}.pt",
                    )
                )
            except CheckpointMissing as exc:
                notes.append(f"{task_name}/{arch}/{algorithm}: not measured: {exc}")
        device_label = str(device)
        for corruption, severity in wanted:
            todo = [k for k in models if (corruption, severity) in pending[k]]
            if not todo:
                continue
            x = images if severity == 0 else sets.get(corruption, severity)
            split = Split("test", torch.from_numpy(np.ascontiguousarray(x)), labels, test.prepare)
            batch = []
            for arch, algorithm in todo:
                run = by_key[(arch, algorithm)]
                metric = task.evaluate(models[(arch, algorithm)], split, config.eval_batch_size, device)
                batch.append(
                    CorruptionRun(
                        task=task_name,
                        arch=arch,
                        algorithm=algorithm,
                        scale=run.scale,
                        seed=run.seed,
                        config_hash=run.config_hash,
                        data_version=run.data_version,
                        corruption_source=source,
                        corruption_version=sets.version,
                        corruption=corruption,
                        severity=severity,
                        n_images=len(pick),
                        metric=metric,
                        device=device_label,
                        host=socket.gethostname(),
                        created_at=time.time(),
                    )
                )
            store.add_corruption_runs(batch)
            rows += batch
        notice(
            f"{task_name}: {len(models)} models scored on {len(wanted) - 1} corrupted sets of {len(pick)} "
            f"images ({time.perf_counter() - started:.0f} s)"
        )
    return sorted(rows, key=lambda r: (r.task, r.arch, r.algorithm, r.corruption, r.severity)), notes
