"""The 15 corruptions (from imagecorruptions-imaug, not ours), their cache and the CIFAR-10-C reader."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("imagecorruptions")

from bimodels.data import DataError  # noqa: E402
from bimodels.data.corruptions import (  # noqa: E402
    CORRUPTIONS,
    FAMILY,
    SEVERITIES,
    Cifar10C,
    CorruptionCache,
    corrupt_images,
    find_cifar10c,
    implementation,
)


def _images(n=3, channels=1, side=28, seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((n, channels, side, side), np.uint8)
    x[:, :, 6:-6, 6:-6] = rng.integers(60, 256, (n, channels, side - 12, side - 12))  # an object on black
    return x


def test_the_fifteen_cifar10c_corruptions_in_four_families():
    assert len(CORRUPTIONS) == 15 and SEVERITIES == (1, 2, 3, 4, 5)
    assert sorted({FAMILY[c] for c in CORRUPTIONS}) == ["blur", "digital", "noise", "weather"]
    assert implementation().startswith("imagecorruptions-imaug ")


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_each_corruption_keeps_shape_changes_pixels_and_is_seeded(corruption):
    clean = _images()
    out = corrupt_images(clean, corruption, 3, seed=7)
    assert out.shape == clean.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - clean).mean() > 1.0  # it did something
    assert np.array_equal(out, corrupt_images(clean, corruption, 3, seed=7))  # same seed, same pixels
    rgb = _images(2, channels=3, side=32)
    assert corrupt_images(rgb, corruption, 1, seed=0).shape == rgb.shape


def test_severity_grows_the_damage():
    clean = _images(8)
    damage = [
        np.abs(corrupt_images(clean, "gaussian_noise", s, 0).astype(int) - clean).mean() for s in SEVERITIES
    ]
    assert damage == sorted(damage) and damage[-1] > 2 * damage[0]
    with pytest.raises(ValueError, match="unknown corruption 'rain'"):
        corrupt_images(clean, "rain", 1, 0)
    with pytest.raises(ValueError, match="severity must be 1..5"):
        corrupt_images(clean, "fog", 6, 0)


def test_a_damaged_cache_file_is_regenerated_never_used(tmp_path):
    clean, said = _images(4), []
    cache = CorruptionCache(tmp_path, clean, seed=0, notice=said.append)
    first = cache.get("shot_noise", 2)
    path = cache.folder / "shot_noise-2.npy"
    assert path.exists() and (cache.folder / "shot_noise-2.sha256").exists()
    assert np.array_equal(CorruptionCache(tmp_path, clean, seed=0).get("shot_noise", 2), first) and not said
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # one flipped pixel: still a valid .npy, but not what was generated
    path.write_bytes(bytes(raw))
    again = CorruptionCache(tmp_path, clean, seed=0, notice=said.append).get("shot_noise", 2)
    assert np.array_equal(again, first) and "does not match its SHA-256" in said[0]
    other = CorruptionCache(tmp_path, clean, seed=1)  # another seed is another set, in another folder
    assert other.folder != cache.folder and not np.array_equal(other.get("shot_noise", 2), first)


def write_cifar10c(folder, test_images, test_labels, same_as_clean=("brightness",)):
    """A CIFAR-10-C folder in the real layout: N x 32 x 32 x 3 uint8 per corruption, 5 severities
    stacked, and labels.npy. The corruptions in `same_as_clean` hold the clean images unchanged."""
    folder.mkdir(parents=True)
    n = len(test_images)
    np.save(folder / "labels.npy", np.tile(np.asarray(test_labels, np.int64), 5))
    rng = np.random.default_rng(3)
    for c in CORRUPTIONS:
        if c in same_as_clean:
            data = np.tile(test_images.transpose(0, 2, 3, 1), (5, 1, 1, 1))
        else:
            data = rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8)
        np.save(folder / f"{c}.npy", data)
    return folder


def test_cifar10c_folder_read_as_is_and_checked(tmp_path):
    images, labels = _images(6, channels=3, side=32), np.arange(6) % 10
    folder = write_cifar10c(tmp_path / "CIFAR-10-C", images, labels)
    assert find_cifar10c(tmp_path) == folder and find_cifar10c(tmp_path / "nothing") is None
    sets = Cifar10C(folder).select(np.array([1, 4]), labels[[1, 4]], test_count=6)
    assert np.array_equal(sets.get("brightness", 5), images[[1, 4]])
    assert sets.get("fog", 2).shape == (2, 3, 32, 32) and len(sets.version) == 16
    with pytest.raises(DataError, match="labels differ from the CIFAR-10 test batch"):
        Cifar10C(folder).select(np.array([1, 4]), labels[[4, 1]], test_count=6)
    with pytest.raises(DataError, match="6 images per severity, but the test set has 10000"):
        Cifar10C(folder).select(np.array([1]), labels[[1]], test_count=10000)
    np.save(folder / "fog.npy", np.zeros((30, 32, 32), np.uint8))
    with pytest.raises(DataError, match=r"fog.npy: expected \(30, 32, 32, 3\) uint8"):
        Cifar10C(folder)
    (folder / "fog.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="fog.npy: not a readable .npy file"):
        Cifar10C(folder)
    (folder / "fog.npy").unlink()
    with pytest.raises(DataError, match="fog.npy: missing from the CIFAR-10-C folder"):
        Cifar10C(folder)
