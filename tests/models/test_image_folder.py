"""The ImageNet-style class-folder reader and the image task on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bimodels.data import DataError
from bimodels.data.imagefolder import decode_center_crop, read_image_folder
from bimodels.tasks import get_task

Image = pytest.importorskip("PIL.Image")


def _tree(root, counts=(("train", 3), ("val", 2)), classes=("n01440764", "n01443537", "n01484850")):
    for split, n in counts:
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (300 + 10 * i, 250), (80 * c, 20 * i, 200)).save(
                    root / split / name / f"{i}.JPEG"
                )
    return root


def test_class_folders_are_listed_decoded_and_fed_to_the_image_task(tmp_path):
    root = _tree(tmp_path / "imagenet")
    files, labels, classes = read_image_folder(root / "train")
    assert classes == ("n01440764", "n01443537", "n01484850") and len(files) == 9
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    crops = decode_center_crop(files[3:4], 224)
    assert (
        crops.shape == (1, 3, 224, 224)
        and abs(int(crops[0, 0, 112, 112]) - 80) <= 3
        and int(crops[0, 2].min()) >= 195
    )  # JPEG is lossy
    data = get_task("image_classification").load("quick", tmp_path, seed=0)
    assert data.source.startswith("image folders (") and data.num_classes == 3
    assert len(data.train) == 9 and len(data.test) == 6
    x, y = data.train.batch(torch.tensor([0, 8]))
    assert x.shape == (2, 3, 224, 224) and y.tolist() == [0, 2] and abs(float(x.mean())) < 3


def test_class_folder_faults_name_the_folder_or_file(tmp_path):
    root = _tree(tmp_path)
    (root / "val" / "n99999999").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "n99999999" / "a.png")
    with pytest.raises(DataError, match="class folders not in the training set: n99999999"):
        get_task("image_classification").load("quick", tmp_path, seed=0)
    (root / "val" / "n99999999" / "a.png").unlink()
    (root / "val" / "n99999999").rmdir()
    (root / "train" / "n01443537" / "1.JPEG").write_bytes(b"\xff\xd8\xff broken")
    with pytest.raises(DataError, match="n01443537/1.JPEG: not a readable image"):
        get_task("image_classification").load("quick", tmp_path, seed=0)
    for f in (root / "train" / "n01443537").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="n01443537: class folder holds no images"):
        read_image_folder(root / "train")
    assert np.all(read_image_folder(root / "val", check_headers=False)[1] >= 0)
