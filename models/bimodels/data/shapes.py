"""Generated point clouds of 12 shape classes, for the point-cloud task on a fresh machine.

Each cloud is points sampled on a shape's surface, then randomly scaled (anisotropically),
rotated about the up axis and slightly tilted, jittered with Gaussian noise, and a share
of its points replaced by outliers. Pairs of classes are close on purpose (cube and box,
sphere and ellipsoid, cone and pyramid, cylinder and capsule, torus and ring), so a model
must see shape, not size. Everything follows from the seed.
"""

from __future__ import annotations

import math

import numpy as np

CLASSES = (
    "sphere",
    "ellipsoid",
    "cube",
    "box",
    "cylinder",
    "capsule",
    "cone",
    "pyramid",
    "torus",
    "ring",
    "plane",
    "cross",
)


def _unit(rng, n):
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _box(rng, n, size):
    """Uniform on the surface of an axis-aligned box of half-sizes `size`."""
    faces = rng.integers(0, 6, n)
    p = rng.uniform(-1, 1, (n, 3))
    axis, sign = faces // 2, np.where(faces % 2 == 0, 1.0, -1.0)
    p[np.arange(n), axis] = sign
    return p * np.asarray(size)


def _shape(name: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if name == "sphere":
        return _unit(rng, n)
    if name == "ellipsoid":
        return _unit(rng, n) * np.array([1.0, 0.6, 0.35])
    if name == "cube":
        return _box(rng, n, (0.8, 0.8, 0.8))
    if name == "box":
        return _box(rng, n, (1.0, 0.55, 0.3))
    theta = rng.uniform(0, 2 * math.pi, n)
    if name == "cylinder":
        z = rng.uniform(-1, 1, n)
        return np.stack([0.5 * np.cos(theta), 0.5 * np.sin(theta), z], 1)
    if name == "capsule":
        p = _unit(rng, n) * 0.5
        p[:, 2] += np.where(p[:, 2] > 0, 0.5, -0.5)
        return p
    if name == "cone":
        h = np.sqrt(rng.uniform(0, 1, n))  # uniform by area
        return np.stack([0.7 * h * np.cos(theta), 0.7 * h * np.sin(theta), 1 - 2 * h], 1)
    if name == "pyramid":
        h = np.sqrt(rng.uniform(0, 1, n))
        p = _box(rng, n, (1.0, 1.0, 1.0))[:, :2] * 0.7
        return np.stack([h * p[:, 0], h * p[:, 1], 1 - 2 * h], 1)
    if name in ("torus", "ring"):
        minor = 0.3 if name == "torus" else 0.08
        phi = rng.uniform(0, 2 * math.pi, n)
        r = 0.7 + minor * np.cos(phi)
        return np.stack(
            [r * np.cos(theta), r * np.sin(theta), minor * np.sin(phi) * (1 if name == "torus" else 3)], 1
        )
    if name == "plane":
        return np.concatenate([rng.uniform(-1, 1, (n, 2)), rng.normal(0, 0.02, (n, 1))], 1)
    if name == "cross":
        p = rng.uniform(-1, 1, (n, 3)) * np.array([1.0, 0.15, 0.15])
        swap = rng.random(n) < 0.5
        p[swap] = p[swap][:, [1, 0, 2]]
        return p
    raise ValueError(name)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    a, tilt_x, tilt_y = rng.uniform(0, 2 * math.pi), rng.normal(0, 0.15), rng.normal(0, 0.15)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array(
        [[1, 0, 0], [0, math.cos(tilt_x), -math.sin(tilt_x)], [0, math.sin(tilt_x), math.cos(tilt_x)]]
    )
    ry = np.array(
        [[math.cos(tilt_y), 0, math.sin(tilt_y)], [0, 1, 0], [-math.sin(tilt_y), 0, math.cos(tilt_y)]]
    )
    return rz @ rx @ ry


def generate(
    count: int, points: int, seed: int, noise: float = 0.03, outliers: float = 0.03
) -> tuple[np.ndarray, np.ndarray]:
    """(clouds count x points x 3 float32, labels count int64), classes balanced, order shuffled."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % len(CLASSES))
    clouds = np.empty((count, points, 3), np.float32)
    for i, label in enumerate(labels):
        p = _shape(CLASSES[label], rng, points)
        p = p * rng.uniform(0.6, 1.4) * rng.uniform(0.8, 1.25, 3)  # size, then stretch per axis
        p = p @ _rotation(rng).T + rng.normal(0, noise, p.shape)
        k = int(rng.binomial(points, outliers))
        p[rng.choice(points, k, replace=False)] = rng.uniform(-1.5, 1.5, (k, 3))
        clouds[i] = p
    return clouds, labels.astype(np.int64)
