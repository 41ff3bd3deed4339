"""Object detection (BiBench: PASCAL VOC and COCO), scored by mAP at IoU 0.5.

Data: a VOC folder (`VOCdevkit/VOC2007`...) or a COCO folder (`annotations/instances_*.json`)
under `--data-root`, decoded a batch at a time and resized to the detector's input;
otherwise generated scenes of 6 shape classes (`bimodels.data.scenes`). Targets are
(class, x0, y0, x1, y1) rows in image units, padded with class -1.

Loss: SSD's. Each ground-truth box claims its best-overlapping anchor, and every anchor
whose best IoU is at least 0.5 is positive; smooth-L1 on the encoded offsets of positives
plus cross-entropy on positives and the hardest negatives (3 per positive), both divided by
the number of positives. Evaluation: per-class scores, boxes above 0.01 (at most 200 per
image), non-maximum suppression at IoU 0.45, the best 100 kept; mAP@0.5 from pycocotools'
COCOeval (COCO's own implementation: 101-point interpolated precision, averaged over
classes that have ground truth).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..architectures.ssd import anchors_for_output, decode_boxes, encode_boxes
from ..data import scenes
from ..data.detection import DetectionSet, decode_images, find_coco, find_voc, read_coco, read_voc
from .base import Split, Task, TaskData, TaskError, TrainConfig, data_version, register_task

# (train images, test images, image side) per scale; real sets keep their splits.
SIZES = {"quick": (320, 64, 64), "default": (6000, 1000, 64), "paper": (None, None, 300)}
MATCH_IOU, NEGATIVES_PER_POSITIVE = 0.5, 3
SCORE_FLOOR, CANDIDATES, NMS_IOU, DETECTIONS = 0.01, 200, 0.45, 100


def _normalise(x: Tensor) -> Tensor:
    return (x.float() / 255.0 - 0.5) / 0.25


class _Decode:
    """Image indices -> normalised float images, decoded from files a batch at a time."""

    def __init__(self, files: tuple[Path, ...], size: int):
        self.files, self.size = files, size

    def __call__(self, index: Tensor) -> Tensor:
        return _normalise(torch.from_numpy(decode_images([self.files[int(i)] for i in index], self.size)))


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of corner boxes, broadcast over leading dims: (..., n, 4) x (..., m, 4) -> (..., n, m)."""
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp_min(0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp_min(0).prod(-1)
    return inter / (area_a[..., :, None] + area_b[..., None, :] - inter).clamp_min(1e-9)


def match_anchors(targets: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
    """Per anchor: its class (0 background, else class + 1) and the box it regresses to."""
    classes, boxes = targets[..., 0], targets[..., 1:]
    valid = classes >= 0
    corners = torch.cat([anchors[:, :2] - anchors[:, 2:] / 2, anchors[:, :2] + anchors[:, 2:] / 2], 1)
    iou = box_iou(boxes, corners.expand(boxes.shape[0], -1, -1))  # (B, M, A)
    iou = iou.masked_fill(~valid[..., None], -1.0)
    best_iou, best_gt = iou.max(dim=1)  # (B, A)
    best_anchor = iou.argmax(dim=2)  # (B, M)
    for m in range(targets.shape[1]):  # every real box keeps its best anchor, whatever its IoU
        rows = valid[:, m].nonzero().squeeze(1)
        best_iou[rows, best_anchor[rows, m]] = 2.0
        best_gt[rows, best_anchor[rows, m]] = m
    labels = classes.gather(1, best_gt).long() + 1
    labels[best_iou < MATCH_IOU] = 0
    matched = boxes.gather(1, best_gt[..., None].expand(-1, -1, 4))
    return labels, matched


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, best first."""
    order = np.argsort(-scores, kind="stable")
    boxes = boxes[order]
    x0, y0, x1, y1 = boxes.T
    area = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    keep = np.ones(len(order), dtype=bool)
    for i in range(len(order)):
        if not keep[i]:
            continue
        w = np.clip(np.minimum(x1[i], x1[i + 1 :]) - np.maximum(x0[i], x0[i + 1 :]), 0, None)
        h = np.clip(np.minimum(y1[i], y1[i + 1 :]) - np.maximum(y0[i], y0[i + 1 :]), 0, None)
        inter = w * h
        keep[i + 1 :] &= inter / np.maximum(area[i] + area[i + 1 :] - inter, 1e-9) <= threshold
    return order[keep]


def detect(output: Tensor) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Detector output -> per image (boxes in image units, scores, classes), after per-class NMS."""
    anchors = anchors_for_output(output.shape[1]).to(output.device)
    boxes = decode_boxes(output[..., :4], anchors).clamp(0, 1).cpu().numpy()
    probs = torch.softmax(output[..., 4:], dim=-1)[..., 1:].cpu().numpy()
    results = []
    for b in range(len(output)):
        anchor, cls = np.nonzero(probs[b] > SCORE_FLOOR)
        score = probs[b][anchor, cls]
        top = np.argsort(-score, kind="stable")[:CANDIDATES]
        anchor, cls, score = anchor[top], cls[top], score[top]
        shifted = boxes[b][anchor] + 2.0 * cls[:, None]  # boxes of different classes never overlap
        keep = nms(shifted, score, NMS_IOU)[:DETECTIONS]
        results.append((boxes[b][anchor[keep]], score[keep], cls[keep]))
    return results


def map50(
    detections: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    targets: np.ndarray,
    num_classes: int,
    image_side: int,
) -> float:
    """mAP at IoU 0.5 by pycocotools' COCOeval; boxes are scaled to `image_side` pixels so COCO's
    area ranges see pixel areas."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise TaskError("the detection metric needs pycocotools (pip install pycocotools)") from None

    def xywh(box):
        x0, y0, x1, y1 = (float(v) * image_side for v in box)
        return [x0, y0, x1 - x0, y1 - y0]

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i, rows in enumerate(targets):
        images.append({"id": i, "width": image_side, "height": image_side})
        for row in rows[rows[:, 0] >= 0]:
            box = xywh(row[1:])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": int(row[0]),
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    results = [
        {"image_id": i, "category_id": int(c), "bbox": xywh(box), "score": float(s)}
        for i, (boxes, scores, classes) in enumerate(detections)
        for box, s, c in zip(boxes, scores, classes)
    ]
    if not annotations or not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools narrates every step
        truth = COCO()
        truth.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c, "name": str(c)} for c in range(num_classes)],
        }
        truth.createIndex()
        evaluator = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return max(0.0, float(evaluator.stats[1]))  # -1 means no class had ground truth


@register_task
class ObjectDetection(Task):
    name = "object_detection"
    kind = "object detection"
    metric = "map50"
    num_classes = len(scenes.CLASSES)
    archs = ("ssd_resnet",)
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
            fp_epochs=24,
            fp_optimizer="adam",
            fp_lr=2e-3,
            bin_epochs=5,
            batch_size=64,
            weight_decay=0.0,
            eval_batch_size=256,
        ),
        "paper": TrainConfig(
            fp_epochs=120,
            fp_optimizer="sgd",
            fp_lr=1e-3,
            bin_epochs=120,
            batch_size=32,
            weight_decay=5e-4,
            eval_batch_size=64,
        ),
    }

    def load(self, scale: str, data_root: Path | None, seed: int) -> TaskData:
        n_train, n_test, side = SIZES[scale]
        voc = find_voc(data_root) if data_root is not None else None
        coco = find_coco(data_root) if data_root is not None and voc is None else None
        folder = voc if voc is not None else coco
        if folder is not None:
            reader = read_voc if voc is not None else read_coco
            train, test = reader(folder, "train"), reader(folder, "test")
            return self._files(train, test, side, f"{'voc' if voc else 'coco'} ({folder})")
        if scale == "paper":
            raise TaskError(
                "the paper scale trains on PASCAL VOC or COCO: give --data-root with VOCdevkit/VOC2007 "
                "(Annotations, JPEGImages, ImageSets/Main) or COCO's annotations/instances_*.json"
            )
        assert n_train is not None and n_test is not None  # only the paper scale has None; it raised
        xtr, ttr = scenes.generate(n_train, side, seed=seed * 2 + 1)  # disjoint seeds: no shared scene
        xte, tte = scenes.generate(n_test, side, seed=seed * 2 + 2)
        for t in (ttr, tte):
            t[..., 1:] = np.where(t[..., :1] >= 0, t[..., 1:] / side, -1.0)
        return TaskData(
            Split("train", torch.from_numpy(xtr), torch.from_numpy(ttr), _normalise),
            Split("test", torch.from_numpy(xte), torch.from_numpy(tte), _normalise),
            f"generated scenes ({len(scenes.CLASSES)} shape classes, {side}x{side})",
            data_version(xtr, ttr, xte, tte),
            len(scenes.CLASSES),
        )

    def _files(self, train: DetectionSet, test: DetectionSet, side: int, source: str) -> TaskData:
        rows = max(train.targets.shape[1], test.targets.shape[1])
        targets = [
            np.pad(s.targets, ((0, 0), (0, rows - s.targets.shape[1]), (0, 0)), constant_values=-1.0)
            for s in (train, test)
        ]
        names = [str(p) for p in train.files + test.files]
        version = data_version(np.frombuffer("\n".join(names).encode(), dtype=np.uint8), *targets)
        return TaskData(
            Split(
                "train",
                torch.arange(len(train.files)),
                torch.from_numpy(targets[0]),
                _Decode(train.files, side),
            ),
            Split(
                "test", torch.arange(len(test.files)), torch.from_numpy(targets[1]), _Decode(test.files, side)
            ),
            source,
            version,
            len(train.classes),
        )

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        anchors = anchors_for_output(output.shape[1]).to(output.device)
        labels, matched = match_anchors(target, anchors)
        positive = labels > 0
        num_positive = positive.sum(1)
        offsets = encode_boxes(matched, anchors)
        box_loss = nn.functional.smooth_l1_loss(output[..., :4][positive], offsets[positive], reduction="sum")
        ce = nn.functional.cross_entropy(output[..., 4:].transpose(1, 2), labels, reduction="none")  # (B, A)
        hardest = ce.detach().masked_fill(positive, -1.0).argsort(1, descending=True).argsort(1)
        negative = hardest < (NEGATIVES_PER_POSITIVE * num_positive).clamp(max=labels.shape[1])[:, None]
        negative &= ~positive
        class_loss = ce[positive | negative].sum()
        return (box_loss + class_loss) / num_positive.sum().clamp_min(1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: Split, batch_size: int, device: torch.device) -> float:
        model.eval()
        detections, side, num_classes = [], 0, 0
        for start in range(0, len(split), batch_size):
            x, _ = split.batch(torch.arange(start, min(start + batch_size, len(split))))
            output = model(x.to(device))
            side, num_classes = x.shape[-1], output.shape[-1] - 5
            detections += detect(output)
        return map50(detections, split.y.numpy(), num_classes, side)
