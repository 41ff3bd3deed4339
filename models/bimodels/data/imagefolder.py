"""Reader for an ImageNet-style class-folder tree: `train/<class>/<image>` and `val/<class>/<image>`.

This is the layout ImageNet is usually kept in (with the validation images moved into their
class folders), and any image classification set can be put in it. Classes are the train
folder's subfolder names, sorted; a validation class missing from train, an empty class
folder, or an image whose header cannot be read is a `DataError` naming it, found while
listing (before any training). Pixels are decoded a batch at a time (`decode_center_crop`):
the shorter side resized to 8/7 of the input, then the centre crop, as ResNet's evaluation
does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError
from .imagefile import image_size

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp"}


def find_image_folder(root: Path) -> Path | None:
    """The folder holding train/ and val/ class trees: `root`, or `root/imagenet`."""
    root = Path(root)
    for candidate in (root / "imagenet", root):
        if (candidate / "train").is_dir() and (candidate / "val").is_dir():
            return candidate
    return None


def read_image_folder(
    folder: Path, classes: tuple[str, ...] | None = None, check_headers: bool = True
) -> tuple[tuple[Path, ...], np.ndarray, tuple[str, ...]]:
    """(image files, int64 labels, class names) of one class-folder tree."""
    folder = Path(folder)
    found = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
    if not found:
        raise DataError(folder, "holds no class folders")
    if classes is None:
        classes = found
    unknown = set(found) - set(classes)
    if unknown:
        raise DataError(folder, f"class folders not in the training set: {', '.join(sorted(unknown)[:5])}")
    files: list[Path] = []
    labels: list[int] = []
    for name in found:
        images = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in EXTENSIONS)
        if not images:
            raise DataError(folder / name, f"class folder holds no images ({', '.join(sorted(EXTENSIONS))})")
        for path in images:
            if check_headers:
                image_size(path)
        files += images
        labels += [classes.index(name)] * len(images)
    return tuple(files), np.asarray(labels, dtype=np.int64), classes


def decode_center_crop(files: list[Path] | tuple[Path, ...], size: int) -> np.ndarray:
    """(n, 3, size, size) uint8: shorter side to size * 8 / 7, then the centre size x size."""
    from PIL import Image

    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    short = round(size * 8 / 7)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = im.size
                scale = short / min(w, h)
                im = im.resize(
                    (max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR
                )
                left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
                out[i] = np.asarray(im.crop((left, top, left + size, top + size))).transpose(2, 0, 1)
        except OSError as e:
            raise DataError(path, f"cannot decode image ({e})") from None
    return out
