"""One measurement as the host files it: the row of the results store and of `profile --json`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

STATUSES = ("ok", "unsupported", "numerics_error", "error")


@dataclass
class Measurement:
    """A finished (or refused) measurement of one model on one board with one runtime.

    `status`: ok | unsupported (the runtime cannot express the model; `reason` says which
    operator) | numerics_error (runs, but its output disagrees with torch: the latency is
    kept for diagnosis and is not a valid result) | error (the board or runtime failed).
    """

    campaign: str  # groups the rows of one `bihost profile` invocation; reused by --resume
    board: str  # inventory name of the board
    chip: str  # SoC / chip label from the inventory
    arch: str
    algorithm: str  # "fp32" for the full-precision baseline
    runtime: str
    status: str
    reason: str = ""
    latency_ms: dict[str, float] = field(default_factory=dict)  # min, median, mean, p90, p99, std, max
    runs: int = 0
    warmup: int = 0
    threads: int = 1
    pad_value: float = 0.0  # what binarized convs pad with in this artifact (-1 for daBNN; 0 otherwise)
    model_sha256: str = ""
    model_bytes: int = 0
    fp32_model_bytes: int = 0
    speedup_vs_fp32: float | None = None
    fp32_runtime: str = ""  # the runtime whose FP32 median the speedup divides ("" = no speedup)
    storage_ratio: float | None = None
    max_abs_err: float | None = None
    peak_rss_bytes: int = 0
    runtime_version: str = ""
    agent_version: str = ""
    agent: dict[str, Any] = field(default_factory=dict)  # cpu_model, machine, cores
    forced: bool = False  # filed although the agent's identity disagreed with the inventory
    # measured on an emulated CPU (qemu-user): kept for rehearsal, never in a ratio, a score,
    # a figure or a dashboard
    emulated: bool = False
    created_at: float = 0.0
    samples_ms: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    def key(self) -> tuple[str, str, str, str, str, int]:
        """What makes a row unique within a campaign: resume skips keys already stored."""
        return (self.board, self.arch, self.algorithm, self.runtime, self.campaign, self.threads)

    def as_dict(self, samples: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not samples:
            d.pop("samples_ms")
        return d


BOARD_STATES = ("good", "bad", "maintenance")


@dataclass(frozen=True)
class BoardState:
    """A board's health in the spirit of LAVA: `good` is scheduled; `bad` (it stopped answering)
    only after a passing health check; `maintenance` (set by an operator) never."""

    state: str = "good"
    reason: str = ""
    since: float = 0.0


@dataclass
class TrainingRun:
    """One trained model of the accuracy tracks, with everything that produced its number.

    `algorithm` is "fp32" for the full-precision model the binarized ones start from. A row
    is keyed by (task, arch, algorithm, scale, seed, config_hash, data_version): numbers from
    another recipe, seed or data never overwrite or mix with it.
    """

    task: str
    arch: str
    algorithm: str
    scale: str  # quick | default | paper
    seed: int
    config_hash: str  # TrainConfig.digest()
    data_version: str  # hash of the arrays loaded
    data_source: str  # "fashion-mnist (/usr/share/datasets/fashion-mnist)"
    metric_name: str  # "accuracy", "mAP@0.5", "mIoU", "matthews_corr"
    metric: float  # on the held-out test split, in [0, 1]
    epochs: int
    train_seconds: float  # training only, summed over resumes
    device: str  # "cpu", "cuda:0 (NVIDIA H200)"
    threads: int  # torch intra-op threads
    config: dict[str, Any] = field(default_factory=dict)
    host: str = ""
    created_at: float = 0.0

    def key(self) -> tuple:
        return (
            self.task,
            self.arch,
            self.algorithm,
            self.scale,
            self.seed,
            self.config_hash,
            self.data_version,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CorruptionRun:
    """One trained model's metric on one corrupted copy of its task's test images (severity 0:
    the same images, clean). The model is the training run with the same (task, arch,
    algorithm, scale, seed, config_hash, data_version); `corruption_version` names the
    corrupted set (its images, seed and implementation, or a CIFAR-10-C folder)."""

    task: str
    arch: str
    algorithm: str
    scale: str
    seed: int
    config_hash: str
    data_version: str
    corruption_source: (
        str  # "imagecorruptions-imaug 1.1.5 (28x28 zero-padded to 32x32)", "CIFAR-10-C (/data/...)"
    )
    corruption_version: str
    corruption: str  # "clean" for severity 0
    severity: int
    n_images: int
    metric: float
    device: str = ""
    host: str = ""
    created_at: float = 0.0

    def key(self) -> tuple:
        return (
            self.task,
            self.arch,
            self.algorithm,
            self.scale,
            self.seed,
            self.config_hash,
            self.data_version,
            self.corruption_version,
            self.corruption,
            self.severity,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


GRID_STATUSES = ("ok", "failed")


@dataclass
class GridRun:
    """One run of the training-consumption grid: trained from scratch under one setting
    (optimizer, learning rate, schedule), timed on `worker`'s hardware with fixed threads.

    Keyed by (task, arch, algorithm, setting, scale, seed, recipe_hash, data_version); a
    failed run keeps its error and is retried by the next invocation.
    """

    task: str
    arch: str
    algorithm: str
    setting: str  # "sgd-0.1-cosine"
    optimizer: str
    lr: float
    schedule: str  # cosine | step
    scale: str
    seed: int
    recipe_hash: str
    data_version: str
    data_source: str
    status: str  # ok | failed
    metric: float  # test accuracy (NaN when failed)
    epochs: int
    train_seconds: float
    seconds_per_epoch: float
    worker: dict[str, Any] = field(default_factory=dict)  # host, cpu_model, cores, threads, machine
    executor: str = ""  # "local process pool, 2 workers", "Ray at 10.0.0.5:6379"
    attempts: int = 1
    error: str = ""
    created_at: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in GRID_STATUSES:
            raise ValueError(f"status must be one of {GRID_STATUSES}, got {self.status!r}")

    def key(self) -> tuple:
        return (
            self.task,
            self.arch,
            self.algorithm,
            self.setting,
            self.scale,
            self.seed,
            self.recipe_hash,
            self.data_version,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
