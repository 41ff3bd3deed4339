"""Image classification (BiBench: CIFAR-10 and ImageNet).

Data, in order of preference:
- `--data-root` holding `cifar-10-batches-py/` (the CIFAR-10 python batches): CIFAR-10;
- `--data-root` holding `train/` and `val/` class-folder trees (or `imagenet/` with them):
  ImageNet, or any set kept that way, decoded a batch at a time at 224x224 (shorter side
  to 256, centre crop) for the ImageNet architectures;
- otherwise Fashion-MNIST from Debian's `dataset-fashion-mnist` (70,000 real 28x28 images
  in IDX files under /usr/share/datasets/fashion-mnist, or $BIBENCH_FASHION_MNIST), padded
  to 32x32 and repeated to 3 channels so the CIFAR architectures take it unchanged;
- when that is absent, scikit-learn's bundled digits (1,797 8x8 images, upsampled), and the
  run says so: numbers from it are not comparable with Fashion-MNIST's (the data version
  differs, so they never mix in a table).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..data import DataError, read_cifar10, read_idx
from ..data.imagefolder import decode_center_crop, find_image_folder, read_image_folder
from .base import Split, Task, TaskData, TaskError, TrainConfig, data_version, register_task

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Samples per split a scale uses (None: all): quick is a smoke run, default converges.
SUBSETS = {"quick": (512, 256), "default": (10000, None), "paper": (None, None)}


def _fashion_dir() -> Path:
    return Path(os.environ.get("BIBENCH_FASHION_MNIST", FASHION_MNIST))


def _read_fashion(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_file, labels_file = (folder / f for f in FASHION_FILES[split])
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            images_file, f"expected N x rows x cols uint8 images, got {images.shape} {images.dtype}"
        )
    if labels.shape != (len(images),) or (labels.size and labels.max() > 9):
        raise DataError(labels_file, f"expected {len(images)} labels in 0..9, got shape {labels.shape}")
    return images[:, None], labels.astype(np.int64)  # N x 1 x H x W


def _pick(count: int, n: int | None, seed: int) -> np.ndarray:
    """Indices of the `n` samples a scale uses (all when n is None), in their file's order."""
    if n is None or n >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).permutation(count)[:n])


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_SIZE = 224


class _DecodeFolder:
    """Image indices -> ImageNet-normalised float images, decoded from files a batch at a time."""

    def __init__(self, files: tuple[Path, ...], size: int):
        self.files, self.size = files, size
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def __call__(self, index: Tensor) -> Tensor:
        x = torch.from_numpy(decode_center_crop([self.files[int(i)] for i in index], self.size))
        return (x.float() / 255.0 - self.mean) / self.std


class _Prepare:
    """uint8 N x C x H x W -> normalised float N x 3 x 32 x 32 (zero-padded, channels repeated)."""

    def __init__(self, mean: float, std: float, channels: int, size: int):
        self.mean, self.std, self.channels, self.size = mean, std, channels, size

    def __call__(self, x: Tensor) -> Tensor:
        x = (x.float() / 255.0 - self.mean) / self.std
        if x.shape[-1] != 32:
            if x.shape[-1] < 16:  # digits' 8x8: upsample first
                x = nn.functional.interpolate(x, scale_factor=3, mode="nearest")
            pad = (32 - x.shape[-1]) // 2
            x = nn.functional.pad(x, (pad, 32 - x.shape[-1] - pad, pad, 32 - x.shape[-2] - pad))
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@register_task
class ImageClassification(Task):
    name = "image_classification"
    kind = "image classification"
    corruptible = True  # in-memory uint8 images (not the lazily decoded class folders)
    num_classes = 10
    archs = ("resnet20", "resnet18_cifar", "vgg_small", "resnet18", "resnet34", "birealnet18", "reactnet")
    scale_archs = {"quick": ("resnet20",), "default": ("resnet20",)}  # vgg_small: ~5 h more on 2 cores
    configs = {
        "quick": TrainConfig(fp_epochs=2, fp_optimizer="sgd", fp_lr=0.1, bin_epochs=1, batch_size=128),
        "default": TrainConfig(fp_epochs=8, fp_optimizer="sgd", fp_lr=0.1, bin_epochs=4, batch_size=128),
        "paper": TrainConfig(fp_epochs=200, fp_optimizer="sgd", fp_lr=0.1, bin_epochs=200, batch_size=256),
    }

    def load(self, scale: str, data_root: Path | None, seed: int) -> TaskData:
        n_train, n_test = SUBSETS[scale]
        notes: list[str] = []
        cifar = _find_cifar(data_root) if data_root is not None else None
        folder = find_image_folder(data_root) if data_root is not None and cifar is None else None
        if folder is not None:
            return self._image_folder(folder, n_train, n_test, seed)
        if cifar is not None:
            (xtr, ytr), (xte, yte) = read_cifar10(cifar, "train"), read_cifar10(cifar, "test")
            source = f"cifar-10 ({cifar})"
        elif scale == "paper":
            raise TaskError(
                "the paper scale trains on CIFAR-10 or ImageNet: give --data-root with "
                "cifar-10-batches-py in it, or train/ and val/ class-folder trees"
            )
        elif (_fashion_dir() / FASHION_FILES["train"][0]).exists():
            folder = _fashion_dir()
            (xtr, ytr), (xte, yte) = _read_fashion(folder, "train"), _read_fashion(folder, "test")
            source = f"fashion-mnist ({folder})"
        else:
            (xtr, ytr), (xte, yte) = _digits()
            source = "scikit-learn digits"
            notes.append(
                f"Fashion-MNIST not found at {_fashion_dir()} (apt-get install dataset-fashion-mnist): "
                "using scikit-learn's 1,797 digits instead; not comparable with Fashion-MNIST results"
            )
        xte_all = xte
        train_pick, test_pick = _pick(len(xtr), n_train, seed), _pick(len(xte), n_test, seed + 1)
        xtr, ytr, xte, yte = xtr[train_pick], ytr[train_pick], xte[test_pick], yte[test_pick]
        scaled = xtr.astype(np.float64) / 255.0
        prepare = _Prepare(float(scaled.mean()), float(scaled.std()) or 1.0, xtr.shape[1], xtr.shape[-1])
        version = data_version(xtr, ytr, xte, yte)
        return TaskData(
            Split("train", torch.from_numpy(xtr), torch.from_numpy(ytr), prepare),
            Split(
                "test",
                torch.from_numpy(xte),
                torch.from_numpy(yte),
                prepare,
                meta={"source_index": test_pick, "source_count": len(xte_all)},
            ),  # for CIFAR-10-C
            source,
            version,
            self.num_classes,
            tuple(notes),
        )

    def _image_folder(self, folder: Path, n_train: int | None, n_test: int | None, seed: int) -> TaskData:
        train_files, ytr, classes = read_image_folder(folder / "train")
        test_files, yte, _ = read_image_folder(folder / "val", classes)
        rtr = _pick(len(train_files), n_train, seed)
        rte = _pick(len(test_files), n_test, seed + 1)
        train_files, ytr = tuple(train_files[i] for i in rtr), ytr[rtr]
        test_files, yte = tuple(test_files[i] for i in rte), yte[rte]
        names = "\n".join(str(p) for p in train_files + test_files)
        version = data_version(np.frombuffer(names.encode(), dtype=np.uint8), ytr, yte)
        return TaskData(
            Split(
                "train",
                torch.arange(len(train_files)),
                torch.from_numpy(ytr),
                _DecodeFolder(train_files, IMAGENET_SIZE),
            ),
            Split(
                "test",
                torch.arange(len(test_files)),
                torch.from_numpy(yte),
                _DecodeFolder(test_files, IMAGENET_SIZE),
            ),
            f"image folders ({folder}, {len(classes)} classes)",
            version,
            len(classes),
        )


def _find_cifar(root: Path) -> Path | None:
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "--data-root is not a folder")
    for candidate in (root / "cifar-10-batches-py", root):
        if (candidate / "data_batch_1").exists() or (candidate / "test_batch").exists():
            return candidate
    return None


def _digits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's digits (bundled with the package, 8x8 in 0..16), split 80/20 by a fixed rule."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise TaskError(
            "no image data here: install Debian's dataset-fashion-mnist (or scikit-learn for its "
            "bundled digits), or give --data-root with CIFAR-10"
        ) from None
    digits = load_digits()
    x = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)[:, None]
    y = digits.target.astype(np.int64)
    test = np.arange(len(x)) % 5 == 0
    return (x[~test], y[~test]), (x[test], y[test])
