"""What a learning task is to the benchmark: its data, loss, metric, the architectures that
fit it, and a frozen training recipe per scale.

A task's `load` returns a `TaskData` whose train and test splits are disjoint and labelled
with their role; the trainer takes only a "train" split (`Split.require("train")`), so no
training step can see the test split. `version` is a hash of the data actually loaded: it
goes into every stored row, so numbers from different data never mix.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..registry import Registry

SCALES = ("quick", "default", "paper")


class TaskError(ValueError):
    """A task asked for something it cannot give (a scale it has no data for, an unknown arch)."""


@dataclass(frozen=True)
class TrainConfig:
    """BiBench's protocol as numbers: train FP, then fine-tune each binarized copy from it.

    Frozen per task and scale; its hash (with the task, arch, algorithm, seed and data
    version) names a run in the results store and its checkpoints.
    """

    fp_epochs: int
    fp_optimizer: str  # "sgd" (momentum 0.9, nesterov) or "adam"
    fp_lr: float
    bin_epochs: int
    bin_optimizer: str = "adam"
    bin_lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 5e-4  # FP training only: binarized latent weights are not decayed
    eval_batch_size: int = 512

    def as_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Split:
    """Inputs and targets of one split, kept compact (e.g. uint8 images) and made into model
    inputs a batch at a time by `prepare`."""

    role: str  # "train" or "test"
    x: Tensor
    y: Tensor
    prepare: Callable[[Tensor], Tensor] = field(default=lambda x: x, repr=False, compare=False)
    meta: dict = field(default_factory=dict, repr=False, compare=False)  # what the metric needs beyond x, y

    def __post_init__(self) -> None:
        if self.role not in ("train", "test"):
            raise ValueError(f"a split's role is train or test, got {self.role!r}")
        if len(self.x) != len(self.y):
            raise ValueError(f"{self.role} split: {len(self.x)} inputs but {len(self.y)} targets")

    def __len__(self) -> int:
        return len(self.x)

    def require(self, role: str) -> Split:
        if self.role != role:
            raise TaskError(f"this step takes the {role} split, not the {self.role} split")
        return self

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        return self.prepare(self.x[index]), self.y[index]


@dataclass(frozen=True)
class TaskData:
    train: Split
    test: Split
    source: str  # what was read, from where: "fashion-mnist (/usr/share/datasets/fashion-mnist)"
    version: str  # hash of the arrays loaded
    num_classes: int  # of this data (ModelNet40's 40, the generated shapes' 12)
    notes: tuple[str, ...] = ()  # said to the user: fallbacks, resizes
    metric: str = ""  # the metric's name when this data has its own (GLUE's CoLA: Matthews); "" = the task's

    def metric_name(self, task: Task) -> str:
        return self.metric or task.metric


def data_version(*arrays: np.ndarray | Tensor) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = a.numpy() if isinstance(a, Tensor) else np.asarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


class Task:
    """Base class: one subclass per task file, registered with `@register_task`."""

    name: str = ""
    kind: str = ""  # BiBench's kind of learning task
    metric: str = "accuracy"
    archs: tuple[str, ...] = ()  # every architecture that fits
    scale_archs: dict[str, tuple[str, ...]] = {}  # the ones a scale runs by default
    configs: dict[str, TrainConfig] = {}
    corruptible: bool = False  # its test images can be corrupted for the robustness track

    def load(self, scale: str, data_root: Path | None, seed: int) -> TaskData:
        raise NotImplementedError

    def create_model(self, arch: str, num_classes: int | None = None) -> nn.Module:
        from ..architectures import create_model

        if arch not in self.archs:
            raise TaskError(
                f"architecture {arch!r} does not fit task {self.name}; it takes: {', '.join(self.archs)}"
            )
        return create_model(arch, num_classes=num_classes or self.num_classes)

    num_classes: int = 0  # of the default data

    def config(self, scale: str) -> TrainConfig:
        if scale not in self.configs:
            raise TaskError(f"task {self.name} has no {scale!r} scale; scales: {', '.join(self.configs)}")
        return self.configs[scale]

    def default_archs(self, scale: str) -> tuple[str, ...]:
        return self.scale_archs.get(scale, self.archs)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return nn.functional.cross_entropy(output, target)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: Split, batch_size: int, device: torch.device) -> float:
        """The task's metric on `split`, in [0, 1] (accuracy by default)."""
        model.eval()
        correct = 0
        for start in range(0, len(split), batch_size):
            index = torch.arange(start, min(start + batch_size, len(split)))
            x, y = split.batch(index)
            correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
        return correct / max(1, len(split))


TASKS: Registry[Task] = Registry("task")


def register_task(cls: type[Task]) -> type[Task]:
    TASKS.register(cls.name)(cls())
    return cls


def get_task(name: str) -> Task:
    return TASKS.get(name)


def list_tasks() -> list[str]:
    return TASKS.names()
