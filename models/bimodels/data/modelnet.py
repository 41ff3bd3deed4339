"""ModelNet40 from `--data-root`: the mesh release (`ModelNet40/<class>/{train,test}/*.off`),
sampled to point clouds, or the common HDF5 release (`modelnet40_ply_hdf5_2048/ply_data_
{train,test}*.h5`, datasets `data` N x 2048 x 3 and `label` N x 1; needs h5py).

OFF format: a line `OFF` (some files glue the counts to it: `OFF490 518 0`), then
`vertices faces edges`, the vertex coordinates, then each face as `k i1 ... ik`. Points are
sampled uniformly by area on the triangulated faces, with a seeded generator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError


def read_off(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(vertices V x 3 float64, triangles T x 3 int64) of an OFF mesh; polygons are fanned."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii", errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read as an ASCII OFF mesh: {exc}") from None
    lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines or not lines[0].startswith("OFF"):
        raise DataError(path, "not an OFF mesh (first line must be OFF)")
    head = lines[0][3:].split() or lines[1].split()
    body = lines[1:] if lines[0][3:].split() else lines[2:]
    try:
        nv, nf = int(head[0]), int(head[1])
        vertices = np.array([[float(v) for v in ln.split()[:3]] for ln in body[:nv]], dtype=np.float64)
        triangles = []
        for ln in body[nv : nv + nf]:
            idx = [int(v) for v in ln.split()]
            k, poly = idx[0], idx[1 : 1 + idx[0]]
            if k < 3 or len(poly) != k:
                raise ValueError(f"face {ln!r}")
            triangles += [(poly[0], poly[i], poly[i + 1]) for i in range(1, k - 1)]
    except (ValueError, IndexError) as exc:
        raise DataError(path, f"malformed OFF counts, vertex or face: {exc}") from None
    if vertices.shape != (nv, 3) or len(triangles) == 0:
        raise DataError(
            path, f"OFF declares {nv} vertices and {nf} faces; found {len(vertices)} and no usable face"
        )
    tri = np.asarray(triangles, dtype=np.int64)
    if tri.min() < 0 or tri.max() >= nv:
        raise DataError(path, f"a face names a vertex outside 0..{nv - 1}")
    return vertices, tri


def sample_surface(
    vertices: np.ndarray, triangles: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    a, b, c = (vertices[triangles[:, i]] for i in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    if not area.sum() > 0:
        raise ValueError("the mesh has no area")
    pick = rng.choice(len(triangles), size=n, p=area / area.sum())
    u, v = rng.random((2, n, 1))
    flip = (u + v) > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    return a[pick] + u * (b[pick] - a[pick]) + v * (c[pick] - a[pick])


def read_modelnet(
    root: str | Path, split: str, points: int, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(clouds N x points x 3 float32, labels N int64, class names) from the mesh or HDF5 release."""
    root = Path(root)
    h5 = sorted(root.glob(f"**/ply_data_{split}*.h5"))
    if h5:
        return _read_h5(h5, points)
    folder = next(
        (p for p in (root / "ModelNet40", root) if p.is_dir() and any(p.glob(f"*/{split}/*.off"))), None
    )
    if folder is None:
        raise DataError(
            root,
            f"no ModelNet40 found: expected ModelNet40/<class>/{split}/*.off or ply_data_{split}*.h5 files",
        )
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    rng = np.random.default_rng(seed)
    clouds, labels = [], []
    for label, name in enumerate(classes):
        files = sorted((folder / name / split).glob("*.off"))
        if not files:
            raise DataError(folder / name / split, "empty class folder: no .off mesh")
        for f in files:
            vertices, triangles = read_off(f)
            try:
                clouds.append(sample_surface(vertices, triangles, points, rng).astype(np.float32))
            except ValueError as exc:
                raise DataError(f, str(exc)) from None
            labels.append(label)
    return np.stack(clouds), np.asarray(labels, dtype=np.int64), classes


def _read_h5(files: list[Path], points: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        import h5py
    except ImportError:
        raise DataError(
            files[0],
            "reading ModelNet40's HDF5 files needs h5py (pip install h5py); or use the .off mesh release",
        ) from None
    clouds, labels = [], []
    for f in files:
        try:
            with h5py.File(f, "r") as h:
                data, label = np.asarray(h["data"]), np.asarray(h["label"]).reshape(-1)
        except (OSError, KeyError) as exc:
            raise DataError(f, f"not a ModelNet40 HDF5 file with 'data' and 'label': {exc}") from None
        if data.ndim != 3 or data.shape[2] != 3 or len(label) != len(data) or data.shape[1] < points:
            raise DataError(
                f, f"'data' must be N x >= {points} x 3 with N labels, got {data.shape}, {label.shape}"
            )
        clouds.append(data[:, :points].astype(np.float32))
        labels.append(label.astype(np.int64))
    labels_all = np.concatenate(labels)
    return np.concatenate(clouds), labels_all, [str(i) for i in range(int(labels_all.max()) + 1)]
