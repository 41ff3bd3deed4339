"""Point-cloud part segmentation (BiBench: ShapeNet-part), scored by instance mIoU.

Data: ShapeNet-part's `.txt` point files from `--data-root` (16 categories, 50 parts);
otherwise generated objects of 6 categories with 16 labelled parts (`bimodels.data.parts`).
Clouds are centred and scaled into the unit sphere; targets are per-point global part ids.

Metric, as PointNet and its successors report it on ShapeNet-part: for each shape, the
prediction is the best-scoring part among its category's parts (the category is known at
test time); per part of that category, IoU = |predicted & true| / |predicted | true|,
counted as 1 when the part is neither present nor predicted; the shape's IoU is the mean
over its category's parts, and mIoU is the mean over shapes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..data import parts
from ..data.shapenet_part import find_shapenet_part, read_shapenet_part, shapenet_part_groups
from .base import Split, Task, TaskData, TaskError, TrainConfig, data_version, register_task
from .point_cloud_classification import normalise

# (train clouds, test clouds, points per cloud) per scale; ShapeNet-part keeps its own split.
SIZES = {"quick": (160, 80, 128), "default": (2000, 800, 512), "paper": (None, None, 2048)}


def instance_miou(logits: np.ndarray, labels: np.ndarray, groups: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """Per-shape IoU: `logits` (shapes, parts, points), `labels` (shapes, points) global part ids."""
    group_of = {p: g for g in groups for p in g}
    out = np.empty(len(labels))
    for i, (score, truth) in enumerate(zip(logits, labels)):
        group = np.array(group_of[int(truth[0])])
        pred = group[score[group].argmax(axis=0)]
        ious = []
        for part in group:
            p, t = pred == part, truth == part
            union = np.logical_or(p, t).sum()
            ious.append(1.0 if union == 0 else np.logical_and(p, t).sum() / union)
        out[i] = np.mean(ious)
    return out


@register_task
class PartSegmentation(Task):
    name = "part_segmentation"
    kind = "point-cloud part segmentation"
    metric = "instance_miou"
    num_classes = len(parts.PART_NAMES)
    archs = ("pointnet_part_seg",)
    configs = {
        "quick": TrainConfig(
            fp_epochs=3,
            fp_optimizer="adam",
            fp_lr=2e-3,
            bin_epochs=1,
            batch_size=32,
            weight_decay=0.0,
            eval_batch_size=128,
        ),
        "default": TrainConfig(
            fp_epochs=12,
            fp_optimizer="adam",
            fp_lr=1e-3,
            bin_epochs=3,
            batch_size=32,
            weight_decay=0.0,
            eval_batch_size=128,
        ),
        "paper": TrainConfig(
            fp_epochs=200,
            fp_optimizer="adam",
            fp_lr=1e-3,
            bin_epochs=200,
            batch_size=32,
            weight_decay=0.0,
            eval_batch_size=64,
        ),
    }

    def load(self, scale: str, data_root: Path | None, seed: int) -> TaskData:
        n_train, n_test, points = SIZES[scale]
        folder = find_shapenet_part(data_root) if data_root is not None else None
        if folder is not None:
            xtr, ytr = read_shapenet_part(folder, "train", points, seed)
            xte, yte = read_shapenet_part(folder, "test", points, seed + 1)
            source, groups = f"shapenet-part ({folder})", shapenet_part_groups()
        elif scale == "paper":
            raise TaskError(
                "the paper scale trains on ShapeNet-part: give --data-root with "
                "shapenetcore_partanno_segmentation_benchmark_v0_normal (its .txt point files)"
            )
        else:  # disjoint seeds: no generated test object equals a training one
            assert n_train is not None and n_test is not None  # only the paper scale has None; it raised
            xtr, ytr = parts.generate(n_train, points, seed=seed * 2 + 1)
            xte, yte = parts.generate(n_test, points, seed=seed * 2 + 2)
            source = f"generated parts ({len(parts.CATEGORIES)} categories, {len(parts.PART_NAMES)} parts, {points} points)"
            groups = parts.part_groups()
        num_parts = groups[-1][-1] + 1
        version = data_version(xtr, ytr, xte, yte)
        meta = {"part_groups": groups}
        return TaskData(
            Split("train", torch.from_numpy(xtr), torch.from_numpy(ytr), normalise, meta=meta),
            Split("test", torch.from_numpy(xte), torch.from_numpy(yte), normalise, meta=meta),
            source,
            version,
            num_parts,
        )

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return nn.functional.cross_entropy(output, target)  # (B, parts, N) against (B, N)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: Split, batch_size: int, device: torch.device) -> float:
        groups = split.meta.get("part_groups")
        if groups is None:
            raise TaskError("the part-segmentation split carries no part groups; load it with this task")
        model.eval()
        scores = []
        for start in range(0, len(split), batch_size):
            index = torch.arange(start, min(start + batch_size, len(split)))
            x, y = split.batch(index)
            scores.append(instance_miou(model(x.to(device)).cpu().numpy(), y.numpy(), groups))
        return float(np.concatenate(scores).mean()) if scores else 0.0
