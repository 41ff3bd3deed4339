"""Object detection: generated scenes, the VOC and COCO readers, SSD matching and loss, and
mAP@0.5 through pycocotools."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bimodels.architectures import create_model
from bimodels.architectures.ssd import anchors_for_output, decode_boxes, encode_boxes, ssd_anchors
from bimodels.data import DataError, scenes
from bimodels.data.detection import VOC_CLASSES, decode_images, read_coco, read_voc
from bimodels.tasks import get_task
from bimodels.tasks.object_detection import detect, map50, match_anchors, nms

Image = pytest.importorskip("PIL.Image")


def test_generated_scenes_are_deterministic_bounded_and_varied():
    x1, t1 = scenes.generate(200, 64, seed=3)
    x2, t2 = scenes.generate(200, 64, seed=3)
    assert np.array_equal(x1, x2) and np.array_equal(t1, t2)
    assert not np.array_equal(x1, scenes.generate(200, 64, seed=4)[0])
    assert x1.shape == (200, 3, 64, 64) and x1.dtype == np.uint8 and t1.shape == (200, scenes.MAX_OBJECTS, 5)
    real = t1[..., 0] >= 0
    assert real[:, 0].all() and 1.5 < real.sum(1).mean() < 3.5  # every scene has an object; 1 to 4 of them
    boxes = t1[real][:, 1:]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    assert set(t1[real][:, 0].astype(int)) == set(range(len(scenes.CLASSES)))
    for rows in t1:  # objects overlap at most MAX_OVERLAP
        b = rows[rows[:, 0] >= 0][:, 1:]
        iou = scenes.box_iou(b, b)
        assert (iou[~np.eye(len(b), dtype=bool)] <= scenes.MAX_OVERLAP + 1e-6).all()


def test_anchors_boxes_encode_decode_and_match():
    model = create_model("ssd_resnet")
    out = model.eval()(torch.zeros(2, 3, 64, 64))
    anchors = ssd_anchors(64)
    assert out.shape == (2, len(anchors), 4 + 1 + 6) and torch.equal(
        anchors_for_output(out.shape[1]), anchors
    )
    assert anchors_for_output(ssd_anchors(300).shape[0]).shape == ssd_anchors(300).shape
    with pytest.raises(ValueError, match="match no SSD input size"):
        anchors_for_output(341)
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]])
    assert torch.allclose(decode_boxes(encode_boxes(boxes, anchors[:2]), anchors[:2]), boxes, atol=1e-6)
    a = anchors[100]  # a box exactly on one anchor is matched to it, with zero offsets
    corner = torch.cat([a[:2] - a[2:] / 2, a[:2] + a[2:] / 2])
    targets = torch.full((1, 3, 5), -1.0)
    targets[0, 0] = torch.cat([torch.tensor([4.0]), corner])
    labels, matched = match_anchors(targets, anchors)
    assert labels[0, 100] == 5 and torch.allclose(encode_boxes(matched[0, 100], a), torch.zeros(4), atol=1e-5)
    assert (labels[0] > 0).sum() >= 1 and set(labels[0].unique().tolist()) <= {0, 5}
    tiny = torch.full((1, 1, 5), -1.0)  # a box no anchor overlaps by 0.5 still claims its best anchor
    tiny[0, 0] = torch.tensor([2.0, 0.50, 0.50, 0.52, 0.52])
    assert (match_anchors(tiny, anchors)[0] == 3).sum() == 1
    empty = torch.full((1, 2, 5), -1.0)  # padding rows match nothing
    assert (match_anchors(empty, anchors)[0] == 0).all()


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5]], dtype=float)
    scores = np.array([0.6, 0.9, 0.5, 0.3])
    assert nms(boxes, scores, 0.45).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 0, 2, 3]


def _targets(*rows):
    t = np.full((len(rows), 2, 5), -1.0, dtype=np.float32)
    for i, r in enumerate(rows):
        t[i, : len(r)] = r
    return t


def test_map50_follows_cocos_interpolated_precision():
    truth = _targets([(0, 0.1, 0.1, 0.4, 0.4)], [(0, 0.5, 0.5, 0.9, 0.9)])
    perfect = [
        (np.array([[0.1, 0.1, 0.4, 0.4]]), np.array([0.9]), np.array([0])),
        (np.array([[0.5, 0.5, 0.9, 0.9]]), np.array([0.8]), np.array([0])),
    ]
    assert map50(perfect, truth, 1, 64) == pytest.approx(1.0)
    # one hit ranked first, one miss (IoU < 0.5) second: precision 1 up to recall 0.5, then nothing
    # found; COCO samples 101 recall points, 51 of them (0.00 .. 0.50) at precision 1.
    half = [perfect[0], (np.array([[0.7, 0.7, 1.0, 1.0]]), np.array([0.8]), np.array([0]))]
    assert map50(half, truth, 1, 64) == pytest.approx(51 / 101)
    # the same miss ranked above the hit: precision at recall 0.5 is 1/2
    swapped = [(perfect[0][0], np.array([0.5]), perfect[0][2]), half[1]]
    assert map50(swapped, truth, 1, 64) == pytest.approx(51 * 0.5 / 101)
    wrong_class = [(b, s, c + 1) for b, s, c in perfect]
    assert map50(wrong_class, truth, 2, 64) == pytest.approx(0.0)
    assert map50([(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))] * 2, truth, 1, 64) == 0.0


def test_detect_turns_an_output_into_scored_boxes():
    anchors = ssd_anchors(64)
    out = torch.zeros(1, len(anchors), 4 + 1 + 2)
    out[..., 4] = 10.0  # background everywhere...
    out[0, 7, 4], out[0, 7, 6] = 0.0, 10.0  # ...except anchor 7, confidently class 1
    out[0, 8, 4], out[0, 8, 6] = 0.0, 9.0  # anchor 8 overlaps 7 heavily: suppressed
    boxes, scores, classes = detect(out)[0]
    a = anchors[7]
    assert classes[0] == 1 and scores[0] > 0.99
    assert np.allclose(
        boxes[0], torch.cat([a[:2] - a[2:] / 2, a[:2] + a[2:] / 2]).clamp(0, 1).numpy(), atol=1e-6
    )
    assert not any(np.allclose(b, boxes[0]) for b in boxes[1:])


def test_ssd_learns_the_generated_scenes_a_little():
    task = get_task("object_detection")
    data = task.load("quick", None, seed=0)
    torch.manual_seed(0)
    model = task.create_model("ssd_resnet")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for step in range(50):
        x, y = data.train.batch(torch.arange(step * 8 % 256, step * 8 % 256 + 32))
        loss = task.loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def _jpeg(path, size=(40, 30), colour=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG")


def _voc_xml(name, size, objects):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, d, b in objects
    )
    return (
        f"<annotation><filename>{name}.jpg</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
        f"<depth>3</depth></size>{objs}</annotation>"
    )


def _voc(root, objects=None):
    voc = root / "VOCdevkit" / "VOC2007"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    ids = {"train": ["000001", "000002"], "test": ["000003"]}
    for split, names in ids.items():
        (voc / "ImageSets" / "Main" / ("trainval.txt" if split == "train" else "test.txt")).write_text(
            "\n".join(names) + "\n"
        )
        for n in names:
            _jpeg(voc / "JPEGImages" / f"{n}.jpg")
            objs = (objects or {}).get(n, [("dog", 0, (1, 1, 20, 15)), ("person", 1, (5, 5, 10, 10))])
            (voc / "Annotations" / f"{n}.xml").write_text(_voc_xml(n, (40, 30), objs))
    return voc


def test_voc_xml_annotations_and_their_faults(tmp_path):
    voc = _voc(tmp_path)
    train = read_voc(voc, "train")
    assert len(train.files) == 2 and train.classes == VOC_CLASSES
    assert train.targets.shape == (2, 1, 5)  # the difficult person is left out
    assert np.allclose(train.targets[0, 0], [VOC_CLASSES.index("dog"), 0 / 40, 0 / 30, 20 / 40, 15 / 30])
    images = decode_images(train.files, 64)
    assert images.shape == (2, 3, 64, 64) and abs(int(images[0, 0].mean()) - 200) < 8
    data = get_task("object_detection").load("quick", tmp_path, seed=0)
    assert data.source.startswith("voc (") and len(data.train) == 2 and len(data.test) == 1
    assert data.num_classes == 20 and data.train.batch(torch.arange(2))[0].shape == (2, 3, 64, 64)

    (voc / "Annotations" / "000002.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match="000002.xml: not valid XML"):
        read_voc(voc, "train")
    (voc / "Annotations" / "000002.xml").write_text(
        _voc_xml("000002", (40, 30), [("unicorn", 0, (1, 1, 5, 5))])
    )
    with pytest.raises(DataError, match="000002.xml: object class 'unicorn' is not one of VOC's 20"):
        read_voc(voc, "train")
    (voc / "Annotations" / "000002.xml").write_text(_voc_xml("000002", (41, 30), [("dog", 0, (1, 1, 5, 5))]))
    with pytest.raises(DataError, match="declares 41x30 but 000002.jpg is 40x30"):
        read_voc(voc, "train")
    (voc / "Annotations" / "000002.xml").write_text(_voc_xml("000002", (40, 30), [("dog", 0, (10, 1, 5, 5))]))
    with pytest.raises(DataError, match="is empty or outside"):
        read_voc(voc, "train")
    (voc / "Annotations" / "000002.xml").write_text(_voc_xml("000002", (40, 30), [("dog", 0, (1, 1, 5, 5))]))
    (voc / "JPEGImages" / "000001.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match="000001.jpg: not a readable image"):
        get_task("object_detection").load("quick", tmp_path, seed=0)  # before any training
    (voc / "JPEGImages" / "000001.jpg").unlink()
    with pytest.raises(DataError, match="000001.jpg: image file is missing"):
        read_voc(voc, "train")
    (voc / "ImageSets" / "Main" / "test.txt").unlink()
    with pytest.raises(DataError, match="no test.txt or val.txt"):
        read_voc(voc, "test")


def _coco(root):
    (root / "annotations").mkdir(parents=True)
    for split, n in (("train2017", 3), ("val2017", 2)):
        images, anns = [], []
        for i in range(n):
            _jpeg(root / split / f"{i:012d}.jpg", (50, 40))
            images.append({"id": i + 1, "file_name": f"{i:012d}.jpg", "width": 50, "height": 40})
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": 18,
                    "bbox": [5, 4, 20, 10],
                    "area": 200,
                    "iscrowd": 0,
                }
            )
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "bbox": [0, 0, 50, 40],
                    "area": 2000,
                    "iscrowd": 1,
                }
            )
        images.append({"id": 99, "file_name": "no_boxes.jpg", "width": 50, "height": 40})
        cats = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats})
        )


def test_coco_json_annotations_and_their_faults(tmp_path):
    _coco(tmp_path)
    train = read_coco(tmp_path, "train")
    assert len(train.files) == 3 and train.classes == (
        "person",
        "dog",
    )  # crowd left out, box-less image skipped
    assert np.allclose(train.targets[0, 0], [1, 5 / 50, 4 / 40, 25 / 50, 14 / 40])
    data = get_task("object_detection").load("quick", tmp_path, seed=0)
    assert data.source.startswith("coco (") and len(data.test) == 2 and data.num_classes == 2
    ann = tmp_path / "annotations" / "instances_val2017.json"
    ann.write_text("{not json")
    with pytest.raises(DataError, match="instances_val2017.json: not valid JSON"):
        get_task("object_detection").load("quick", tmp_path, seed=0)
    ann.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="not a COCO instances file"):
        read_coco(tmp_path, "test")
    _ = (tmp_path / "train2017" / "000000000001.jpg").write_bytes(b"junk")
    with pytest.raises(DataError, match="000000000001.jpg: not a readable image"):
        read_coco(tmp_path, "train")
