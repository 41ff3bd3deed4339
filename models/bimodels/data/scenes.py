"""Generated detection scenes: shapes with boxes, for the detection task on a fresh machine.

Each image holds 1 to 4 objects of 6 classes drawn in random colours and sizes onto a
cluttered background (a colour gradient, random lines and Gaussian noise). Objects may
overlap (up to an IoU of 0.3 with those drawn before them, so a later one partly hides an
earlier one), and some are small (8 px on a 64 px image), so a full-precision detector does
not reach a perfect mAP. Two pairs are close on purpose (square and diamond are the same
shape turned 45 degrees; ring and circle differ only in a hole). Everything follows from
the seed.

Targets are padded per image to `MAX_OBJECTS` rows of (class, x0, y0, x1, y1) in pixels,
with class -1 on padding rows, so a split is one tensor.
"""

from __future__ import annotations

import numpy as np

CLASSES = ("circle", "ring", "square", "diamond", "triangle", "cross")
MAX_OBJECTS = 4
MAX_OVERLAP = 0.3


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (n, 4) with every box in `b` (m, 4), corners x0 y0 x1 y1."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _mask(name: str, size: int) -> np.ndarray:
    """A boolean size x size mask of the shape filling its box."""
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = (xx - c) / (size / 2.0), (yy - c) / (size / 2.0)
    r = np.hypot(dx, dy)
    if name == "circle":
        return r <= 1.0
    if name == "ring":
        return (r <= 1.0) & (r >= 0.55)
    if name == "square":
        return np.ones((size, size), dtype=bool)
    if name == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.0
    if name == "triangle":  # apex at the top, base at the bottom row
        return np.abs(dx) <= (dy + 1.0) / 2.0
    if name == "cross":
        return (np.abs(dx) <= 0.3) | (np.abs(dy) <= 0.3)
    raise ValueError(f"unknown shape {name!r}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    w = xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)
    w = (w - w.min()) / max(np.ptp(w), 1e-9)
    img = c0[:, None, None] * (1 - w) + c1[:, None, None] * w
    for _ in range(rng.integers(2, 6)):  # clutter: thin lines in random colours
        colour = rng.uniform(0, 255, 3)
        if rng.random() < 0.5:
            row = rng.integers(0, size)
            img[:, row, :] = colour[:, None]
        else:
            col = rng.integers(0, size)
            img[:, :, col] = colour[:, None]
    return img


def generate(n: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` scenes: (n, 3, size, size) uint8 images and (n, MAX_OBJECTS, 5) float32 targets."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    targets = np.full((n, MAX_OBJECTS, 5), -1.0, dtype=np.float32)
    lo, hi = max(6, size // 8), size * 9 // 16
    for i in range(n):
        img = _background(rng, size)
        boxes: list[np.ndarray] = []
        for _ in range(rng.integers(1, MAX_OBJECTS + 1)):
            for _attempt in range(20):
                side = int(rng.integers(lo, hi + 1))
                x0, y0 = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
                box = np.array([x0, y0, x0 + side, y0 + side], dtype=np.float32)
                if not boxes or box_iou(box[None], np.stack(boxes)).max() <= MAX_OVERLAP:
                    break
            else:
                continue
            cls = int(rng.integers(len(CLASSES)))
            mask = _mask(CLASSES[cls], side)
            region = img[:, y0 : y0 + side, x0 : x0 + side]
            behind = region[:, mask].mean(axis=1)
            for _attempt in range(10):  # visible: a colour at least 80 away from what it covers
                colour = rng.uniform(0, 255, 3)
                if np.linalg.norm(colour - behind) >= 80:
                    break
            region[:, mask] = colour[:, None]
            targets[i, len(boxes)] = (cls, *box)
            boxes.append(box)
        img += rng.normal(0, 12, img.shape)
        images[i] = np.clip(img, 0, 255).round().astype(np.uint8)
    return images, targets
