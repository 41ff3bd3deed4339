"""Corrupted copies of an image test split, for the corruption-robustness track.

The 15 corruptions of CIFAR-10-C / ImageNet-C at severities 1 to 5 come from a well-kept
implementation, `imagecorruptions-imaug` (the maintained fork of `imagecorruptions`), never
from code of ours. Two adaptations, both said in the track's notes:
- the implementation takes images of at least 32x32 pixels: smaller ones (Fashion-MNIST's
  28x28) are zero-padded to 32x32 around the centre (their background is already 0),
  corrupted, and cropped back;
- it works on RGB: a grayscale image goes in as three equal channels and comes back as
  its luma (ITU-R BT.601), since frost and snow tint the channels differently.
Its parameters are ImageNet-C's, tuned for 224-pixel images, so on 32-pixel images the blurs,
fog and frost are harsher than CIFAR-10-C's; every model sees the same corrupted pixels, so
the FP-to-binarized comparison the track makes is unaffected. A real CIFAR-10-C (one
`<corruption>.npy` of 50,000 32x32x3 images, severities 1..5 stacked, and `labels.npy`) is
used as is when `--data-root` has it.

Randomness is seeded per (seed, corruption, severity, image), so a set is the same on every
machine and run. Generated sets are cached as `.npy` files with a SHA-256 beside each; a
file whose hash disagrees is regenerated, never used.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import DataError

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",  # noise
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",  # blur
    "snow",
    "frost",
    "fog",
    "brightness",  # weather
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",  # digital
)
FAMILY = {
    **dict.fromkeys(CORRUPTIONS[:3], "noise"),
    **dict.fromkeys(CORRUPTIONS[3:7], "blur"),
    **dict.fromkeys(CORRUPTIONS[7:11], "weather"),
    **dict.fromkeys(CORRUPTIONS[11:], "digital"),
}
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
MIN_SIDE = 32  # the implementation refuses smaller images
SEEDED = ("glass_blur", "impulse_noise")  # take their own seed; the rest draw from numpy's global generator
PACKAGE = "imagecorruptions-imaug"
_LUMA = np.array([0.299, 0.587, 0.114])

NoticeFn = Callable[[str], None]


class CorruptionUnavailable(RuntimeError):
    """The corruption implementation cannot be imported here; the message says how to get it."""


def implementation() -> str:
    """The implementation and its version, e.g. "imagecorruptions-imaug 1.1.5": part of a set's identity."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{PACKAGE} {version(PACKAGE)}"
    except PackageNotFoundError:
        raise CorruptionUnavailable(
            f"{PACKAGE} is not installed: pip install -e '.[host]' (or pip install {PACKAGE})"
        ) from None


def _corrupt_fn():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from imagecorruptions import corrupt
    except ImportError as exc:  # the package, or OpenCV's shared libraries (libGL, libglib)
        raise CorruptionUnavailable(
            f"cannot import {PACKAGE}: {exc} (install the host extras; OpenCV needs "
            "Debian's libgl1 and libglib2.0-0)"
        ) from None
    return corrupt


def _image_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    return zlib.crc32(f"{seed}/{corruption}/{severity}/{index}".encode())


def corrupt_images(images: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """`images` (N x C x H x W uint8, C = 1 or 3) corrupted; same shape and dtype."""
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1..5, got {severity}")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected N x (1 or 3) x H x W uint8 images, got {images.shape} {images.dtype}")
    corrupt = _corrupt_fn()
    height, width = images.shape[-2:]
    top, left = max(0, (MIN_SIDE - height) // 2), max(0, (MIN_SIDE - width) // 2)
    side_h, side_w = max(MIN_SIDE, height), max(MIN_SIDE, width)
    out = np.empty_like(images)
    canvas = np.zeros((side_h, side_w, 3), dtype=np.uint8)
    saved = np.random.get_state()  # seeding the global generator must not leak to the caller
    try:
        _corrupt_each(corrupt, images, out, canvas, corruption, severity, seed, top, left)
    finally:
        np.random.set_state(saved)
    return out


def _corrupt_each(corrupt, images, out, canvas, corruption, severity, seed, top, left) -> None:
    n, channels, height, width = images.shape
    for i in range(n):
        canvas[top : top + height, left : left + width] = images[i].transpose(1, 2, 0)  # 1 channel broadcasts
        image_seed = _image_seed(seed, corruption, severity, i)
        np.random.seed(image_seed)
        extra = {"seed": image_seed} if corruption in SEEDED else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = corrupt(canvas, severity=severity, corruption_name=corruption, **extra)
        result = result[top : top + height, left : left + width]
        if channels == 1:
            out[i, 0] = np.clip(np.rint(result.astype(np.float64) @ _LUMA), 0, 255).astype(np.uint8)
        else:
            out[i] = result.transpose(2, 0, 1)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class CorruptionCache:
    """Generated corrupted sets under `root/<set id>/`, each `.npy` checked against its `.sha256`.

    The set id names the clean images (their hash), the seed and the implementation's
    version, so a cache is never reused for other images or another implementation.
    """

    def __init__(self, root: Path, images: np.ndarray, seed: int, notice: NoticeFn = print):
        from ..tasks.base import data_version

        self.images, self.seed, self.notice = images, seed, notice
        self.implementation = implementation()
        tag = hashlib.sha256(f"{data_version(images)}/{seed}/{self.implementation}".encode()).hexdigest()[:16]
        self.folder = Path(root) / tag
        self.version = tag

    def get(self, corruption: str, severity: int) -> np.ndarray:
        path = self.folder / f"{corruption}-{severity}.npy"
        digest = path.with_suffix(".sha256")
        if path.exists() and digest.exists():
            expected = digest.read_text().strip()
            if _sha256(path) == expected:
                return np.load(path, allow_pickle=False)
            self.notice(
                f"corruption cache file {path} does not match its SHA-256 (a damaged or edited file): "
                "regenerating it"
            )
        array = corrupt_images(self.images, corruption, severity, self.seed)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
        digest.write_text(_sha256(path) + "\n")
        return array


def find_cifar10c(root: Path | None) -> Path | None:
    """`<root>/CIFAR-10-C` (or `root` itself) when it holds `labels.npy`; None otherwise."""
    if root is None:
        return None
    for candidate in (Path(root) / "CIFAR-10-C", Path(root)):
        if (candidate / "labels.npy").exists():
            return candidate
    return None


class Cifar10C:
    """A CIFAR-10-C folder, checked when opened (before any training): `labels.npy` and every
    corruption's `.npy`, with 5 severities of the test set stacked (50,000 rows for CIFAR-10's
    10,000 test images), images 32x32x3 uint8. `select` then checks that its labels are the
    test set's at the images chosen."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.labels = self._load(self.folder / "labels.npy", None)
        if self.labels.ndim != 1 or len(self.labels) == 0 or len(self.labels) % len(SEVERITIES):
            raise DataError(
                self.folder / "labels.npy",
                f"expected one label per image of {len(SEVERITIES)} stacked "
                f"severities, got shape {self.labels.shape}",
            )
        self.per_severity = len(self.labels) // len(SEVERITIES)
        self.files = {c: self.folder / f"{c}.npy" for c in CORRUPTIONS}
        for path in self.files.values():
            self._load(path, (len(self.labels), 32, 32, 3))
        self.index = np.arange(0)
        self.version = ""

    @staticmethod
    def _load(path: Path, shape: tuple[int, ...] | None) -> np.ndarray:
        if not path.exists():
            raise DataError(path, "missing from the CIFAR-10-C folder")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(path, f"not a readable .npy file: {exc}") from None
        if shape is None:
            if array.dtype.kind not in "iu":
                raise DataError(path, f"labels must be integers, got {array.dtype}")
        elif array.shape != shape or array.dtype != np.uint8:
            raise DataError(
                path, f"expected {shape} uint8 (N x 32 x 32 x 3 per image), got {array.shape} {array.dtype}"
            )
        return array

    def select(self, test_index: np.ndarray, test_labels: np.ndarray, test_count: int) -> Cifar10C:
        """Score these rows of the test set; their labels must be the test set's at every severity."""
        if test_count != self.per_severity:
            raise DataError(
                self.folder / "labels.npy",
                f"{self.per_severity} images per severity, but the test set "
                f"has {test_count}: not the CIFAR-10-C of this test set",
            )
        self.index = np.asarray(test_index)
        for severity in SEVERITIES:
            rows = (severity - 1) * self.per_severity + self.index
            if not np.array_equal(np.asarray(self.labels[rows]).astype(np.int64), np.asarray(test_labels)):
                raise DataError(
                    self.folder / "labels.npy",
                    f"severity {severity}'s labels differ from the CIFAR-10 "
                    "test batch's: not the CIFAR-10-C of this test set",
                )
        # Identity without hashing 2 GB: the images chosen, the labels, and each file's size and first MiB.
        h = hashlib.sha256(b"cifar10c" + self.index.tobytes() + np.ascontiguousarray(self.labels).tobytes())
        for path in self.files.values():
            with open(path, "rb") as f:
                h.update(str(os.path.getsize(path)).encode() + f.read(1 << 20))
        self.version = h.hexdigest()[:16]
        return self

    def get(self, corruption: str, severity: int) -> np.ndarray:
        array = np.load(self.files[corruption], mmap_mode="r", allow_pickle=False)
        rows = (severity - 1) * self.per_severity + self.index
        return np.ascontiguousarray(array[rows].transpose(0, 3, 1, 2))
