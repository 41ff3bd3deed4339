"""Part segmentation: generated labelled parts, the ShapeNet-part reader and instance mIoU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bimodels.architectures import create_model
from bimodels.binarize import binarize
from bimodels.data import DataError, parts
from bimodels.data.shapenet_part import NUM_PARTS, read_points_file, read_shapenet_part, shapenet_part_groups
from bimodels.tasks import get_task
from bimodels.tasks.part_segmentation import instance_miou


def test_generated_parts_are_deterministic_and_labelled_per_category():
    x, y = parts.generate(60, 256, seed=5)
    x2, y2 = parts.generate(60, 256, seed=5)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert x.shape == (60, 256, 3) and y.shape == (60, 256) and np.isfinite(x).all()
    groups = parts.part_groups()
    assert len(groups) == len(parts.CATEGORIES) and sum(map(len, groups)) == len(parts.PART_NAMES) == 16
    group_of = {p: g for g in groups for p in g}
    seen_categories = set()
    for labels in y:  # each object: one category, and every one of its parts has points
        group = group_of[int(labels[0])]
        assert set(labels.tolist()) == set(group)
        seen_categories.add(group)
    assert seen_categories == set(groups)
    # parts are where they should be: a table's top lies above its legs (before rotation, z is up;
    # rotation is about z with a slight tilt, so the order survives)
    table = [i for i, labels in enumerate(y) if labels[0] in groups[0]][0]
    assert x[table][y[table] == 0][:, 2].mean() > x[table][y[table] == 1][:, 2].mean()


def test_instance_miou_by_hand():
    groups = ((0, 1), (2, 3, 4))
    labels = np.array([[0, 0, 1, 1], [2, 2, 3, 3]])
    perfect = np.full((2, 5, 4), -5.0)
    for i, row in enumerate(labels):
        perfect[i, row, np.arange(4)] = 5.0
    assert np.allclose(instance_miou(perfect, labels, groups), [1.0, 1.0])
    # shape 0: one point of part 1 predicted as 0 -> IoU(0) = 2/3, IoU(1) = 1/2
    # shape 1: part 4 is neither present nor predicted (counts as 1); parts 2, 3 swapped on one point each
    logits = perfect.copy()
    logits[0, :, 2] = [5.0, -5, -5, -5, -5]
    logits[1, :, 1] = [-5, -5, -5, 5.0, -5]
    logits[1, :, 2] = [-5, -5, 5.0, -5, -5]
    logits[1, 0, :] = 9.0  # part 0 scores highest everywhere in shape 1, but it is not a part of its category
    got = instance_miou(logits, labels, groups)
    assert got[0] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert got[1] == pytest.approx((1 / 3 + 1 / 3 + 1.0) / 3)


def test_segmentation_network_binarizes_with_its_contract():
    model = create_model("pointnet_part_seg", num_classes=16)
    x = torch.randn(2, 3, 128)
    assert model.eval()(x).shape == (2, 16, 128)
    binary = binarize(model, "bnn", example_input=x)
    kept = {n for n, m in binary.named_modules() if type(m).__name__ in ("Conv1d",)}
    assert kept == {"mlp1.0", "classifier"}
    assert binary.eval()(x).shape == (2, 16, 128)


def _shapenet(root, rows=None):
    folder = root / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
    (folder / "train_test_split").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lists = {"train": [], "val": [], "test": []}
    for i, (synset, part_ids) in enumerate((("02691156", (0, 1, 2, 3)), ("03797390", (36, 37)))):
        for j, split in enumerate(("train", "train", "val", "test")):
            shape = f"s{i}{j}"
            n = 30 + j
            table = np.concatenate([rng.normal(size=(n, 6)), rng.choice(part_ids, (n, 1))], 1)
            (folder / synset).mkdir(exist_ok=True)
            np.savetxt(folder / synset / f"{shape}.txt", table, fmt="%.6f")
            lists[split].append(f"shape_data/{synset}/{shape}")
    for split, names in lists.items():
        (folder / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(names))
    return folder


def test_shapenet_part_txt_files_and_their_faults(tmp_path):
    folder = _shapenet(tmp_path)
    x, y = read_shapenet_part(folder, "train", 64, seed=0)
    assert x.shape == (6, 64, 3) and y.shape == (6, 64)  # train + val
    assert set(np.unique(y)) <= {0, 1, 2, 3, 36, 37}
    groups = shapenet_part_groups()
    assert len(groups) == 16 and groups[-1][-1] == NUM_PARTS - 1 == 49 and groups[11] == (36, 37)
    data = get_task("part_segmentation").load("quick", tmp_path, seed=0)
    assert data.source.startswith("shapenet-part (") and data.num_classes == 50 and len(data.test) == 2
    assert data.test.meta["part_groups"] == groups

    bad = folder / "02691156" / "s00.txt"
    bad.write_text("0 0 0 0 0 1\n")
    with pytest.raises(DataError, match="s00.txt: expected 7 columns"):
        get_task("part_segmentation").load("quick", tmp_path, seed=0)
    bad.write_text("0 0 0 0 0 1 50\n")
    with pytest.raises(DataError, match="part labels must be integers in 0..49"):
        read_points_file(bad)
    bad.write_text("0 0 0 0 0 1 0\n0 0 0 0 0 1 36\n")
    with pytest.raises(DataError, match="span more than one category"):
        read_points_file(bad)
    bad.write_text("0 0 zero 0 0 1 0\n")
    with pytest.raises(DataError, match="s00.txt: not a table of numbers"):
        read_points_file(bad)
    bad.write_text("")
    with pytest.raises(DataError, match="holds no points"):
        read_points_file(bad)
    bad.unlink()
    with pytest.raises(DataError, match="s00.txt: point file is missing"):
        read_shapenet_part(folder, "train", 64, seed=0)
    (folder / "train_test_split" / "shuffled_test_file_list.json").write_text('{"a": 1}')
    with pytest.raises(DataError, match="shuffled_test_file_list.json: expected a JSON list"):
        read_shapenet_part(folder, "test", 64, seed=0)
