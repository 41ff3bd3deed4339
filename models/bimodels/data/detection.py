"""Readers for PASCAL VOC (XML annotations) and COCO (instances JSON) detection sets.

Both return a `DetectionSet`: image files, padded targets and class names. Boxes are
corners in units of the image's own width and height (0..1), so images can be resized to
the detector's input without touching the targets. Every annotation is parsed and every
image's header opened here, so a missing file, a corrupt header or a size that disagrees
with the annotation is a `DataError` naming the file before any training starts; pixels
are decoded later, a batch at a time (`decode_images`), so the full sets need not fit in
memory.

VOC: `VOCdevkit/VOC2007` (or VOC2012, or the folder itself) holding `Annotations/*.xml`,
`JPEGImages/` and `ImageSets/Main/{trainval,test}.txt` (val.txt when there is no test
list). Objects marked `difficult` are left out, as VOC's own evaluation ignores them.
COCO: `annotations/instances_{train,val}2017.json` beside `{train,val}2017/`; crowd
annotations are left out and images left without a box are skipped.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .imagefile import image_size

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


@dataclass(frozen=True)
class DetectionSet:
    files: tuple[Path, ...]
    targets: np.ndarray  # (images, max objects, 5): class, x0, y0, x1, y1 in 0..1; class -1 pads
    classes: tuple[str, ...]


def _pad(per_image: Sequence[Sequence[tuple[float, ...]]]) -> np.ndarray:
    rows = max((len(b) for b in per_image), default=1) or 1
    out = np.full((len(per_image), rows, 5), -1.0, dtype=np.float32)
    for i, boxes in enumerate(per_image):
        if boxes:
            out[i, : len(boxes)] = boxes
    return out


def find_voc(root: Path) -> Path | None:
    root = Path(root)
    for candidate in (
        root,
        root / "VOCdevkit" / "VOC2007",
        root / "VOCdevkit" / "VOC2012",
        root / "VOC2007",
        root / "VOC2012",
    ):
        if (candidate / "Annotations").is_dir() and (candidate / "ImageSets" / "Main").is_dir():
            return candidate
    return None


def read_voc(folder: Path, split: str) -> DetectionSet:
    """`split` is "train" (trainval.txt, else train.txt) or "test" (test.txt, else val.txt)."""
    folder = Path(folder)
    lists = {"train": ("trainval.txt", "train.txt"), "test": ("test.txt", "val.txt")}[split]
    list_file = next(
        (folder / "ImageSets" / "Main" / n for n in lists if (folder / "ImageSets" / "Main" / n).exists()),
        None,
    )
    if list_file is None:
        raise DataError(folder / "ImageSets" / "Main", f"no {' or '.join(lists)} listing the {split} images")
    ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(list_file, "lists no images")
    files, per_image = [], []
    for image_id in ids:
        xml_file = folder / "Annotations" / f"{image_id}.xml"
        try:
            root = ET.parse(xml_file).getroot()
        except FileNotFoundError:
            raise DataError(
                xml_file, f"annotation of {image_id} (listed in {list_file.name}) is missing"
            ) from None
        except ET.ParseError as e:
            raise DataError(xml_file, f"not valid XML ({e})") from None
        image = folder / "JPEGImages" / (root.findtext("filename") or f"{image_id}.jpg")
        width, height = image_size(image)
        declared_w, declared_h = root.findtext("size/width"), root.findtext("size/height")
        if declared_w and declared_h and (int(declared_w), int(declared_h)) != (width, height):
            raise DataError(
                xml_file, f"declares {declared_w}x{declared_h} but {image.name} is {width}x{height}"
            )
        boxes = []
        for obj in root.iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in VOC_CLASSES:
                raise DataError(xml_file, f"object class {name!r} is not one of VOC's 20 classes")
            if (obj.findtext("difficult") or "0").strip() == "1":
                continue
            try:
                x0, y0, x1, y1 = (
                    float(obj.findtext(f"bndbox/{k}") or "")  # a missing field: ValueError
                    for k in ("xmin", "ymin", "xmax", "ymax")
                )
            except (TypeError, ValueError):
                raise DataError(
                    xml_file, f"a {name} object has no numeric bndbox xmin/ymin/xmax/ymax"
                ) from None
            if not (0 <= x0 < x1 <= width + 1 and 0 <= y0 < y1 <= height + 1):
                raise DataError(
                    xml_file, f"box ({x0}, {y0}, {x1}, {y1}) is empty or outside the {width}x{height} image"
                )
            # VOC's corners are 1-based pixel indices, both inclusive
            boxes.append(
                (VOC_CLASSES.index(name), (x0 - 1) / width, (y0 - 1) / height, x1 / width, y1 / height)
            )
        files.append(image)
        per_image.append(boxes)
    return DetectionSet(tuple(files), _pad(per_image), VOC_CLASSES)


def find_coco(root: Path) -> Path | None:
    root = Path(root)
    for candidate in (root, root / "coco"):
        if (candidate / "annotations" / "instances_train2017.json").exists():
            return candidate
    return None


def read_coco(folder: Path, split: str) -> DetectionSet:
    """`split` is "train" (train2017) or "test" (val2017, COCO's held-out set with labels)."""
    name = {"train": "train2017", "test": "val2017"}[split]
    ann_file = Path(folder) / "annotations" / f"instances_{name}.json"
    try:
        data = json.loads(ann_file.read_text())
        images, annotations, categories = data["images"], data["annotations"], data["categories"]
        cat_ids = sorted(int(c["id"]) for c in categories)
        names = {int(c["id"]): str(c["name"]) for c in categories}
    except FileNotFoundError:
        raise DataError(ann_file, "COCO annotation file is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(ann_file, f"not valid JSON ({e})") from None
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(
            ann_file, f"not a COCO instances file (images, annotations, categories): {e!r}"
        ) from None
    index = {c: i for i, c in enumerate(cat_ids)}
    by_image: dict[int, list[dict]] = {}
    for ann in annotations:
        by_image.setdefault(ann.get("image_id"), []).append(ann)
    files, per_image = [], []
    for img in images:
        try:
            image_id, file_name, width, height = (
                int(img["id"]),
                img["file_name"],
                int(img["width"]),
                int(img["height"]),
            )
        except (KeyError, TypeError, ValueError):
            raise DataError(ann_file, f"image entry {img!r} lacks id, file_name, width or height") from None
        boxes = []
        for ann in by_image.get(image_id, []):
            if ann.get("iscrowd", 0):
                continue
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
                cls = index[int(ann["category_id"])]
            except (KeyError, TypeError, ValueError):
                raise DataError(
                    ann_file,
                    f"annotation {ann.get('id')} of image {image_id} has no valid bbox or category_id",
                ) from None
            if w <= 0 or h <= 0:
                continue  # COCO holds a few degenerate boxes; they cannot be matched
            boxes.append((cls, x / width, y / height, (x + w) / width, (y + h) / height))
        if not boxes:
            continue
        path = Path(folder) / name / file_name
        actual = image_size(path)
        if actual != (width, height):
            raise DataError(
                ann_file, f"image {file_name} is {actual[0]}x{actual[1]}, annotated as {width}x{height}"
            )
        files.append(path)
        per_image.append(boxes)
    if not files:
        raise DataError(ann_file, "holds no image with a box")
    return DetectionSet(tuple(files), _pad(per_image), tuple(names[c] for c in cat_ids))


def decode_images(files: list[Path] | tuple[Path, ...], size: int) -> np.ndarray:
    """(n, 3, size, size) uint8: each image decoded, made RGB and resized (aspect not kept, as SSD does)."""
    from PIL import Image

    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as im:
                out[i] = np.asarray(
                    im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                ).transpose(2, 0, 1)
        except OSError as e:
            raise DataError(path, f"cannot decode image ({e})") from None
    return out
