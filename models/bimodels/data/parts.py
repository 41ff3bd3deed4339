"""Generated objects with labelled parts, for part segmentation on a fresh machine.

Six categories built from primitives, 16 parts in all (ShapeNet-part numbers its 50 parts
the same way: one global id per part, each category owning a contiguous range):

    table: top, legs          lamp: base, pole, shade     mug: body, handle
    airplane: fuselage, wings, tail     chair: seat, back, legs     rocket: body, nose, fins

Every object gets random proportions per part, then a random size and per-axis stretch, a
rotation about the up axis with a slight tilt, and Gaussian jitter; points are spread over
the parts by their share of the surface. Parts touch (a pole stands on its base, legs meet
the top), so points near a joint are ambiguous and a full-precision model stays below a
perfect mIoU. Everything follows from the seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .shapes import _box, _rotation, _unit

CATEGORIES: dict[str, tuple[str, ...]] = {
    "table": ("top", "legs"),
    "lamp": ("base", "pole", "shade"),
    "mug": ("body", "handle"),
    "airplane": ("fuselage", "wings", "tail"),
    "chair": ("seat", "back", "legs"),
    "rocket": ("body", "nose", "fins"),
}
PART_NAMES = tuple(f"{c}/{p}" for c, parts in CATEGORIES.items() for p in parts)


def part_groups() -> tuple[tuple[int, ...], ...]:
    """The global part ids of each category, in category order."""
    groups, start = [], 0
    for parts in CATEGORIES.values():
        groups.append(tuple(range(start, start + len(parts))))
        start += len(parts)
    return tuple(groups)


def _box_at(rng, n, centre, half):
    return _box(rng, n, half) + np.asarray(centre)


def _cylinder(rng, n, radius, z0, z1, caps=False):
    theta = rng.uniform(0, 2 * math.pi, n)
    z = rng.uniform(z0, z1, n)
    r = np.full(n, radius)
    if caps:  # a share of the points on the two discs
        on_cap = rng.random(n) < radius / (radius + (z1 - z0))
        r[on_cap] = radius * np.sqrt(rng.uniform(0, 1, on_cap.sum()))
        z[on_cap] = np.where(rng.random(on_cap.sum()) < 0.5, z0, z1)
    return np.stack([r * np.cos(theta), r * np.sin(theta), z], 1)


def _cone(rng, n, radius, z0, z1):
    h = np.sqrt(rng.uniform(0, 1, n))  # uniform by area
    theta = rng.uniform(0, 2 * math.pi, n)
    return np.stack([radius * h * np.cos(theta), radius * h * np.sin(theta), z1 - (z1 - z0) * h], 1)


def _legs(rng, n, spread_x, spread_y, z0, z1, thick):
    corner = rng.integers(0, 4, n)
    sx, sy = np.where(corner % 2 == 0, spread_x, -spread_x), np.where(corner < 2, spread_y, -spread_y)
    p = _box(rng, n, (thick, thick, (z1 - z0) / 2))
    return p + np.stack([sx, sy, np.full(n, (z0 + z1) / 2)], 1)


def _parts(category: str, rng: np.random.Generator) -> list[tuple[float, Callable[[int], np.ndarray]]]:
    """(relative surface area, sampler(n) -> points) per part, in the category's part order."""
    j = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731  (one random proportion)
    if category == "table":
        w, d, h, t = j(0.8, 1.2), j(0.5, 0.9), j(0.6, 1.0), j(0.04, 0.1)
        return [
            (4 * w * d, lambda n: _box_at(rng, n, (0, 0, h), (w, d, t))),
            (4 * 4 * h * 0.08, lambda n: _legs(rng, n, w * 0.85, d * 0.85, -h, h - t, 0.05)),
        ]
    if category == "lamp":
        rb, hp, rs = j(0.3, 0.6), j(0.8, 1.4), j(0.3, 0.6)
        return [
            (math.pi * rb * rb * 2, lambda n: _cylinder(rng, n, rb, -1.0, -0.9, caps=True)),
            (2 * math.pi * 0.04 * hp, lambda n: _cylinder(rng, n, 0.04, -0.9, -0.9 + hp)),
            (math.pi * rs * 0.6, lambda n: _cone(rng, n, rs, -0.9 + hp - 0.1, -0.9 + hp + 0.4)),
        ]
    if category == "mug":
        r, h = j(0.4, 0.6), j(0.7, 1.1)

        def handle(n):
            phi, theta = rng.uniform(-math.pi / 2, math.pi / 2, n), rng.uniform(0, 2 * math.pi, n)
            big, small = h * 0.35, 0.06
            x = r + (big + small * np.cos(theta)) * np.cos(phi)
            return np.stack([x, small * np.sin(theta), (big + small * np.cos(theta)) * np.sin(phi)], 1)

        return [
            (2 * math.pi * r * 2 * h, lambda n: _cylinder(rng, n, r, -h, h, caps=True)),
            (2 * math.pi * h * 0.35 * 0.3, handle),
        ]
    if category == "airplane":
        length, span, chord = j(0.9, 1.2), j(0.8, 1.2), j(0.2, 0.35)
        return [
            (4 * length * 0.15, lambda n: _unit(rng, n) * np.array([length, 0.15, 0.15])),
            (4 * span * chord, lambda n: _box_at(rng, n, (j(-0.1, 0.15), 0, 0), (chord, span, 0.03))),
            (4 * 0.15 * 0.3, lambda n: _box_at(rng, n, (-length * 0.9, 0, 0.25), (0.12, 0.03, 0.2))),
        ]
    if category == "chair":
        w, h, b = j(0.5, 0.7), j(0.5, 0.8), j(0.6, 1.0)
        return [
            (4 * w * w, lambda n: _box_at(rng, n, (0, 0, 0), (w, w, 0.06))),
            (4 * w * b / 2, lambda n: _box_at(rng, n, (-w, 0, b / 2), (0.05, w, b / 2))),
            (4 * 4 * h * 0.06, lambda n: _legs(rng, n, w * 0.85, w * 0.85, -h, -0.06, 0.04)),
        ]
    if category == "rocket":
        r, h, nose = j(0.15, 0.25), j(1.0, 1.4), j(0.3, 0.6)

        def fins(n):
            k = rng.integers(0, 3, n)
            p = _box(rng, n, (0.18, 0.02, 0.2)) + np.array([r + 0.18, 0, -h / 2 + 0.2])
            a = k * (2 * math.pi / 3)
            c, s = np.cos(a), np.sin(a)
            return np.stack([c * p[:, 0] - s * p[:, 1], s * p[:, 0] + c * p[:, 1], p[:, 2]], 1)

        return [
            (2 * math.pi * r * h, lambda n: _cylinder(rng, n, r, -h / 2, h / 2)),
            (math.pi * r * nose, lambda n: _cone(rng, n, r, h / 2, h / 2 + nose)),
            (3 * 4 * 0.18 * 0.2, fins),
        ]
    raise ValueError(f"unknown category {category!r}")


def generate(count: int, points: int, seed: int, noise: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """(clouds count x points x 3 float32, per-point global part ids count x points int64),
    categories balanced, order shuffled."""
    rng = np.random.default_rng(seed)
    names = list(CATEGORIES)
    starts = np.cumsum([0] + [len(CATEGORIES[c]) for c in names])
    cats = rng.permutation(np.arange(count) % len(names))
    clouds = np.empty((count, points, 3), np.float32)
    labels = np.empty((count, points), np.int64)
    for i, cat in enumerate(cats):
        parts = _parts(names[cat], rng)
        area = np.array([a for a, _ in parts])
        counts = rng.multinomial(points - len(parts), area / area.sum()) + 1  # every part is seen
        p = np.concatenate([sample(int(k)) for (_, sample), k in zip(parts, counts)])
        lab = np.repeat(np.arange(len(parts)) + starts[cat], counts)
        p = p * rng.uniform(0.7, 1.3) * rng.uniform(0.85, 1.15, 3)
        p = p @ _rotation(rng).T + rng.normal(0, noise, p.shape)
        order = rng.permutation(points)
        clouds[i], labels[i] = p[order], lab[order]
    return clouds, labels
