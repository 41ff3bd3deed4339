"""Reader for ShapeNet-part, the part-segmentation benchmark's common release
(`shapenetcore_partanno_segmentation_benchmark_v0_normal`).

Layout: one folder per category synset holding `<shape id>.txt` files, one point per line
as `x y z nx ny nz part` (the part a global id 0..49), and the split lists
`train_test_split/shuffled_{train,val,test}_file_list.json`, each a JSON list of
"shape_data/<synset>/<shape id>". Train is train + val, test is test, as PointNet's
evaluation does. The 16 categories own contiguous part ranges (`SHAPENET_PART_COUNTS`, in
id order: airplane 4, bag 2, cap 2, car 4, chair 4, earphone 3, guitar 3, knife 2, lamp 4,
laptop 2, motorbike 6, mug 2, pistol 3, rocket 3, skateboard 3, table 3).

Each shape is resampled to a fixed number of points (without replacement when it has
enough, with replacement otherwise), seeded, so every split is one array.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from .errors import DataError

SHAPENET_PART_COUNTS = (4, 2, 2, 4, 4, 3, 3, 2, 4, 2, 6, 2, 3, 3, 3, 3)
NUM_PARTS = sum(SHAPENET_PART_COUNTS)
SPLIT_LISTS = {
    "train": ("shuffled_train_file_list.json", "shuffled_val_file_list.json"),
    "test": ("shuffled_test_file_list.json",),
}


def shapenet_part_groups() -> tuple[tuple[int, ...], ...]:
    starts = np.cumsum((0,) + SHAPENET_PART_COUNTS)
    return tuple(tuple(range(int(a), int(b))) for a, b in zip(starts[:-1], starts[1:]))


def find_shapenet_part(root: Path) -> Path | None:
    root = Path(root)
    for candidate in (root, root / "shapenetcore_partanno_segmentation_benchmark_v0_normal"):
        if (candidate / "train_test_split" / SPLIT_LISTS["test"][0]).exists():
            return candidate
    return None


def read_points_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(points x 3 float32 coordinates, points int64 global part ids) of one shape's .txt."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # an empty file is reported below, by name
            table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except FileNotFoundError:
        raise DataError(path, "point file is missing (named in a split list)") from None
    except ValueError as e:
        raise DataError(path, f"not a table of numbers ({e})") from None
    if table.size == 0:
        raise DataError(path, "holds no points")
    if table.shape[1] != 7:
        raise DataError(path, f"expected 7 columns (x y z nx ny nz part), got {table.shape[1]}")
    labels = table[:, 6]
    if not np.all(labels == np.round(labels)) or labels.min() < 0 or labels.max() >= NUM_PARTS:
        raise DataError(path, f"part labels must be integers in 0..{NUM_PARTS - 1}")
    category = np.repeat(np.arange(len(SHAPENET_PART_COUNTS)), SHAPENET_PART_COUNTS)[labels.astype(np.int64)]
    if (category != category[0]).any():
        raise DataError(path, "part labels span more than one category's part range")
    if not np.isfinite(table[:, :3]).all():
        raise DataError(path, "coordinates hold NaN or infinity")
    return table[:, :3].astype(np.float32), labels.astype(np.int64)


def read_shapenet_part(folder: Path, split: str, points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    folder = Path(folder)
    entries: list[str] = []
    for name in SPLIT_LISTS[split]:
        list_file = folder / "train_test_split" / name
        if not list_file.exists():
            raise DataError(list_file, f"split list of the {split} shapes is missing")
        try:
            listed = json.loads(list_file.read_text())
        except json.JSONDecodeError as e:
            raise DataError(list_file, f"not valid JSON ({e})") from None
        if not isinstance(listed, list) or not all(isinstance(e, str) and e.count("/") >= 2 for e in listed):
            raise DataError(list_file, 'expected a JSON list of "shape_data/<synset>/<shape id>" strings')
        entries += listed
    if not entries:
        raise DataError(folder / "train_test_split", f"the {split} split lists no shapes")
    rng = np.random.default_rng(seed)
    clouds = np.empty((len(entries), points, 3), np.float32)
    labels = np.empty((len(entries), points), np.int64)
    for i, entry in enumerate(entries):
        _, synset, shape_id = entry.rsplit("/", 2)
        xyz, lab = read_points_file(folder / synset / f"{shape_id}.txt")
        pick = rng.choice(len(xyz), points, replace=len(xyz) < points)
        clouds[i], labels[i] = xyz[pick], lab[pick]
    return clouds, labels
