"""Keyword spotting (BiBench: Google Speech Commands, 12 classes).

Data: the Speech Commands folder under `--data-root` (`speech_commands/` or the root itself);
otherwise keywords spoken by espeak-ng (Debian's `espeak-ng`) in 8 voices at random speeds,
pitches, time shifts and noise levels. Features: 40 log-mel bands x 98 frames, normalised
with the training split's mean and deviation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..data import speech
from .base import Split, Task, TaskData, TaskError, TrainConfig, data_version, register_task

SIZES = {"quick": (240, 120), "default": (4000, 1800), "paper": (None, None)}


class _Normalise:
    def __init__(self, mean: float, std: float):
        self.mean, self.std = mean, std

    def __call__(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


@register_task
class KeywordSpotting(Task):
    name = "keyword_spotting"
    kind = "keyword spotting"
    num_classes = len(speech.LABELS)
    archs = ("dfsmn",)
    configs = {
        "quick": TrainConfig(
            fp_epochs=3, fp_optimizer="adam", fp_lr=1e-3, bin_epochs=1, batch_size=64, weight_decay=0.0
        ),
        "default": TrainConfig(
            fp_epochs=12, fp_optimizer="adam", fp_lr=1e-3, bin_epochs=3, batch_size=64, weight_decay=0.0
        ),
        "paper": TrainConfig(
            fp_epochs=100, fp_optimizer="adam", fp_lr=1e-3, bin_epochs=100, batch_size=128, weight_decay=0.0
        ),
    }

    def load(self, scale: str, data_root: Path | None, seed: int) -> TaskData:
        n_train, n_test = SIZES[scale]
        folder = _find(data_root) if data_root is not None else None
        if folder is not None:
            (xtr, ytr), (xte, yte) = (speech.read_speech_commands(folder, s) for s in ("train", "test"))
            source = f"speech commands ({folder})"
        elif scale == "paper":
            raise TaskError(
                "the paper scale trains on Speech Commands: give --data-root with its folder "
                "(word folders of .wav files and testing_list.txt)"
            )
        elif not speech.espeak_available():
            raise TaskError(
                "keyword spotting needs espeak-ng to speak its keywords (apt-get install espeak-ng), "
                "or --data-root with Speech Commands; leave it out with --task"
            )
        else:
            assert n_train is not None and n_test is not None  # only the paper scale has None; it raised
            xtr, ytr = speech.generate(n_train, seed * 2 + 1)
            xte, yte = speech.generate(n_test, seed * 2 + 2)
            source = f"espeak-ng keywords ({len(speech.VOICES)} voices, 12 classes)"
        prepare = _Normalise(float(xtr.mean()), float(xtr.std()) or 1.0)
        version = data_version(xtr, ytr, xte, yte)
        return TaskData(
            Split("train", torch.from_numpy(xtr), torch.from_numpy(ytr), prepare),
            Split("test", torch.from_numpy(xte), torch.from_numpy(yte), prepare),
            source,
            version,
            len(speech.LABELS),
        )


def _find(root: Path) -> Path | None:
    root = Path(root)
    for candidate in (root / "speech_commands", root / "speech_commands_v0.02", root):
        if (candidate / "testing_list.txt").exists():
            return candidate
    return None
